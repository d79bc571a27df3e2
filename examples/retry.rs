//! Retrying a transaction without firing the hooks of failed attempts:
//! `cargo run --example retry`.
//!
//! Two connections share one SQLite file. A holds the write lock; B's
//! `BEGIN IMMEDIATE` gets `SQLITE_BUSY` and is retried with backoff until A
//! commits. On PostgreSQL the same builder takes `.serializable()` and
//! retries serialization failures and deadlocks.

use std::sync::mpsc;
use std::time::Duration;

use diesel::prelude::*;
use diesel::result::Error;
use diesel_on_commit::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_target(false)
        .without_time()
        // Colours for a terminal only: piped or redirected, the log stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let dir = std::env::temp_dir().join(format!("on-commit-retry-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = dir.join("shop.sqlite").to_string_lossy().into_owned();

    let mut a = HookedConnection::<SqliteConnection>::establish(&url)?;
    // A waits out B's brief SHARED lock at COMMIT; B fails at once and retries.
    diesel::sql_query("PRAGMA busy_timeout = 10000").execute(&mut a)?;
    diesel::sql_query("CREATE TABLE stock (item TEXT PRIMARY KEY, count INTEGER NOT NULL)")
        .execute(&mut a)?;
    diesel::sql_query("INSERT INTO stock VALUES ('lamp', 10)").execute(&mut a)?;

    let (locked_tx, locked_rx) = mpsc::channel();
    let holder = std::thread::spawn(move || {
        a.immediate_transaction(|conn| -> Result<(), Error> {
            diesel::sql_query("UPDATE stock SET count = count - 1").execute(conn)?;
            locked_tx.send(()).unwrap();
            println!("A: holding the write lock for 100 ms");
            std::thread::sleep(Duration::from_millis(100));
            conn.on_commit(|| println!("A: committed; hook ran"));
            Ok(())
        })
    });
    locked_rx.recv()?;

    let mut b = HookedConnection::<SqliteConnection>::establish(&url)?;
    diesel::sql_query("PRAGMA busy_timeout = 0").execute(&mut b)?;
    let policy =
        RetryPolicy::attempts(50).backoff(Duration::from_millis(5), Duration::from_millis(40));
    let mut attempts = 0;
    b.build_transaction().immediate().retry(policy).run(|conn| -> Result<(), Error> {
        attempts += 1;
        diesel::sql_query("UPDATE stock SET count = count - 1").execute(conn)?;
        conn.on_commit(move || {
            println!("B: committed; its body ran {attempts} time(s) (BEGIN IMMEDIATE was what failed); hook ran once")
        });
        Ok(())
    })?;
    holder.join().expect("A's thread")?;

    let count: i32 = diesel::dsl::sql::<diesel::sql_types::Integer>("SELECT count FROM stock")
        .get_result(&mut b)?;
    println!("lamps left: {count}");
    assert_eq!(count, 8);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
