//! Rules 7–10 on SQLite: panics in the body, transactions the wrapper
//! did not open, broken connections, dropping mid-transaction.

mod common;

use common::{capture_logs, expect_panic, sqlite, Log};
use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::prelude::*;
use diesel::result::Error;
use diesel_on_commit::prelude::*;
use diesel_on_commit::HookedTransactionManager;

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

fn count(conn: &mut Conn) -> i64 {
    items::table.count().get_result(conn).unwrap()
}

#[test]
fn panic_in_the_body_rolls_back_restores_the_depth_and_resumes() {
    let mut conn = with_items();
    let log = Log::new();
    let msg = expect_panic(|| {
        conn.transaction(|conn| -> R {
            diesel::insert_into(items::table)
                .values(items::id.eq(1))
                .execute(conn)?;
            conn.on_commit(log.hook("on_commit"));
            conn.on_rollback(log.hook("on_rollback"));
            panic!("body boom")
        })
    });
    assert_eq!(msg, "body boom");
    assert_eq!(log.get(), ["on_rollback"]);
    assert!(!conn.in_transaction(), "depth restored");
    assert_eq!(count(&mut conn), 0, "rolled back");
    // The next transaction is a real outermost one: its hooks fire.
    conn.transaction(|conn| -> R {
        diesel::insert_into(items::table)
            .values(items::id.eq(2))
            .execute(conn)?;
        conn.on_commit(log.hook("next commit"));
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["on_rollback", "next commit"]);
    assert_eq!(count(&mut conn), 1);
}

#[test]
fn panic_in_a_savepoint_unwinds_through_every_level() {
    let mut conn = with_items();
    let log = Log::new();
    expect_panic(|| {
        conn.transaction(|conn| -> R {
            conn.on_rollback(log.hook("outer rollback"));
            conn.transaction(|conn| -> R {
                conn.on_rollback(log.hook("inner rollback"));
                panic!("inner boom")
            })
        })
    });
    assert_eq!(log.get(), ["inner rollback", "outer rollback"]);
    assert!(!conn.in_transaction());
}

#[test]
fn a_caught_panic_in_a_savepoint_leaves_the_outer_level_usable() {
    let mut conn = with_items();
    let log = Log::new();
    conn.transaction(|conn| -> R {
        conn.on_commit(log.hook("outer"));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            conn.transaction(|conn| -> R {
                diesel::insert_into(items::table)
                    .values(items::id.eq(1))
                    .execute(conn)?;
                conn.on_commit(log.hook("inner, rolled back"));
                panic!("inner boom")
            })
        }));
        assert!(caught.is_err());
        assert!(conn.in_transaction(), "still in the outer level");
        diesel::insert_into(items::table)
            .values(items::id.eq(2))
            .execute(conn)?;
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["outer"]);
    let ids: Vec<i32> = items::table.select(items::id).load(&mut conn).unwrap();
    assert_eq!(ids, [2]);
}

#[test]
fn registering_in_a_transaction_the_wrapper_did_not_open_panics() {
    let mut conn = sqlite();
    AnsiTransactionManager::begin_transaction(conn.inner_mut()).unwrap();
    let log = Log::new();
    let msg = expect_panic(|| conn.on_commit(log.hook("never")));
    assert!(msg.contains("did not open"), "{msg}");
    assert!(msg.contains("tests/ugly_paths.rs:"), "{msg}");
    let msg = expect_panic(|| conn.on_rollback(log.hook("never")));
    assert!(msg.contains("did not open"), "{msg}");
    assert!(log.get().is_empty());
    AnsiTransactionManager::rollback_transaction(conn.inner_mut()).unwrap();
    // Back to normal.
    conn.on_commit(log.hook("outside, runs at once"));
    assert_eq!(log.get(), ["outside, runs at once"]);
}

#[test]
fn levels_that_vanish_behind_the_wrappers_back_run_neither_kind_of_hook() {
    let mut conn = sqlite();
    let log = Log::new();
    let (r, logs) = capture_logs(|| {
        conn.transaction(|conn| -> R {
            conn.on_commit(log.hook("on_commit"));
            conn.on_rollback(log.hook("on_rollback"));
            // COMMIT sent past the wrapper.
            AnsiTransactionManager::commit_transaction(conn.inner_mut())?;
            assert!(!conn.in_transaction());
            Ok(())
        })
    });
    assert!(
        matches!(r, Err(Error::NotInTransaction)),
        "the wrapper cannot commit a level that is gone; Diesel's error kind: {r:?}"
    );
    assert!(log.get().is_empty(), "{:?}", log.get());
    assert!(
        logs.contains("ERROR")
            && logs.contains("behind its back")
            && logs.contains("outcome is unknown")
            && logs.contains("hooks were discarded"),
        "{logs}"
    );
    // Usable again.
    conn.transaction(|conn| -> R {
        conn.on_commit(log.hook("next"));
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["next"]);
}

#[test]
fn a_broken_transaction_manager_discards_on_commit_and_runs_on_rollback() {
    let mut conn = sqlite();
    let log = Log::new();
    let (r, logs) = capture_logs(|| {
        conn.transaction(|conn| -> R {
            conn.on_commit(log.hook("on_commit"));
            conn.on_rollback(log.hook("on_rollback 1"));
            AnsiTransactionManager::transaction_manager_status_mut(conn.inner_mut()).set_in_error();
            // The wrapper notices at the next touch.
            conn.on_rollback(log.hook("on_rollback on a broken connection runs at once"));
            conn.on_commit(log.hook("on_commit on a broken connection is dropped"));
            Ok(())
        })
    });
    assert!(matches!(r, Err(Error::BrokenTransactionManager)), "{r:?}");
    assert_eq!(
        log.get(),
        [
            "on_rollback 1",
            "on_rollback on a broken connection runs at once"
        ]
    );
    assert!(logs.contains("dropped, it will never run"), "{logs}");
    assert!(HookedTransactionManager::is_broken_transaction_manager(
        &mut conn
    ));
}

#[test]
fn dropping_a_wrapper_mid_transaction_runs_on_rollback_and_discards_the_rest() {
    let mut conn = sqlite();
    let log = Log::new();
    HookedTransactionManager::begin_transaction(&mut conn).unwrap();
    conn.on_commit(log.hook("on_commit"));
    conn.on_rollback(log.hook("on_rollback"));
    HookedTransactionManager::begin_transaction(&mut conn).unwrap();
    conn.on_rollback(log.hook("savepoint on_rollback"));
    drop(conn);
    assert_eq!(log.get(), ["on_rollback", "savepoint on_rollback"]);
}

#[test]
fn into_inner_mid_transaction_discards_every_hook_with_a_warning() {
    let mut conn = sqlite();
    let log = Log::new();
    HookedTransactionManager::begin_transaction(&mut conn).unwrap();
    conn.on_commit(log.hook("on_commit"));
    conn.on_rollback(log.hook("on_rollback"));
    let (inner, logs) = capture_logs(|| conn.into_inner());
    assert!(log.get().is_empty());
    assert!(
        logs.contains("WARN") && logs.contains("into_inner"),
        "{logs}"
    );
    drop(inner);
    assert!(log.get().is_empty());
}

#[test]
fn dropping_a_wrapper_while_unwinding_with_a_panicking_on_rollback_hook_does_not_abort() {
    let log = Log::new();
    let l = log.clone();
    let joined = std::thread::spawn(move || {
        let mut conn = sqlite();
        HookedTransactionManager::begin_transaction(&mut conn).unwrap();
        conn.on_rollback(|| -> () { panic!("rollback hook panics during unwinding") });
        conn.on_rollback(l.hook("second rollback hook"));
        panic!("thread panics with the wrapper mid-transaction");
    })
    .join();
    let payload = joined.expect_err("the thread panicked");
    assert_eq!(
        common::panic_text(&*payload),
        "thread panics with the wrapper mid-transaction"
    );
    assert_eq!(log.get(), ["second rollback hook"]);
}
