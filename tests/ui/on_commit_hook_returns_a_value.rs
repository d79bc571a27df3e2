use diesel::prelude::*;
use diesel_on_commit::{on_commit, HookedConnection};

fn main() {
    let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:").unwrap());
    let conn = &mut conn;
    let ids = vec![1, 2];
    on_commit!(conn, ids.len());
}
