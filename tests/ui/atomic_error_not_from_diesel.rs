use diesel::prelude::*;
use diesel_on_commit::{atomic, HookedConnection};

type DbConn = HookedConnection<SqliteConnection>;

#[derive(Debug)]
struct ShopError;

#[atomic]
fn create_order(conn: &mut DbConn, id: i32) -> Result<i32, ShopError> {
    let _ = conn;
    Ok(id)
}

fn main() {}
