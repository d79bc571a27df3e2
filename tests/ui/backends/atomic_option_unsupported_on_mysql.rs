use diesel::prelude::*;
use diesel_on_commit::{atomic, HookedConnection};

type DbConn = HookedConnection<MysqlConnection>;

// `isolation` and `read_only` are fine on MySQL; `deferrable` is not.
#[atomic(isolation = serializable, read_only, deferrable)]
fn report(conn: &mut DbConn) -> QueryResult<i32> {
    let _ = conn;
    Ok(0)
}

#[atomic(immediate)]
fn reserve(conn: &mut DbConn, item: i32) -> QueryResult<i32> {
    let _ = conn;
    Ok(item)
}

fn main() {}
