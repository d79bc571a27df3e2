use diesel::prelude::*;
use diesel_on_commit::{atomic, HookedConnection};

type DbConn = HookedConnection<SqliteConnection>;

#[atomic(conn)]
fn create_order(conn: &mut DbConn, id: i32) -> QueryResult<i32> {
    let _ = conn;
    Ok(id)
}

#[atomic(durable = true)]
fn settle(conn: &mut DbConn) -> QueryResult<()> {
    let _ = conn;
    Ok(())
}

#[atomic(conn = "db")]
fn refund(db: &mut DbConn) -> QueryResult<()> {
    let _ = db;
    Ok(())
}

fn main() {}
