//! The rules that read the same on PostgreSQL and on MySQL/MariaDB, written
//! once, generic over [`TestDb`] (the server connection type), and stamped
//! out as `#[test]`s in tests/postgres.rs and tests/mysql.rs by
//! [`rule_tests!`]: each test still runs under its backend's binary, and
//! fails (never skips) with that backend's "how to start the database"
//! message when its server is missing. What only one backend does (deferred
//! constraints, serialization failures, deadlocks, `RETURNING`, pools) stays
//! in that backend's file.
//!
//! Every generic test here must be listed in [`rule_tests!`]: one that is
//! not is never called, and `-D warnings` (dead code) says so.

use std::panic::{catch_unwind, AssertUnwindSafe};

use diesel::connection::{LoadConnection, SimpleConnection, TransactionManager};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error};
use diesel_on_commit::{HookedConnection, TransactionHooks};

use crate::common::{expect_panic, panic_text, Log};

diesel::table! {
    items (id) {
        id -> Integer,
        name -> Text,
    }
}

/// A row of `items`.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Queryable,
    QueryableByName,
    Selectable,
    Insertable,
    Identifiable,
    AsChangeset,
)]
#[diesel(table_name = items)]
pub struct Item {
    pub id: i32,
    pub name: String,
}

impl Item {
    pub fn new(id: i32) -> Self {
        Self {
            id,
            name: format!("item {id}"),
        }
    }
}

/// Requires `R2D2Connection` when the `r2d2` feature is on, so the tests can
/// check what a pool would see.
#[cfg(feature = "r2d2")]
pub trait MaybeR2d2: diesel::r2d2::R2D2Connection {}
#[cfg(feature = "r2d2")]
impl<C: diesel::r2d2::R2D2Connection> MaybeR2d2 for C {}
#[cfg(not(feature = "r2d2"))]
pub trait MaybeR2d2 {}
#[cfg(not(feature = "r2d2"))]
impl<C> MaybeR2d2 for C {}

/// What the shared tests need of a server backend: its own database for a
/// test, connections to it, its dialect, and a way to kill a session.
pub trait TestDb: Connection + LoadConnection + MaybeR2d2 + Send + 'static {
    /// A database (or schema) of one test's own; dropped at the test's end.
    type Db;
    /// `CREATE TABLE items` in this dialect.
    const CREATE_ITEMS: &'static str;
    /// What a killed session is called in assertion messages.
    const KILLED: &'static str;

    /// A fresh database; fails with how to start the server when it is
    /// missing.
    fn db() -> Self::Db;
    /// A wrapped connection to `db`.
    fn conn(db: &Self::Db) -> HookedConnection<Self>;
    /// A plain Diesel connection to `db` (an observer).
    fn plain(db: &Self::Db) -> Self;
    /// The server's id of `conn`'s session.
    fn session_id(conn: &mut HookedConnection<Self>) -> u64;
    /// Kills session `id` from `killer` and waits until it is gone.
    fn kill(killer: &mut Self, id: u64);
    /// Inserts `Item::new(id)`.
    fn insert<C: Connection<Backend = Self::Backend>>(conn: &mut C, id: i32) -> QueryResult<usize>;
    /// The ids in `items`, in order.
    fn ids<C: Connection<Backend = Self::Backend> + LoadConnection>(conn: &mut C) -> Vec<i32>;
}

/// `#[test] fn rule() { backend_rules::rule::<$db>() }` for every rule below.
macro_rules! rule_tests {
    ($db:ty) => {
        $crate::backend_rules::rule_tests!(@stamp $db:
            savepoint_release_merges_hooks_into_the_enclosing_level,
            savepoint_rollback_discards_its_hooks_and_runs_on_rollback,
            savepoint_rolled_back_by_a_statement_error_discards_its_hooks_and_the_transaction_goes_on,
            outermost_commit_fires_hooks_in_registration_order_after_commit,
            killed_connection_fails_the_commit_runs_on_rollback_and_reports_broken,
            killed_connection_inside_a_savepoint_runs_every_levels_on_rollback,
            killed_connection_inside_a_savepoint_leaves_no_transaction_open,
            panic_in_the_body_rolls_back_and_the_next_transaction_is_a_real_one,
            registering_in_a_transaction_begun_on_the_inner_connection_panics,
            test_transaction_is_the_baseline_and_its_end_fires_nothing,
            begin_test_transaction_is_the_baseline_and_drop_runs_only_on_rollback,
            transaction_hooks_trait_registers_through_the_wrapper,
        );
    };
    (@stamp $db:ty: $($rule:ident),* $(,)?) => {
        $(
            #[test]
            fn $rule() {
                $crate::backend_rules::$rule::<$db>()
            }
        )*
    };
}
pub(crate) use rule_tests;

/// The kind and message of a database error, to compare errors.
pub fn kind_and_message(error: &Error) -> (DatabaseErrorKind, String) {
    match error {
        Error::DatabaseError(kind, info) => (*kind, info.message().to_owned()),
        other => panic!("expected a database error, got {other:?}"),
    }
}

/// A fresh database with an `items` table, and a wrapped connection to it.
fn setup<D: TestDb>() -> (D::Db, HookedConnection<D>) {
    let db = D::db();
    let mut conn = D::conn(&db);
    conn.batch_execute(D::CREATE_ITEMS).unwrap();
    (db, conn)
}

// ---------------------------------------------------------------------------
// Rules 3, 4, 5.4, 13: levels follow savepoints on a real server.
// ---------------------------------------------------------------------------

pub fn savepoint_release_merges_hooks_into_the_enclosing_level<D: TestDb>() {
    let (db, mut conn) = setup::<D>();
    let log = Log::new();
    conn.transaction(|c| {
        D::insert(c, 1)?;
        c.on_commit(log.hook("outer, before"));
        c.transaction(|c| {
            D::insert(c, 2)?;
            c.on_commit(log.hook("savepoint"));
            c.on_rollback(log.hook("savepoint rolled back"));
            c.transaction(|c| {
                c.on_commit(log.hook("nested savepoint"));
                Ok::<_, Error>(())
            })
        })?;
        assert_eq!(
            log.get(),
            Vec::<String>::new(),
            "a RELEASE SAVEPOINT ran hooks"
        );
        c.on_commit(log.hook("outer, after"));
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(
        log.take(),
        [
            "outer, before",
            "savepoint",
            "nested savepoint",
            "outer, after"
        ]
    );
    assert_eq!(D::ids(&mut D::plain(&db)), [1, 2]);
}

pub fn savepoint_rollback_discards_its_hooks_and_runs_on_rollback<D: TestDb>() {
    let (db, mut conn) = setup::<D>();
    let log = Log::new();
    conn.transaction(|c| {
        D::insert(c, 1)?;
        c.on_commit(log.hook("outer"));
        c.on_rollback(log.hook("outer rolled back"));
        let inner = c.transaction(|c| {
            D::insert(c, 2)?;
            c.on_commit(log.hook("savepoint"));
            c.on_rollback(log.hook("savepoint rolled back"));
            c.transaction(|c| {
                c.on_commit(log.hook("released into the savepoint"));
                c.on_rollback(log.hook("released savepoint rolled back"));
                Ok::<_, Error>(())
            })?;
            Err::<(), _>(Error::RollbackTransaction)
        });
        assert!(
            matches!(inner, Err(Error::RollbackTransaction)),
            "{inner:?}"
        );
        assert_eq!(
            log.take(),
            ["savepoint rolled back", "released savepoint rolled back"],
            "on_rollback hooks of the savepoint run at once, in registration order"
        );
        assert_eq!(D::ids(c), [1], "ROLLBACK TO SAVEPOINT undid its insert");
        // A statement error propagated out of a savepoint rolls it back too.
        let failed = c.transaction(|c| {
            c.on_commit(log.hook("failed savepoint"));
            c.on_rollback(log.hook("failed savepoint rolled back"));
            D::insert(c, 3)?;
            D::insert(c, 1) // duplicate key
        });
        assert_eq!(
            kind_and_message(&failed.unwrap_err()).0,
            DatabaseErrorKind::UniqueViolation
        );
        assert_eq!(log.take(), ["failed savepoint rolled back"]);
        c.on_commit(log.hook("outer, after"));
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(log.take(), ["outer", "outer, after"]);
    assert_eq!(D::ids(&mut D::plain(&db)), [1]);
}

pub fn savepoint_rolled_back_by_a_statement_error_discards_its_hooks_and_the_transaction_goes_on<
    D: TestDb,
>() {
    // PostgreSQL aborts the whole transaction on a statement error, and
    // rolling the savepoint back repairs it; MySQL undoes only the
    // statement. Either way the savepoint's hooks are discarded and the
    // enclosing transaction commits.
    let (db, mut conn) = setup::<D>();
    let log = Log::new();
    conn.transaction(|c| {
        D::insert(c, 1)?;
        c.on_commit(log.hook("outer"));
        let inner = c.transaction(|c| {
            c.on_commit(log.hook("savepoint"));
            c.on_rollback(log.hook("savepoint rolled back"));
            D::insert(c, 1) // duplicate key
        });
        assert_eq!(
            kind_and_message(&inner.unwrap_err()).0,
            DatabaseErrorKind::UniqueViolation
        );
        assert_eq!(log.take(), ["savepoint rolled back"]);
        D::insert(c, 2)?; // the transaction is usable again
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(log.take(), ["outer"]);
    assert_eq!(D::ids(&mut D::plain(&db)), [1, 2]);
}

pub fn outermost_commit_fires_hooks_in_registration_order_after_commit<D: TestDb>() {
    let (db, mut conn) = setup::<D>();
    let log = Log::new();
    let mut observer = D::plain(&db);
    conn.transaction(|c| {
        D::insert(c, 1)?;
        c.on_commit(log.hook("plain"));
        c.transaction(|c| {
            D::insert(c, 2)?;
            let with_log = log.clone();
            c.on_commit_with(move |c: &mut HookedConnection<D>| -> QueryResult<()> {
                let log = with_log;
                log.push(format!("with, in_transaction = {}", c.in_transaction()));
                // A hook that opens a transaction gets a fresh one, whose
                // hooks run at its own commit (depth first).
                let inner_log = log.clone();
                c.transaction(|c| {
                    D::insert(c, 3)?;
                    c.on_commit(move || inner_log.push("hook's own transaction"));
                    Ok::<_, Error>(())
                })?;
                log.push("with, end");
                Ok(())
            });
            c.transaction(|c| {
                c.on_commit_robust(log.hook("robust"));
                Ok::<_, Error>(())
            })
        })?;
        // Runs after COMMIT: another session already sees every row.
        let log = log.clone();
        c.on_commit(move || log.push(format!("observer sees {:?}", D::ids(&mut observer))));
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(
        log.take(),
        [
            "plain",
            "with, in_transaction = false",
            "hook's own transaction",
            "with, end",
            "robust",
            "observer sees [1, 2, 3]",
        ]
    );
}

// ---------------------------------------------------------------------------
// Rule 9: the session is killed with a transaction open.
// ---------------------------------------------------------------------------

pub fn killed_connection_fails_the_commit_runs_on_rollback_and_reports_broken<D: TestDb>() {
    let (db, mut conn) = setup::<D>();
    let mut killer = D::plain(&db);
    let id = D::session_id(&mut conn);
    let killed = D::KILLED;
    let log = Log::new();
    let result = catch_unwind(AssertUnwindSafe(|| {
        conn.transaction(|c| {
            D::insert(c, 1)?;
            c.on_commit(log.hook("committed"));
            c.on_rollback(log.hook("rolled back"));
            D::kill(&mut killer, id);
            Ok::<_, Error>(())
        })
    }))
    .unwrap_or_else(|p| panic!("the wrapper panicked: {}", panic_text(&*p)));
    assert!(result.is_err(), "COMMIT on a {killed} returned Ok");
    assert_eq!(log.take(), ["rolled back"]);
    assert!(!conn.in_transaction());
    #[cfg(feature = "r2d2")]
    assert!(
        diesel::r2d2::R2D2Connection::is_broken(&mut conn),
        "a pool must not reuse this connection"
    );
    assert!(
        <HookedConnection<D> as Connection>::TransactionManager::is_broken_transaction_manager(
            &mut conn
        ),
        "deadpool's recycle check must not reuse this connection"
    );
    // Rule 9: on a broken connection a new on_rollback hook runs at once,
    // an on_commit hook is dropped.
    conn.on_commit(log.hook("late on_commit"));
    conn.on_rollback(log.hook("late on_rollback"));
    assert_eq!(log.take(), ["late on_rollback"]);
    let again = catch_unwind(AssertUnwindSafe(|| {
        conn.transaction(|c| {
            c.on_commit(log.hook("never"));
            Ok::<_, Error>(())
        })
    }))
    .unwrap_or_else(|p| panic!("the wrapper panicked: {}", panic_text(&*p)));
    assert!(again.is_err(), "a transaction on a {killed} returned Ok");
    assert!(log.take().is_empty());
    assert_eq!(D::ids(&mut D::plain(&db)), Vec::<i32>::new());
}

pub fn killed_connection_inside_a_savepoint_runs_every_levels_on_rollback<D: TestDb>() {
    let (db, mut conn) = setup::<D>();
    let mut killer = D::plain(&db);
    let id = D::session_id(&mut conn);
    let killed = D::KILLED;
    let log = Log::new();
    let result = catch_unwind(AssertUnwindSafe(|| {
        conn.transaction(|c| {
            D::insert(c, 1)?;
            c.on_commit(log.hook("outer committed"));
            c.on_rollback(log.hook("outer rolled back"));
            let inner = c.transaction(|c| {
                c.on_commit(log.hook("savepoint committed"));
                c.on_rollback(log.hook("savepoint rolled back"));
                D::kill(&mut killer, id);
                let _ = D::insert(c, 2); // fails: the session is gone; swallowed
                Ok::<_, Error>(())
            });
            assert!(inner.is_err(), "RELEASE on a {killed} returned Ok");
            Ok::<_, Error>(())
        })
    }))
    .unwrap_or_else(|p| panic!("the wrapper panicked: {}", panic_text(&*p)));
    assert!(result.is_err(), "COMMIT on a {killed} returned Ok");
    assert_eq!(log.take(), ["outer rolled back", "savepoint rolled back"]);
    assert!(!conn.in_transaction());
    #[cfg(feature = "r2d2")]
    assert!(diesel::r2d2::R2D2Connection::is_broken(&mut conn));
    assert!(
        <HookedConnection<D> as Connection>::TransactionManager::is_broken_transaction_manager(
            &mut conn
        )
    );
    conn.on_commit(log.hook("late on_commit"));
    conn.on_rollback(log.hook("late on_rollback"));
    assert_eq!(log.take(), ["late on_rollback"]);
    assert_eq!(D::ids(&mut D::plain(&db)), Vec::<i32>::new());
}

pub fn killed_connection_inside_a_savepoint_leaves_no_transaction_open<D: TestDb>() {
    // Rule 9: on a lost connection every level is discarded, and once the
    // outermost `transaction()` has returned no user transaction is open.
    // Diesel's MySQL manager keeps depth 2 after the failed RELEASE; the
    // wrapper's `in_transaction()` must not report that stale depth, its own
    // levels are 0.
    let db = D::db();
    let mut conn = D::conn(&db);
    let mut killer = D::plain(&db);
    let id = D::session_id(&mut conn);
    let result = conn.transaction(|c| {
        let _ = c.transaction(|c| {
            D::kill(&mut killer, id);
            let _ = c.batch_execute("SELECT 1"); // fails: the session is gone
            Ok::<_, Error>(())
        });
        Ok::<_, Error>(())
    });
    assert!(result.is_err());
    assert!(
        !conn.in_transaction(),
        "no user transaction can be open after transaction() returned"
    );
}

pub fn panic_in_the_body_rolls_back_and_the_next_transaction_is_a_real_one<D: TestDb>() {
    // Rule 7: Diesel alone would leave the transaction open, and the next
    // `transaction()` would silently be a savepoint that never commits.
    let (db, mut conn) = setup::<D>();
    let log = Log::new();
    let message = expect_panic(|| {
        conn.transaction(|c| -> QueryResult<()> {
            D::insert(c, 1)?;
            c.on_commit(log.hook("never"));
            c.on_rollback(log.hook("rolled back"));
            panic!("boom in the body")
        })
    });
    assert_eq!(message, "boom in the body");
    assert_eq!(log.take(), ["rolled back"]);
    assert!(!conn.in_transaction());
    conn.transaction(|c| {
        D::insert(c, 2)?;
        c.on_commit(log.hook("next"));
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(log.take(), ["next"]);
    assert_eq!(
        D::ids(&mut D::plain(&db)),
        [2],
        "the next transaction really committed"
    );
}

// ---------------------------------------------------------------------------
// Rule 8: a transaction the wrapper did not open.
// ---------------------------------------------------------------------------

pub fn registering_in_a_transaction_begun_on_the_inner_connection_panics<D: TestDb>() {
    let db = D::db();
    let mut conn = D::conn(&db);
    let log = Log::new();
    type InnerTm<D> = <D as Connection>::TransactionManager;
    InnerTm::<D>::begin_transaction(conn.inner_mut()).unwrap();
    let message = expect_panic(|| conn.on_commit(log.hook("on_commit")));
    assert!(
        message.contains("did not open"),
        "the panic should say the wrapper did not open the transaction: {message}"
    );
    let message = expect_panic(|| conn.on_rollback(log.hook("on_rollback")));
    assert!(message.contains("did not open"), "{message}");
    InnerTm::<D>::rollback_transaction(conn.inner_mut()).unwrap();
    assert!(log.take().is_empty());
    conn.transaction(|c| {
        c.on_commit(log.hook("own transaction"));
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(log.take(), ["own transaction"]);
}

// ---------------------------------------------------------------------------
// Rules 10 and 11: test transactions, drop.
// ---------------------------------------------------------------------------

pub fn test_transaction_is_the_baseline_and_its_end_fires_nothing<D: TestDb>() {
    // The table is created first: on MySQL, DDL would commit a test
    // transaction.
    let (db, mut conn) = setup::<D>();
    let log = Log::new();
    conn.test_transaction(|c| {
        assert!(!c.in_transaction(), "a test transaction alone is d == 0");
        c.on_commit(log.hook("at once"));
        assert_eq!(log.take(), ["at once"], "rule 2 applies at the baseline");
        c.on_rollback(log.hook("dropped at d == 0"));
        c.transaction(|c| {
            assert!(c.in_transaction());
            D::insert(c, 1)?;
            c.on_commit(log.hook("user commit"));
            c.on_rollback(log.hook("never"));
            Ok::<_, Error>(())
        })?;
        assert_eq!(log.take(), ["user commit"]);
        let rolled_back = c.transaction(|c| {
            D::insert(c, 2)?;
            c.on_commit(log.hook("never"));
            c.on_rollback(log.hook("user rollback"));
            Err::<(), _>(Error::RollbackTransaction)
        });
        assert!(rolled_back.is_err());
        assert_eq!(log.take(), ["user rollback"]);
        assert_eq!(D::ids(c), [1]);
        assert_eq!(
            D::ids(&mut D::plain(&db)),
            Vec::<i32>::new(),
            "the test transaction hides row 1"
        );
        Ok::<_, Error>(())
    });
    assert_eq!(
        log.take(),
        Vec::<String>::new(),
        "nothing fires when the test transaction ends"
    );
    assert!(!conn.in_transaction());
    assert_eq!(
        D::ids(&mut conn),
        Vec::<i32>::new(),
        "the test transaction rolled back"
    );
    // Baseline gone: the next transaction is a real one.
    conn.transaction(|c| {
        D::insert(c, 3)?;
        c.on_commit(log.hook("real commit"));
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(log.take(), ["real commit"]);
    assert_eq!(D::ids(&mut D::plain(&db)), [3]);
}

pub fn begin_test_transaction_is_the_baseline_and_drop_runs_only_on_rollback<D: TestDb>() {
    let (db, mut conn) = setup::<D>();
    let log = Log::new();
    conn.begin_test_transaction().unwrap();
    assert!(!conn.in_transaction());
    conn.transaction(|c| {
        D::insert(c, 1)?;
        c.on_commit(log.hook("user commit"));
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(log.take(), ["user commit"]);
    // A user level left open when the connection is dropped (rule 10).
    <HookedConnection<D> as Connection>::TransactionManager::begin_transaction(&mut conn).unwrap();
    D::insert(&mut conn, 2).unwrap();
    conn.on_commit(log.hook("never"));
    conn.on_rollback(log.hook("dropped mid-transaction"));
    assert!(conn.in_transaction());
    drop(conn);
    assert_eq!(log.take(), ["dropped mid-transaction"]);
    assert_eq!(D::ids(&mut D::plain(&db)), Vec::<i32>::new());
}

/// `TransactionHooks` is usable generically on a server backend's wrapper.
pub fn transaction_hooks_trait_registers_through_the_wrapper<D: TestDb>() {
    fn notify<T: TransactionHooks>(conn: &mut T, log: &Log) {
        conn.on_commit(log.hook("generic on_commit"));
        conn.on_rollback(log.hook("generic on_rollback"));
    }
    let db = D::db();
    let mut conn = D::conn(&db);
    let log = Log::new();
    conn.transaction(|c| {
        notify(c, &log);
        Ok::<_, Error>(())
    })
    .unwrap();
    let _ = conn.transaction(|c| {
        notify(c, &log);
        Err::<(), _>(Error::RollbackTransaction)
    });
    assert_eq!(log.take(), ["generic on_commit", "generic on_rollback"]);
}
