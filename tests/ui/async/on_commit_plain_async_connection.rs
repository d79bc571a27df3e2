use diesel::SqliteConnection;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_on_commit::on_commit;

async fn publish(_id: i32) {}

fn create_order(conn: &mut SyncConnectionWrapper<SqliteConnection>, id: i32) {
    on_commit!(conn, publish(id).await);
}

fn main() {}
