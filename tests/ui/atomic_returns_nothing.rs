use diesel::prelude::*;
use diesel_on_commit::{atomic, HookedConnection};

type DbConn = HookedConnection<SqliteConnection>;

#[atomic]
fn touch(conn: &mut DbConn) {
    let _ = conn;
}

fn main() {}
