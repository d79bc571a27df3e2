//! Rule 6 on SQLite: a hook's error or panic.

mod common;

use common::{capture_logs, expect_panic, sqlite, Log};
use diesel::prelude::*;
use diesel::result::Error;
use diesel_on_commit::prelude::*;

type R = Result<(), Error>;

diesel::table! { items (id) { id -> Integer } }

fn with_items() -> HookedConnection<SqliteConnection> {
    let mut conn = sqlite();
    diesel::sql_query("CREATE TABLE items (id INTEGER PRIMARY KEY)")
        .execute(&mut conn)
        .unwrap();
    conn
}

#[derive(Debug)]
struct Chain;
impl std::fmt::Display for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if f.alternate() {
            write!(f, "smtp refused: mailbox full")
        } else {
            write!(f, "smtp refused")
        }
    }
}

#[test]
fn a_hook_error_is_logged_with_its_label_and_later_hooks_run() {
    let mut conn = sqlite();
    let log = Log::new();
    let (r, logs) = capture_logs(|| {
        conn.transaction(|conn| -> R {
            conn.on_commit(|| -> Result<(), Chain> { Err(Chain) });
            conn.on_commit(log.hook("after the failing hook"));
            Ok(())
        })
    });
    r.unwrap();
    assert_eq!(log.get(), ["after the failing hook"]);
    assert!(logs.contains("ERROR"), "{logs}");
    assert!(
        logs.contains("smtp refused: mailbox full"),
        "logged with {{:#}}: {logs}"
    );
    assert!(logs.contains("tests/hook_failures.rs:"), "label: {logs}");
}

#[test]
fn a_panicking_on_commit_hook_does_not_stop_the_others_and_is_resumed_after_commit() {
    let mut conn = with_items();
    let log = Log::new();
    let (msg, logs) = capture_logs(|| {
        expect_panic(|| {
            conn.transaction(|conn| -> R {
                diesel::insert_into(items::table)
                    .values(items::id.eq(1))
                    .execute(conn)?;
                conn.on_commit(log.hook("first"));
                conn.on_commit(|| -> () { panic!("boom in hook") });
                conn.on_commit(log.hook("after the panic"));
                Ok(())
            })
        })
    });
    assert_eq!(msg, "boom in hook");
    assert_eq!(log.get(), ["first", "after the panic"]);
    assert!(
        logs.contains("after COMMIT; the transaction is committed"),
        "{logs}"
    );
    // The panic did not mean a rollback.
    let n: i64 = items::table.count().get_result(&mut conn).unwrap();
    assert_eq!(n, 1);
    assert!(!conn.in_transaction());
}

#[test]
fn only_the_first_panic_is_resumed() {
    let mut conn = sqlite();
    let msg = expect_panic(|| {
        conn.transaction(|conn| -> R {
            conn.on_commit(|| -> () { panic!("first") });
            conn.on_commit(|| -> () { panic!("second") });
            Ok(())
        })
    });
    assert_eq!(msg, "first");
}

#[test]
fn hook_panics_log_only_logs() {
    let mut conn = sqlite();
    conn.set_hook_panics(HookPanics::Log);
    let log = Log::new();
    let (r, logs) = capture_logs(|| {
        conn.transaction(|conn| -> R {
            conn.on_commit(|| -> () { panic!("logged only") });
            conn.on_commit(log.hook("second"));
            Ok(())
        })
    });
    assert!(r.is_ok());
    assert_eq!(log.get(), ["second"]);
    assert!(logs.contains("logged only"), "{logs}");
}

#[test]
fn robust_hook_panic_is_caught_and_logged_never_resumed() {
    let mut conn = sqlite();
    let log = Log::new();
    let (r, logs) = capture_logs(|| {
        conn.transaction(|conn| -> R {
            conn.on_commit_robust(|| -> () { panic!("robust boom") });
            conn.on_commit(log.hook("after robust"));
            Ok(())
        })
    });
    assert!(r.is_ok(), "robust panics are not resumed (policy Resume)");
    assert_eq!(log.get(), ["after robust"]);
    assert!(
        logs.contains("robust boom") && logs.contains("ERROR"),
        "{logs}"
    );
}

#[test]
fn a_panicking_on_rollback_hook_is_resumed_after_the_other_rollback_hooks() {
    let mut conn = sqlite();
    let log = Log::new();
    let msg = expect_panic(|| {
        conn.transaction(|conn| -> R {
            conn.on_rollback(|| -> () { panic!("rollback hook boom") });
            conn.on_rollback(log.hook("second rollback hook"));
            Err(Error::RollbackTransaction)
        })
    });
    assert_eq!(msg, "rollback hook boom");
    assert_eq!(log.get(), ["second rollback hook"]);
    assert!(!conn.in_transaction());
}

#[test]
fn an_on_rollback_panic_during_a_body_panic_is_logged_not_resumed() {
    let mut conn = sqlite();
    let log = Log::new();
    let (msg, logs) = capture_logs(|| {
        expect_panic(|| {
            conn.transaction(|conn| -> R {
                conn.on_rollback(|| -> () { panic!("rollback hook boom") });
                conn.on_rollback(log.hook("second rollback hook"));
                panic!("body boom");
            })
        })
    });
    assert_eq!(msg, "body boom", "the body's panic wins");
    assert_eq!(log.get(), ["second rollback hook"]);
    assert!(logs.contains("rollback hook boom"), "{logs}");
    assert!(!conn.in_transaction());
}

#[test]
fn a_panic_of_a_hook_run_at_once_outside_a_transaction_is_resumed_with_a_fitting_message() {
    let mut conn = sqlite();
    let (msg, logs) =
        capture_logs(|| expect_panic(|| conn.on_commit(|| -> () { panic!("at once") })));
    assert_eq!(msg, "at once");
    assert!(logs.contains("outside a transaction"), "{logs}");
}
