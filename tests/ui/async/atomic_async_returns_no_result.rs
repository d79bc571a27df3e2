use diesel::prelude::*;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_on_commit::atomic;

type Conn = SyncConnectionWrapper<SqliteConnection>;

#[atomic]
async fn order_count(conn: &mut Conn) -> i64 {
    let _ = conn;
    0
}

fn main() {}
