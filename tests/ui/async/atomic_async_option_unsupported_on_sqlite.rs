use diesel::result::QueryResult;
use diesel::SqliteConnection;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_on_commit::{atomic, AsyncHookedConnection};

type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;

#[atomic(isolation = serializable)]
async fn transfer(conn: &mut DbConn, amount: i32) -> QueryResult<i32> {
    let _ = conn;
    Ok(amount)
}

#[atomic(read_only)]
async fn balance(conn: &mut DbConn) -> QueryResult<i32> {
    let _ = conn;
    Ok(0)
}

// `immediate` is SQLite's: fine.
#[atomic(immediate)]
async fn reserve(conn: &mut DbConn) -> QueryResult<()> {
    let _ = conn;
    Ok(())
}

fn main() {}
