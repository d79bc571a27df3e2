use diesel::prelude::*;
use diesel_on_commit::{on_commit, HookedConnection};

fn main() {
    let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:").unwrap());
    let conn = &mut conn;
    on_commit!(conn,);
}
