use diesel::prelude::*;
use diesel_on_commit::{atomic, HookedConnection};

type DbConn = HookedConnection<SqliteConnection>;

#[atomic(isolation = snapshot)]
fn a(conn: &mut DbConn) -> QueryResult<()> {
    let _ = conn;
    Ok(())
}

#[atomic(isolation = "serializable")]
fn b(conn: &mut DbConn) -> QueryResult<()> {
    let _ = conn;
    Ok(())
}

#[atomic(isolation)]
fn c(conn: &mut DbConn) -> QueryResult<()> {
    let _ = conn;
    Ok(())
}

#[atomic(read_only = true)]
fn d(conn: &mut DbConn) -> QueryResult<()> {
    let _ = conn;
    Ok(())
}

#[atomic(retry = 0)]
fn e(conn: &mut DbConn) -> QueryResult<()> {
    let _ = conn;
    Ok(())
}

#[atomic(retry)]
fn f(conn: &mut DbConn) -> QueryResult<()> {
    let _ = conn;
    Ok(())
}

#[atomic(retry = 3, retry = 5)]
fn g(conn: &mut DbConn) -> QueryResult<()> {
    let _ = conn;
    Ok(())
}

#[atomic(deferrable)]
fn h(conn: &mut DbConn) -> QueryResult<()> {
    let _ = conn;
    Ok(())
}

#[atomic(immediate, read_only)]
fn i(conn: &mut DbConn) -> QueryResult<()> {
    let _ = conn;
    Ok(())
}

fn main() {}
