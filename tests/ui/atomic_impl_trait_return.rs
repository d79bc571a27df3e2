use diesel::prelude::*;
use diesel_on_commit::{atomic, HookedConnection};

type DbConn = HookedConnection<SqliteConnection>;

#[atomic]
fn order_ids(conn: &mut DbConn) -> QueryResult<impl Iterator<Item = i32>> {
    let _ = conn;
    Ok(vec![1, 2].into_iter())
}

fn main() {}
