use diesel::result::QueryResult;
use diesel_async::AsyncConnection;
use diesel_on_commit::atomic;

#[atomic]
async fn rename<C: AsyncConnection>(conn: &C, name: &str) -> QueryResult<()> {
    let _ = (conn, name);
    Ok(())
}

fn main() {}
