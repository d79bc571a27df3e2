use diesel::prelude::*;
use diesel_on_commit::{atomic, HookedConnection};

type DbConn = HookedConnection<PgConnection>;

#[atomic(immediate)]
fn reserve(conn: &mut DbConn, item: i32) -> QueryResult<i32> {
    let _ = conn;
    Ok(item)
}

fn main() {}
