//! Rules 11 and 12 on SQLite: test transactions and capture.

mod common;

use common::{expect_panic, sqlite, Log};
use diesel::prelude::*;
use diesel::result::Error;
use diesel_on_commit::prelude::*;

type R = Result<(), Error>;
type Conn = HookedConnection<SqliteConnection>;

diesel::table! { items (id) { id -> Integer } }

fn with_items() -> Conn {
    let mut conn = sqlite();
    diesel::sql_query("CREATE TABLE items (id INTEGER PRIMARY KEY)")
        .execute(&mut conn)
        .unwrap();
    conn
}

#[test]
fn begin_test_transaction_is_the_baseline() {
    let mut conn = with_items();
    let log = Log::new();
    conn.begin_test_transaction().unwrap();
    assert!(
        !conn.in_transaction(),
        "the test transaction is not a user transaction"
    );
    // Rule 2 applies at the baseline.
    conn.on_commit(log.hook("at once"));
    assert_eq!(log.get(), ["at once"]);
    // The outermost user commit (a RELEASE SAVEPOINT) fires hooks.
    conn.transaction(|conn| -> R {
        assert!(conn.in_transaction());
        diesel::insert_into(items::table)
            .values(items::id.eq(1))
            .execute(conn)?;
        conn.on_commit(log.hook("user commit"));
        conn.transaction(|conn| -> R {
            conn.on_commit(log.hook("nested"));
            Ok(())
        })
    })
    .unwrap();
    assert_eq!(log.get(), ["at once", "user commit", "nested"]);
    let r = conn.transaction(|conn| -> R {
        conn.on_commit(log.hook("never"));
        conn.on_rollback(log.hook("rolled back"));
        Err(Error::RollbackTransaction)
    });
    assert!(r.is_err());
    assert_eq!(
        log.get(),
        ["at once", "user commit", "nested", "rolled back"]
    );
}

#[test]
fn test_transaction_is_the_baseline_and_fires_nothing_when_it_ends() {
    let mut conn = with_items();
    let log = Log::new();
    let n = conn.test_transaction(|conn| -> Result<i64, Error> {
        assert!(!conn.in_transaction());
        conn.transaction(|conn| -> R {
            diesel::insert_into(items::table)
                .values(items::id.eq(1))
                .execute(conn)?;
            conn.on_commit(log.hook("user commit"));
            Ok(())
        })?;
        assert_eq!(log.get(), ["user commit"]);
        items::table.count().get_result(conn)
    });
    assert_eq!(n, 1);
    assert_eq!(
        log.get(),
        ["user commit"],
        "nothing fires when the test transaction ends"
    );
    let after: i64 = items::table.count().get_result(&mut conn).unwrap();
    assert_eq!(after, 0, "the test transaction rolled everything back");
    assert!(!conn.in_transaction());
    // The connection is back to normal afterwards.
    conn.transaction(|conn| -> R {
        conn.on_commit(log.hook("real commit"));
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["user commit", "real commit"]);
}

#[test]
fn test_transaction_panics_on_err_like_diesel() {
    let mut conn = sqlite();
    let msg = expect_panic(|| conn.test_transaction(|_| -> R { Err(Error::NotFound) }));
    assert!(msg.contains("Transaction did not succeed"), "{msg}");
    assert!(!conn.in_transaction());
    conn.test_transaction(|_| -> R { Ok(()) }); // reusable
}

#[test]
fn begin_test_transaction_inside_a_transaction_panics_like_diesel() {
    // Diesel's `begin_test_transaction` asserts that no transaction is open.
    let mut conn = sqlite();
    let r = conn.transaction(|conn| -> R {
        let msg = expect_panic(|| conn.begin_test_transaction());
        assert!(msg.contains("begin_test_transaction"), "{msg}");
        Ok(())
    });
    assert!(r.is_ok());
}

fn count(conn: &mut Conn) -> i64 {
    items::table.count().get_result(conn).unwrap()
}

fn insert(conn: &mut Conn, id: i32) -> QueryResult<usize> {
    diesel::insert_into(items::table)
        .values(items::id.eq(id))
        .execute(conn)
}

#[test]
fn test_transaction_inside_a_transaction_runs_in_a_rolled_back_savepoint() {
    // As Diesel's `test_transaction`: a savepoint rolled back at the end;
    // its on_commit hooks are discarded and its on_rollback hooks run
    // (rule 4), the enclosing transaction's hooks are kept.
    let mut conn = with_items();
    let log = Log::new();
    conn.transaction(|conn| -> R {
        insert(conn, 1)?;
        conn.on_commit(log.hook("outer committed"));
        conn.on_rollback(log.hook("outer never rolled back"));
        let n = conn.test_transaction(|conn| -> Result<i64, Error> {
            assert!(conn.in_transaction(), "a savepoint of the user transaction");
            insert(conn, 2)?;
            conn.on_commit(log.hook("discarded"));
            conn.on_rollback(log.hook("savepoint rolled back"));
            conn.transaction(|conn| -> R {
                conn.on_commit(log.hook("released, then discarded"));
                conn.on_rollback(log.hook("released, then rolled back"));
                Ok(())
            })?;
            Ok(count(conn))
        });
        assert_eq!(n, 2, "f's Ok value is returned");
        assert_eq!(
            log.get(),
            ["savepoint rolled back", "released, then rolled back"]
        );
        assert_eq!(count(conn), 1, "the savepoint's insert is undone");
        assert!(conn.in_transaction(), "the user transaction goes on");
        Ok(())
    })
    .unwrap();
    assert_eq!(
        log.get(),
        [
            "savepoint rolled back",
            "released, then rolled back",
            "outer committed"
        ]
    );
    assert_eq!(count(&mut conn), 1);
}

#[test]
fn test_transaction_inside_a_transaction_panics_on_err_like_diesel() {
    let mut conn = with_items();
    let log = Log::new();
    conn.transaction(|conn| -> R {
        let msg = expect_panic(|| {
            conn.test_transaction(|conn| -> R {
                insert(conn, 1)?;
                conn.on_commit(log.hook("discarded"));
                conn.on_rollback(log.hook("savepoint rolled back"));
                Err(Error::NotFound)
            })
        });
        assert!(msg.contains("Transaction did not succeed"), "{msg}");
        assert!(conn.in_transaction());
        assert_eq!(count(conn), 0);
        conn.on_commit(log.hook("outer committed"));
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["savepoint rolled back", "outer committed"]);
}

#[test]
fn test_transaction_inside_begin_test_transaction_runs_in_a_savepoint() {
    // The test transaction is open on the inner connection: Diesel's
    // `test_transaction` would nest as a savepoint there too.
    let mut conn = with_items();
    let log = Log::new();
    conn.begin_test_transaction().unwrap();
    insert(&mut conn, 1).unwrap();
    conn.test_transaction(|conn| -> R {
        insert(conn, 2)?;
        conn.on_commit(log.hook("discarded"));
        conn.on_rollback(log.hook("savepoint rolled back"));
        Ok(())
    });
    assert_eq!(log.get(), ["savepoint rolled back"]);
    assert_eq!(count(&mut conn), 1, "only the savepoint was rolled back");
    assert!(!conn.in_transaction(), "back on the baseline");
    conn.transaction(|conn| -> R {
        conn.on_commit(log.hook("user commit"));
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["savepoint rolled back", "user commit"]);
}

#[test]
fn capture_collect_keeps_hooks_in_order_until_run() {
    let mut conn = sqlite();
    let log = Log::new();
    let (value, hooks) = conn.capture_on_commit(Capture::Collect, |conn| {
        conn.transaction(|conn| -> R {
            conn.on_commit(log.hook("first"));
            conn.transaction(|conn| -> R {
                conn.on_commit_robust(log.hook("second"));
                Ok(())
            })?;
            let l = log.clone();
            conn.on_commit_with(move |_| l.push("third"));
            conn.on_rollback(log.hook("not captured: a rollback hook"));
            Ok(())
        })
        .unwrap();
        let r = conn.transaction(|conn| -> R {
            conn.on_commit(log.hook("rolled back: never captured"));
            Err(Error::RollbackTransaction)
        });
        assert!(r.is_err());
        42
    });
    assert_eq!(value, 42);
    assert_eq!(hooks.len(), 3);
    assert!(!hooks.is_empty());
    assert!(log.get().is_empty(), "Collect runs nothing");
    let labels: Vec<String> = hooks.labels().iter().map(|l| l.to_string()).collect();
    assert!(
        labels.iter().all(|l| l.starts_with("tests/testing.rs:")),
        "{labels:?}"
    );
    assert!(format!("{hooks:?}").contains("CapturedHooks"));
    hooks.run(&mut conn);
    assert_eq!(log.get(), ["first", "second", "third"]);
}

#[test]
fn capture_execute_runs_hooks_when_due_and_records_hooks_registered_by_hooks_once() {
    let mut conn = sqlite();
    let log = Log::new();
    let ((), hooks) = conn.capture_on_commit(Capture::Execute, |conn| {
        conn.transaction(|conn| -> R {
            let l = log.clone();
            conn.on_commit_with(move |conn: &mut Conn| {
                l.push("outer hook");
                conn.on_commit(l.hook("hook registered by a hook"));
            });
            Ok(())
        })
        .unwrap();
        assert_eq!(log.get(), ["outer hook", "hook registered by a hook"]);
    });
    assert_eq!(hooks.len(), 2);
    hooks.run(&mut conn); // does nothing under Execute
    assert_eq!(log.get(), ["outer hook", "hook registered by a hook"]);
}

#[test]
fn capture_applies_the_outside_policy_first() {
    let mut conn = sqlite();
    conn.set_outside_transaction(OutsideTransaction::Panic);
    let msg =
        expect_panic(|| conn.capture_on_commit(Capture::Collect, |conn| conn.on_commit(|| ())));
    assert!(msg.contains("outside a transaction"), "{msg}");
    // Under Run, a hook registered at d == 0 is captured (it would have run).
    conn.set_outside_transaction(OutsideTransaction::Run);
    let log = Log::new();
    let ((), hooks) =
        conn.capture_on_commit(Capture::Collect, |conn| conn.on_commit(log.hook("x")));
    assert_eq!(hooks.len(), 1);
    assert!(log.get().is_empty());
    hooks.run(&mut conn);
    assert_eq!(log.get(), ["x"]);
}

#[test]
fn capture_inside_a_transaction_or_another_capture_panics() {
    let mut conn = sqlite();
    conn.transaction(|conn| -> R {
        let msg = expect_panic(|| conn.capture_on_commit(Capture::Collect, |_| ()));
        assert!(msg.contains("outside a transaction"), "{msg}");
        Ok(())
    })
    .unwrap();
    let msg = expect_panic(|| {
        conn.capture_on_commit(Capture::Collect, |conn| {
            conn.capture_on_commit(Capture::Execute, |_| ())
        })
    });
    assert!(msg.contains("nested"), "{msg}");
    // The failed capture is closed: a new one works.
    let ((), hooks) = conn.capture_on_commit(Capture::Collect, |_| ());
    assert!(hooks.is_empty());
}

#[test]
fn capture_works_on_the_test_transaction_baseline() {
    let mut conn = sqlite();
    conn.begin_test_transaction().unwrap();
    let log = Log::new();
    let ((), hooks) = conn.capture_on_commit(Capture::Collect, |conn| {
        conn.transaction(|conn| -> R {
            conn.on_commit(log.hook("captured"));
            Ok(())
        })
        .unwrap()
    });
    assert_eq!(hooks.len(), 1);
    hooks.run(&mut conn);
    assert_eq!(log.get(), ["captured"]);
}
