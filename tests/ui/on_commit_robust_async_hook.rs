use diesel::prelude::*;
use diesel_on_commit::{on_commit, HookedConnection};

async fn publish(_id: i32) {}

fn create_order(conn: &mut HookedConnection<SqliteConnection>, id: i32) {
    on_commit!(conn, robust, publish(id).await);
}

fn main() {}
