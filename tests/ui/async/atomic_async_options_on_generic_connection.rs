// Options on an `async fn` need the async wrapper with a known backend.
use diesel::result::QueryResult;
use diesel_async::AsyncConnection;
use diesel_on_commit::atomic;

#[atomic(isolation = serializable)]
async fn transfer<C: AsyncConnection>(conn: &mut C, amount: i32) -> QueryResult<i32> {
    let _ = conn;
    Ok(amount)
}

#[atomic(conn = db, read_only)]
async fn balance<C: AsyncConnection>(db: &mut C) -> QueryResult<i32> {
    let _ = db;
    Ok(0)
}

#[atomic(isolation = serializable, read_only, deferrable)]
async fn report<C: AsyncConnection>(conn: &mut C) -> QueryResult<i32> {
    let _ = conn;
    Ok(0)
}

#[atomic(immediate)]
async fn reserve<C: AsyncConnection>(conn: &mut C) -> QueryResult<()> {
    let _ = conn;
    Ok(())
}

fn main() {}
