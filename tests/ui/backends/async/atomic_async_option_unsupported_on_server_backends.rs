use diesel::result::QueryResult;
use diesel_async::{AsyncMysqlConnection, AsyncPgConnection};
use diesel_on_commit::{atomic, AsyncHookedConnection};

#[atomic(immediate)]
async fn reserve(conn: &mut AsyncHookedConnection<AsyncPgConnection>) -> QueryResult<()> {
    let _ = conn;
    Ok(())
}

// `isolation` and `read_only` are fine on MySQL; `deferrable` is not.
#[atomic(isolation = serializable, read_only, deferrable)]
async fn report(conn: &mut AsyncHookedConnection<AsyncMysqlConnection>) -> QueryResult<i32> {
    let _ = conn;
    Ok(0)
}

// Every option PostgreSQL has, with a retry: fine.
#[atomic(isolation = serializable, read_only, deferrable, retry = 3)]
async fn audit(conn: &mut AsyncHookedConnection<AsyncPgConnection>) -> QueryResult<i32> {
    let _ = conn;
    Ok(0)
}

fn main() {}
