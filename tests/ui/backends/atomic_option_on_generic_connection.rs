use diesel::prelude::*;
use diesel_on_commit::{atomic, HookedConnection};

#[atomic(isolation = repeatable_read)]
fn transfer<C: Connection>(conn: &mut HookedConnection<C>, amount: i32) -> QueryResult<i32> {
    let _ = conn;
    Ok(amount)
}

// `retry` alone works on any wrapped connection.
#[atomic(retry = 3)]
fn retried<C: Connection>(conn: &mut HookedConnection<C>, amount: i32) -> QueryResult<i32> {
    let _ = conn;
    Ok(amount)
}

fn main() {}
