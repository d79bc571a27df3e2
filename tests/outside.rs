//! Rule 2 on SQLite: hooks registered outside a transaction.

mod common;

use common::{capture_logs, expect_panic, sqlite, Log};
use diesel::result::Error;
use diesel_on_commit::prelude::*;

type R = Result<(), Error>;

#[test]
fn run_policy_runs_on_commit_at_once_before_the_call_returns() {
    let mut conn = sqlite();
    let log = Log::new();
    conn.on_commit(log.hook("plain"));
    assert_eq!(log.get(), ["plain"], "ran before on_commit returned");
    conn.on_commit_robust(log.hook("robust"));
    let l = log.clone();
    conn.on_commit_with(move |_| l.push("with"));
    assert_eq!(log.get(), ["plain", "robust", "with"]);
}

#[test]
fn run_policy_drops_on_rollback_outside_a_transaction() {
    let mut conn = sqlite();
    let log = Log::new();
    let ((), logs) = capture_logs(|| conn.on_rollback(log.hook("never")));
    assert!(log.get().is_empty());
    assert!(!logs.contains("WARN"), "{logs}");
    // It does not linger into the next transaction either.
    let r = conn.transaction(|_| -> R { Err(Error::RollbackTransaction) });
    assert!(r.is_err());
    assert!(log.get().is_empty());
}

#[test]
fn warn_and_run_logs_the_label_then_runs() {
    let mut conn = sqlite();
    conn.set_outside_transaction(OutsideTransaction::WarnAndRun);
    let log = Log::new();
    let ((), logs) = capture_logs(|| conn.on_commit(log.hook("ran")));
    assert_eq!(log.get(), ["ran"]);
    assert!(logs.contains("WARN"), "{logs}");
    assert!(
        logs.contains("tests/outside.rs:"),
        "names the label: {logs}"
    );
    assert!(logs.contains("outside a transaction"), "{logs}");
}

#[test]
fn warn_and_run_warns_and_drops_on_rollback() {
    let mut conn = sqlite();
    conn.set_outside_transaction(OutsideTransaction::WarnAndRun);
    let log = Log::new();
    let ((), logs) = capture_logs(|| conn.on_rollback(log.hook("never")));
    assert!(log.get().is_empty());
    assert!(
        logs.contains("WARN") && logs.contains("on_rollback"),
        "{logs}"
    );
}

#[test]
fn panic_policy_panics_naming_the_label_and_runs_nothing() {
    let mut conn = sqlite();
    conn.set_outside_transaction(OutsideTransaction::Panic);
    let log = Log::new();
    let msg = expect_panic(|| conn.on_commit(log.hook("never")));
    assert!(msg.contains("tests/outside.rs:"), "{msg}");
    assert!(msg.contains("outside a transaction"), "{msg}");
    assert!(log.get().is_empty());
    let msg = expect_panic(|| conn.on_rollback(log.hook("never")));
    assert!(msg.contains("on_rollback"), "{msg}");
    // Inside a transaction the policy does not matter.
    conn.transaction(|conn| -> R {
        conn.on_commit(log.hook("inside"));
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["inside"]);
}

#[test]
fn hooks_registered_by_running_hooks_are_exempt_from_warn_and_panic() {
    for policy in [OutsideTransaction::WarnAndRun, OutsideTransaction::Panic] {
        let mut conn = sqlite();
        conn.set_outside_transaction(policy);
        let log = Log::new();
        let (r, logs) = capture_logs(|| {
            conn.transaction(|conn| -> R {
                let l = log.clone();
                conn.on_commit_with(move |conn: &mut HookedConnection<_>| {
                    conn.on_commit(l.hook("nested"));
                    conn.on_commit_robust(l.hook("nested robust"));
                });
                Ok(())
            })
        });
        r.unwrap();
        assert_eq!(log.get(), ["nested", "nested robust"]);
        assert!(!logs.contains("WARN"), "{logs}");
    }
}
