use diesel::prelude::*;
use diesel_on_commit::{atomic, HookedConnection};

type DbConn = HookedConnection<SqliteConnection>;

#[atomic]
fn copy_orders(source: &mut DbConn, target: &mut DbConn) -> QueryResult<()> {
    let _ = (source, target);
    Ok(())
}

fn main() {}
