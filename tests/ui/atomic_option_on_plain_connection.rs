use diesel::prelude::*;
use diesel_on_commit::atomic;

#[atomic(immediate, retry = 3)]
fn transfer(conn: &mut SqliteConnection, amount: i32) -> QueryResult<i32> {
    let _ = conn;
    Ok(amount)
}

fn main() {}
