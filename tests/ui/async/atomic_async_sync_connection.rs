use diesel::prelude::*;
use diesel_on_commit::{atomic, HookedConnection};

type DbConn = HookedConnection<SqliteConnection>;

#[atomic]
async fn create_order(conn: &mut DbConn, id: i32) -> QueryResult<i32> {
    let _ = conn;
    Ok(id)
}

fn main() {}
