use diesel::prelude::*;
use diesel_on_commit::{atomic, HookedConnection};

type DbConn = HookedConnection<SqliteConnection>;

#[derive(Debug)]
enum ShopError {
    Db(diesel::result::Error),
    OutOfStock,
}

impl From<diesel::result::Error> for ShopError {
    fn from(e: diesel::result::Error) -> Self {
        ShopError::Db(e)
    }
}

#[atomic(retry = 3)]
fn reserve(conn: &mut DbConn, item: i32) -> Result<i32, ShopError> {
    let _ = conn;
    if item < 0 {
        return Err(ShopError::OutOfStock);
    }
    Ok(item)
}

fn main() {}
