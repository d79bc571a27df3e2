use diesel::prelude::*;
use diesel_on_commit::atomic;

#[atomic]
fn create_order(conn: SqliteConnection, id: i32) -> QueryResult<i32> {
    let _ = conn;
    Ok(id)
}

fn main() {}
