use diesel::prelude::*;
use diesel_on_commit::{atomic, HookedConnection};

type DbConn = HookedConnection<SqliteConnection>;

#[atomic(conn = database)]
fn create_order(db: &mut DbConn, id: i32) -> QueryResult<i32> {
    let _ = db;
    Ok(id)
}

fn main() {}
