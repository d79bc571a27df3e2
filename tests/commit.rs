//! Rule 5 on SQLite: the outermost commit — before_commit, a failed
//! COMMIT, and on_commit hooks running at d == 0.

mod common;

use common::{expect_panic, sqlite, Log};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error};
use diesel_on_commit::prelude::*;

type R = Result<(), Error>;

diesel::table! { items (id) { id -> Integer, name -> Text } }

fn with_items() -> HookedConnection<SqliteConnection> {
    let mut conn = sqlite();
    diesel::sql_query("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        .execute(&mut conn)
        .unwrap();
    conn
}

fn count(conn: &mut HookedConnection<SqliteConnection>) -> i64 {
    items::table.count().get_result(conn).unwrap()
}

#[test]
fn before_commit_runs_inside_the_transaction_before_on_commit() {
    let mut conn = with_items();
    let log = Log::new();
    conn.transaction(|conn| -> R {
        conn.on_commit(log.hook("on_commit"));
        let l = log.clone();
        conn.before_commit(move |conn| {
            assert!(
                conn.in_transaction(),
                "before_commit runs inside the transaction"
            );
            l.push("before_commit");
            diesel::insert_into(items::table)
                .values((items::id.eq(1), items::name.eq("from before_commit")))
                .execute(conn)?;
            Ok(())
        });
        log.push("body");
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["body", "before_commit", "on_commit"]);
    assert_eq!(count(&mut conn), 1, "before_commit's write is committed");
}

#[test]
fn before_commit_hooks_run_in_order_and_their_registrations_land_in_the_same_level() {
    let mut conn = sqlite();
    let log = Log::new();
    conn.transaction(|conn| -> R {
        let l = log.clone();
        conn.before_commit(move |conn| {
            l.push("before 1");
            let l2 = l.clone();
            conn.before_commit(move |_| {
                l2.push("before 3 (registered by 1)");
                Ok(())
            });
            conn.on_commit(l.hook("on_commit registered by before 1"));
            Ok(())
        });
        let l = log.clone();
        conn.before_commit(move |_| {
            l.push("before 2");
            Ok(())
        });
        conn.on_commit(log.hook("on_commit from body"));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        log.get(),
        [
            "before 1",
            "before 2",
            "before 3 (registered by 1)",
            "on_commit from body",
            "on_commit registered by before 1"
        ]
    );
}

#[test]
fn before_commit_error_aborts_the_commit_and_is_returned() {
    let mut conn = with_items();
    let log = Log::new();
    let r = conn.transaction(|conn| -> R {
        diesel::insert_into(items::table)
            .values((items::id.eq(1), items::name.eq("a")))
            .execute(conn)?;
        conn.on_commit(log.hook("on_commit"));
        conn.on_rollback(log.hook("on_rollback"));
        conn.before_commit(|_| Err(Error::NotFound));
        let l = log.clone();
        conn.before_commit(move |_| {
            l.push("second before_commit must not run");
            Ok(())
        });
        Ok(())
    });
    assert!(matches!(r, Err(Error::NotFound)), "{r:?}");
    assert_eq!(log.get(), ["on_rollback"]);
    assert_eq!(count(&mut conn), 0, "rolled back");
    assert!(!conn.in_transaction());
}

#[test]
fn before_commit_panic_rolls_back_and_resumes() {
    let mut conn = with_items();
    let log = Log::new();
    let msg = expect_panic(|| {
        conn.transaction(|conn| -> R {
            diesel::insert_into(items::table)
                .values((items::id.eq(1), items::name.eq("a")))
                .execute(conn)?;
            conn.on_commit(log.hook("on_commit"));
            conn.on_rollback(log.hook("on_rollback"));
            conn.before_commit(|_| -> QueryResult<()> { panic!("veto by panic") });
            Ok(())
        })
    });
    assert_eq!(msg, "veto by panic");
    assert_eq!(log.get(), ["on_rollback"]);
    assert!(!conn.in_transaction());
    assert_eq!(count(&mut conn), 0);
}

#[test]
fn before_commit_in_a_savepoint_waits_for_the_outermost_commit() {
    let mut conn = sqlite();
    let log = Log::new();
    conn.transaction(|conn| -> R {
        conn.transaction(|conn| -> R {
            let l = log.clone();
            conn.before_commit(move |_| {
                l.push("before_commit");
                Ok(())
            });
            Ok(())
        })?;
        log.push("savepoint released");
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["savepoint released", "before_commit"]);
}

fn deferred_fk_conn() -> HookedConnection<SqliteConnection> {
    let mut conn = sqlite();
    conn.batch_execute(
        "PRAGMA foreign_keys = ON;
         CREATE TABLE parent (id INTEGER PRIMARY KEY);
         CREATE TABLE child (id INTEGER PRIMARY KEY,
             parent_id INTEGER NOT NULL REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);",
    )
    .unwrap();
    conn
}

#[test]
fn failed_commit_runs_on_rollback_and_no_on_commit() {
    let mut conn = deferred_fk_conn();
    let log = Log::new();
    let r = conn.transaction(|conn| -> R {
        conn.batch_execute("INSERT INTO child (id, parent_id) VALUES (1, 42)")?;
        conn.on_commit(log.hook("on_commit"));
        conn.on_rollback(log.hook("on_rollback"));
        Ok(())
    });
    match r {
        Err(Error::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, info)) => {
            assert!(info.message().contains("FOREIGN KEY"), "{}", info.message())
        }
        other => panic!("expected the deferred foreign key to fail at COMMIT, got {other:?}"),
    }
    assert_eq!(log.get(), ["on_rollback"]);
    assert!(!conn.in_transaction());
    // Usable again, and the next transaction is outermost and fires.
    conn.transaction(|conn| -> R {
        conn.on_commit(log.hook("next"));
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["on_rollback", "next"]);
}

#[test]
fn on_commit_with_runs_at_depth_zero_and_its_registrations_run_at_once() {
    let mut conn = sqlite();
    conn.set_outside_transaction(OutsideTransaction::Panic);
    let log = Log::new();
    conn.transaction(|conn| -> R {
        let l = log.clone();
        conn.on_commit_with(move |conn: &mut HookedConnection<SqliteConnection>| {
            assert!(!conn.in_transaction());
            l.push("with start");
            // Exempt from OutsideTransaction::Panic: runs at once, depth first.
            conn.on_commit(l.hook("registered by hook"));
            l.push("with end");
        });
        conn.on_commit(log.hook("second"));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        log.get(),
        ["with start", "registered by hook", "with end", "second"]
    );
}

#[test]
fn a_hook_that_opens_a_transaction_gets_a_fresh_one_with_its_own_hooks() {
    let mut conn = with_items();
    let log = Log::new();
    conn.transaction(|conn| -> R {
        let l = log.clone();
        conn.on_commit_with(move |conn: &mut HookedConnection<SqliteConnection>| {
            conn.transaction(|conn| -> R {
                assert!(conn.in_transaction());
                diesel::insert_into(items::table)
                    .values((items::id.eq(7), items::name.eq("audit")))
                    .execute(conn)?;
                conn.on_commit(l.hook("hook of the hook's transaction"));
                Ok(())
            })
        });
        conn.on_commit(log.hook("second hook of the first transaction"));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        log.get(),
        [
            "hook of the hook's transaction",
            "second hook of the first transaction"
        ]
    );
    assert_eq!(count(&mut conn), 1);
}

#[test]
fn before_commit_outside_a_transaction_panics_under_every_policy() {
    for policy in [
        OutsideTransaction::Run,
        OutsideTransaction::WarnAndRun,
        OutsideTransaction::Panic,
    ] {
        let mut conn = sqlite();
        conn.set_outside_transaction(policy);
        let msg = expect_panic(|| conn.before_commit(|_| Ok(())));
        assert!(msg.contains("before_commit"), "{msg}");
        assert!(msg.contains("nothing to veto"), "{msg}");
    }
}

#[test]
fn before_commit_registered_by_an_on_commit_hook_still_panics() {
    let mut conn = sqlite();
    conn.set_hook_panics(HookPanics::Resume);
    let msg = expect_panic(|| {
        conn.transaction(|conn| -> R {
            conn.on_commit_with(|conn: &mut HookedConnection<SqliteConnection>| {
                conn.before_commit(|_| Ok(()))
            });
            Ok(())
        })
    });
    assert!(msg.contains("nothing to veto"), "{msg}");
}
