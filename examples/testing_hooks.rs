//! How to test code that registers hooks: `cargo run --example testing_hooks`.
//!
//! `capture_on_commit` (Django's `captureOnCommitCallbacks`) shows which
//! hooks a committed transaction would run, without running them; a test
//! transaction is the baseline, so the code under test commits "for real"
//! inside it and everything is rolled back at the end.

use diesel::prelude::*;
use diesel::result::Error;
use diesel_on_commit::prelude::*;

type DbConn = HookedConnection<SqliteConnection>;

/// The code under test: it registers an email for after COMMIT.
fn place_order(conn: &mut DbConn, id: i32) -> Result<(), Error> {
    conn.transaction(|conn| {
        diesel::sql_query(format!("INSERT INTO orders (id) VALUES ({id})")).execute(conn)?;
        conn.on_commit(move || println!("  email for order {id}"));
        Ok(())
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut conn = DbConn::establish(":memory:")?;
    diesel::sql_query("CREATE TABLE orders (id INTEGER PRIMARY KEY)").execute(&mut conn)?;

    // Everything below is rolled back when the test transaction ends.
    conn.begin_test_transaction()?;

    let (result, hooks) = conn.capture_on_commit(Capture::Collect, |conn| place_order(conn, 1));
    result?;
    println!("captured {} hook(s):", hooks.len());
    for label in hooks.labels() {
        println!("  {label}");
    }
    assert_eq!(hooks.len(), 1);
    println!("running them:");
    hooks.run(&mut conn);

    // A failing order registers nothing that would run.
    let (result, hooks) = conn.capture_on_commit(Capture::Collect, |conn| place_order(conn, 1));
    assert!(result.is_err(), "duplicate id");
    assert!(hooks.is_empty());
    println!("a rolled-back order captured {} hooks", hooks.len());
    Ok(())
}
