use diesel::prelude::*;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_on_commit::atomic;

type Conn = SyncConnectionWrapper<SqliteConnection>;

#[derive(Debug)]
struct ShopError;

#[atomic]
async fn create_order(conn: &mut Conn, id: i32) -> Result<i32, ShopError> {
    let _ = conn;
    Ok(id)
}

fn main() {}
