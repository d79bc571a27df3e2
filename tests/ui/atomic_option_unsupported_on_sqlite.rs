use diesel::prelude::*;
use diesel_on_commit::{atomic, HookedConnection};

type DbConn = HookedConnection<SqliteConnection>;

#[atomic(isolation = serializable)]
fn transfer(conn: &mut DbConn, amount: i32) -> QueryResult<i32> {
    let _ = conn;
    Ok(amount)
}

#[atomic(read_only)]
fn balance(conn: &mut DbConn) -> QueryResult<i32> {
    let _ = conn;
    Ok(0)
}

// `deferrable` on SQLite: `tests/ui/backends/` (its message depends on the
// backends compiled in).

fn main() {}
