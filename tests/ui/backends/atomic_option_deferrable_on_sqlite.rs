use diesel::prelude::*;
use diesel_on_commit::{atomic, HookedConnection};

type DbConn = HookedConnection<SqliteConnection>;

// Every option here is PostgreSQL's or MySQL's: one error for each.
#[atomic(isolation = serializable, read_only, deferrable)]
fn report(conn: &mut DbConn) -> QueryResult<i32> {
    let _ = conn;
    Ok(0)
}

fn main() {}
