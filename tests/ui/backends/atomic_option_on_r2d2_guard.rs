use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, PooledConnection};
use diesel_on_commit::{atomic, HookedConnection};

type DbConn = HookedConnection<PgConnection>;
type Guard = PooledConnection<ConnectionManager<DbConn>>;

#[atomic(isolation = serializable, retry = 5)]
fn transfer(conn: &mut Guard, amount: i32) -> QueryResult<i32> {
    let _ = conn;
    Ok(amount)
}

fn main() {}
