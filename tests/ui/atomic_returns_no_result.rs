use diesel::prelude::*;
use diesel_on_commit::{atomic, HookedConnection};

type DbConn = HookedConnection<SqliteConnection>;

#[atomic]
fn order_count(conn: &mut DbConn) -> i64 {
    let _ = conn;
    0
}

fn main() {}
