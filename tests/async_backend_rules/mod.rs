//! The async wrapper's rules that read the same on PostgreSQL and on
//! MySQL/MariaDB, written once, generic over [`AsyncTestDb`] (diesel-async's
//! server connection type), and stamped out as `#[tokio::test]`s in
//! tests/async_postgres.rs and tests/async_mysql.rs by
//! [`async_rule_tests!`]: each test still runs under its backend's binary,
//! and fails (never skips) with that backend's "how to start the database"
//! message when its server is missing. What only one backend does stays in
//! that backend's file.
//!
//! Every generic test here must be listed in [`async_rule_tests!`]: one that
//! is not is never called, and `-D warnings` (dead code) says so.

use std::future::Future;
use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error};
use diesel::QueryResult;
use diesel_async::pooled_connection::PoolableConnection;
use diesel_async::{AsyncConnection, SimpleAsyncConnection};
use diesel_on_commit::AsyncHookedConnection;

use crate::common::async_conn::{later, wait_for};
use crate::common::Log;

diesel::table! {
    items (id) {
        id -> Integer,
        name -> Text,
    }
}

/// The wrapped connection of backend `D`.
pub type Conn<D> = AsyncHookedConnection<D>;

/// What the shared tests need of a server backend: its own database for a
/// test, connections to it, its dialect, and a way to kill a session.
pub trait AsyncTestDb: AsyncConnection + PoolableConnection + Send + 'static {
    /// A database (or schema) of one test's own; dropped at the test's end.
    type Db: Send + Sync;
    /// `CREATE TABLE items (id, name)` in this dialect.
    const CREATE_ITEMS: &'static str;
    /// A statement that takes about a second.
    const SLEEP_1S: &'static str;
    /// What a killed session is called in assertion messages.
    const KILLED: &'static str;

    /// A fresh database; fails with how to start the server when it is
    /// missing.
    fn db() -> Self::Db;
    /// A wrapped connection to `db`.
    fn conn(db: &Self::Db) -> impl Future<Output = Conn<Self>> + Send;
    /// The server's id of `conn`'s session.
    fn session_id(conn: &mut Conn<Self>) -> impl Future<Output = i64> + Send;
    /// Kills session `id` from `killer` and waits until it is gone.
    fn kill(killer: &mut Conn<Self>, id: i64) -> impl Future<Output = ()> + Send;
    /// Inserts item `id`.
    fn insert(conn: &mut Conn<Self>, id: i32) -> impl Future<Output = QueryResult<usize>> + Send;
    /// The ids in `items`, in order.
    fn ids(conn: &mut Conn<Self>) -> impl Future<Output = Vec<i32>> + Send;
    /// The `n` of a query `SELECT … AS n` that returns one BIGINT.
    fn count(conn: &mut Conn<Self>, sql: &str) -> impl Future<Output = QueryResult<i64>> + Send;
}

/// `#[tokio::test] async fn rule() { async_backend_rules::rule::<$db>().await }`
/// for every rule below.
macro_rules! async_rule_tests {
    ($db:ty) => {
        $crate::async_backend_rules::async_rule_tests!(@stamp $db:
            commit_awaits_sync_and_async_hooks_in_registration_order_after_commit,
            rollback_discards_on_commit_hooks_and_awaits_on_rollback_hooks_in_order,
            savepoint_release_merges_hooks_and_savepoint_rollback_discards_them,
            savepoint_rolled_back_by_a_statement_error_discards_its_hooks_and_the_transaction_goes_on,
            before_commit_awaits_a_query_inside_the_transaction_and_an_err_vetoes,
            killed_connection_fails_the_next_statement_runs_on_rollback_and_reports_broken,
            killed_connection_fails_the_commit_and_no_on_commit_hook_ever_runs,
            transaction_future_dropped_mid_body_commits_nothing_and_hands_on_rollback_to_a_task,
            transaction_future_dropped_with_a_statement_in_flight_commits_nothing_and_hands_on_rollback_to_a_task,
            test_transaction_is_the_baseline_and_its_end_fires_nothing,
        );
    };
    (@stamp $db:ty: $($rule:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $rule() {
                $crate::async_backend_rules::$rule::<$db>().await
            }
        )*
    };
}
pub(crate) use async_rule_tests;

/// The kind and message of a database error, to compare errors.
pub fn kind_and_message(error: &Error) -> (DatabaseErrorKind, String) {
    match error {
        Error::DatabaseError(kind, info) => (*kind, info.message().to_owned()),
        other => panic!("expected a database error, got {other:?}"),
    }
}

/// What a pool's recycle check sees.
pub fn is_broken<D: AsyncTestDb>(conn: &mut Conn<D>) -> bool {
    PoolableConnection::is_broken(conn)
}

/// A fresh database with an `items` table, and a wrapped connection to it.
async fn setup<D: AsyncTestDb>() -> (D::Db, Conn<D>) {
    let db = D::db();
    let mut conn = D::conn(&db).await;
    conn.batch_execute(D::CREATE_ITEMS).await.unwrap();
    (db, conn)
}

/// The committed rows, seen from a session of its own.
async fn committed<D: AsyncTestDb>(db: &D::Db) -> Vec<i32> {
    D::ids(&mut D::conn(db).await).await
}

// ---------------------------------------------------------------------------
// Rules 1, 3, 4, 5.4, 13: commit, rollback, savepoints on a real server.
// ---------------------------------------------------------------------------

pub async fn commit_awaits_sync_and_async_hooks_in_registration_order_after_commit<
    D: AsyncTestDb,
>() {
    let (db, mut conn) = setup::<D>().await;
    let log = Log::new();
    let l = log.clone();
    let mut observer = D::conn(&db).await;
    conn.transaction::<_, Error, _>(async |c| {
        D::insert(c, 1).await?;
        c.on_commit(l.hook("sync 1"));
        // Runs after COMMIT: another session already sees the row.
        let l2 = l.clone();
        c.on_commit_async(async move {
            let seen = D::ids(&mut observer).await;
            l2.push(format!("async 2: observer sees {seen:?}"));
        });
        let l3 = l.clone();
        c.on_commit_with(async move |c: &mut Conn<D>| -> QueryResult<()> {
            l3.push(format!("with 3: in_transaction = {}", c.in_transaction()));
            // A hook that opens a transaction gets a fresh one whose hooks
            // run at its own commit, before the next hook (depth first).
            let l4 = l3.clone();
            c.transaction::<_, Error, _>(async move |c| {
                D::insert(c, 2).await?;
                c.on_commit_async(later(&l4, "hook's own transaction"));
                Ok(())
            })
            .await?;
            l3.push("with 3: end");
            Ok(())
        });
        c.on_commit_robust(l.hook("robust 4"));
        c.on_commit_async(later(&l, "async 5"));
        assert!(l.get().is_empty(), "nothing runs before COMMIT");
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        log.take(),
        [
            "sync 1",
            "async 2: observer sees [1]",
            "with 3: in_transaction = false",
            "hook's own transaction",
            "with 3: end",
            "robust 4",
            "async 5",
        ]
    );
    assert!(!conn.in_transaction());
    assert_eq!(committed::<D>(&db).await, [1, 2]);
}

pub async fn rollback_discards_on_commit_hooks_and_awaits_on_rollback_hooks_in_order<
    D: AsyncTestDb,
>() {
    let (db, mut conn) = setup::<D>().await;
    let log = Log::new();
    let l = log.clone();
    let result = conn
        .transaction::<(), Error, _>(async |c| {
            D::insert(c, 1).await?;
            c.on_commit(l.hook("never"));
            c.on_rollback(l.hook("rolled back 1"));
            c.on_commit_async(later(&l, "never async"));
            c.on_rollback_async(later(&l, "rolled back 2"));
            c.on_rollback(l.hook("rolled back 3"));
            Err(Error::RollbackTransaction)
        })
        .await;
    assert!(
        matches!(result, Err(Error::RollbackTransaction)),
        "{result:?}"
    );
    assert_eq!(
        log.take(),
        ["rolled back 1", "rolled back 2", "rolled back 3"],
        "on_rollback hooks are awaited before transaction() returns"
    );
    // A statement error propagated with `?` is a rollback too.
    D::insert(&mut conn, 5).await.unwrap();
    let l = log.clone();
    let result = conn
        .transaction::<(), Error, _>(async |c| {
            c.on_commit(l.hook("never"));
            c.on_rollback_async(later(&l, "duplicate rolled back"));
            D::insert(c, 6).await?;
            D::insert(c, 5).await?; // duplicate key, propagated
            Ok(())
        })
        .await;
    assert_eq!(
        kind_and_message(&result.unwrap_err()).0,
        DatabaseErrorKind::UniqueViolation
    );
    assert_eq!(log.take(), ["duplicate rolled back"]);
    assert!(!conn.in_transaction());
    assert_eq!(committed::<D>(&db).await, [5]);
}

pub async fn savepoint_release_merges_hooks_and_savepoint_rollback_discards_them<D: AsyncTestDb>() {
    let (db, mut conn) = setup::<D>().await;
    let log = Log::new();
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |c| {
        D::insert(c, 1).await?;
        c.on_commit(l.hook("outer, before"));
        c.on_rollback(l.hook("outer rolled back"));
        let l2 = l.clone();
        c.transaction::<_, Error, _>(async move |c| {
            D::insert(c, 2).await?;
            c.on_commit_async(later(&l2, "released savepoint"));
            c.on_rollback(l2.hook("never: released"));
            let l3 = l2.clone();
            c.transaction::<_, Error, _>(async move |c| {
                c.on_commit(l3.hook("nested released savepoint"));
                Ok(())
            })
            .await
        })
        .await?;
        assert!(l.get().is_empty(), "a RELEASE SAVEPOINT ran hooks");
        let l2 = l.clone();
        let inner = c
            .transaction::<(), Error, _>(async move |c| {
                D::insert(c, 3).await?;
                c.on_commit(l2.hook("never: savepoint rolled back"));
                c.on_rollback(l2.hook("savepoint rolled back 1"));
                let l3 = l2.clone();
                c.transaction::<_, Error, _>(async move |c| {
                    c.on_commit_async(later(&l3, "never: released into a rolled-back savepoint"));
                    c.on_rollback_async(later(&l3, "savepoint rolled back 2"));
                    Ok(())
                })
                .await?;
                Err(Error::RollbackTransaction)
            })
            .await;
        assert!(
            matches!(inner, Err(Error::RollbackTransaction)),
            "{inner:?}"
        );
        assert_eq!(
            l.take(),
            ["savepoint rolled back 1", "savepoint rolled back 2"],
            "on_rollback hooks of the savepoint (and of one released into it) run at its rollback"
        );
        assert_eq!(
            D::ids(c).await,
            [1, 2],
            "ROLLBACK TO SAVEPOINT undid its insert"
        );
        // A statement error propagated out of a savepoint rolls it back too.
        let l2 = l.clone();
        let failed = c
            .transaction::<usize, Error, _>(async move |c| {
                c.on_commit(l2.hook("never: failed savepoint"));
                c.on_rollback_async(later(&l2, "failed savepoint rolled back"));
                D::insert(c, 4).await?;
                D::insert(c, 1).await // duplicate key
            })
            .await;
        assert_eq!(
            kind_and_message(&failed.unwrap_err()).0,
            DatabaseErrorKind::UniqueViolation
        );
        assert_eq!(l.take(), ["failed savepoint rolled back"]);
        c.on_commit_async(later(&l, "outer, after"));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        log.take(),
        [
            "outer, before",
            "released savepoint",
            "nested released savepoint",
            "outer, after"
        ]
    );
    assert_eq!(committed::<D>(&db).await, [1, 2]);
}

pub async fn savepoint_rolled_back_by_a_statement_error_discards_its_hooks_and_the_transaction_goes_on<
    D: AsyncTestDb,
>() {
    // PostgreSQL aborts the whole transaction on a statement error, and
    // rolling the savepoint back (the error propagated with `?`) repairs
    // it; MySQL undoes only the statement. Either way the savepoint's hooks
    // are discarded and the enclosing transaction commits.
    let (db, mut conn) = setup::<D>().await;
    let log = Log::new();
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |c| {
        D::insert(c, 1).await?;
        c.on_commit(l.hook("outer"));
        let l2 = l.clone();
        let inner = c
            .transaction::<usize, Error, _>(async move |c| {
                c.on_commit(l2.hook("never"));
                c.on_rollback_async(later(&l2, "savepoint rolled back"));
                D::insert(c, 1).await // duplicate key
            })
            .await;
        assert_eq!(
            kind_and_message(&inner.unwrap_err()).0,
            DatabaseErrorKind::UniqueViolation
        );
        assert_eq!(l.take(), ["savepoint rolled back"]);
        D::insert(c, 2).await?; // usable again
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(log.take(), ["outer"]);
    assert_eq!(committed::<D>(&db).await, [1, 2]);
}

// ---------------------------------------------------------------------------
// Rule 5.1-5.2: before_commit awaits queries and vetoes.
// ---------------------------------------------------------------------------

pub async fn before_commit_awaits_a_query_inside_the_transaction_and_an_err_vetoes<
    D: AsyncTestDb,
>() {
    let (db, mut conn) = setup::<D>().await;
    let log = Log::new();

    // A before_commit hook that awaits queries inside the transaction; what
    // it writes commits with the rest.
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |c| {
        D::insert(c, 1).await?;
        let l2 = l.clone();
        c.before_commit(async move |c: &mut Conn<D>| {
            assert!(
                c.in_transaction(),
                "before_commit runs inside the transaction"
            );
            let n = D::count(c, "SELECT COUNT(*) AS n FROM items").await?;
            D::insert(c, 100 + n as i32).await?;
            l2.push(format!("before_commit saw {n} row"));
            Ok(())
        });
        c.on_commit_async(later(&l, "committed"));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(log.take(), ["before_commit saw 1 row", "committed"]);
    assert_eq!(committed::<D>(&db).await, [1, 101]);

    // A before_commit hook whose query fails: its error vetoes the commit,
    // the hooks after it do not run.
    let l = log.clone();
    let result = conn
        .transaction::<_, Error, _>(async |c| {
            c.on_commit(l.hook("never"));
            c.on_rollback_async(later(&l, "rolled back"));
            D::insert(c, 2).await?;
            c.before_commit(async |c: &mut Conn<D>| D::insert(c, 1).await.map(drop)); // duplicate key
            let l2 = l.clone();
            c.before_commit(async move |_: &mut Conn<D>| {
                l2.push("never: second before_commit");
                Ok(())
            });
            Ok(())
        })
        .await;
    let error = result.expect_err("the before_commit hook's error must abort the commit");
    assert_eq!(
        kind_and_message(&error).0,
        DatabaseErrorKind::UniqueViolation
    );
    assert_eq!(log.take(), ["rolled back"]);
    assert!(!conn.in_transaction());
    assert_eq!(committed::<D>(&db).await, [1, 101], "row 2 was rolled back");
}

// ---------------------------------------------------------------------------
// Rule 9: the session is killed with a transaction open.
// ---------------------------------------------------------------------------

pub async fn killed_connection_fails_the_next_statement_runs_on_rollback_and_reports_broken<
    D: AsyncTestDb,
>() {
    let (db, mut conn) = setup::<D>().await;
    let mut killer = D::conn(&db).await;
    let id = D::session_id(&mut conn).await;
    let killed = D::KILLED;
    let log = Log::new();
    let l = log.clone();
    let result = conn
        .transaction::<(), Error, _>(async |c| {
            D::insert(c, 1).await?;
            c.on_commit(l.hook("never"));
            c.on_commit_async(later(&l, "never async"));
            c.on_rollback(l.hook("rolled back"));
            c.on_rollback_async(later(&l, "rolled back async"));
            D::kill(&mut killer, id).await;
            D::insert(c, 2).await?; // fails: the session is gone
            Ok(())
        })
        .await;
    assert!(result.is_err(), "a statement on a {killed} returned Ok");
    assert_eq!(log.take(), ["rolled back", "rolled back async"]);
    assert!(!conn.in_transaction());
    assert!(
        is_broken::<D>(&mut conn),
        "a pool must not reuse this connection"
    );
    // Rule 9: on a broken connection an on_commit hook is dropped, an
    // on_rollback hook runs (the async wrapper: at its next step).
    conn.on_commit(log.hook("late on_commit"));
    conn.on_rollback(log.hook("late on_rollback"));
    let again = conn
        .transaction::<_, Error, _>(async |c| {
            c.on_commit(l.hook("never again"));
            Ok(())
        })
        .await;
    assert!(again.is_err(), "a transaction on a {killed} returned Ok");
    assert_eq!(log.take(), ["late on_rollback"]);
    assert_eq!(committed::<D>(&db).await, Vec::<i32>::new());
}

pub async fn killed_connection_fails_the_commit_and_no_on_commit_hook_ever_runs<D: AsyncTestDb>() {
    let (db, mut conn) = setup::<D>().await;
    let mut killer = D::conn(&db).await;
    let id = D::session_id(&mut conn).await;
    let killed = D::KILLED;
    let log = Log::new();
    let l = log.clone();
    let result = conn
        .transaction::<_, Error, _>(async |c| {
            D::insert(c, 1).await?;
            c.on_commit(l.hook("outer committed"));
            c.on_rollback(l.hook("outer rolled back"));
            let l2 = l.clone();
            c.transaction::<_, Error, _>(async |c| {
                c.on_commit_async(later(&l2, "savepoint committed"));
                c.on_rollback_async(later(&l2, "savepoint rolled back"));
                Ok(())
            })
            .await?;
            D::kill(&mut killer, id).await;
            Ok(()) // the next step is COMMIT
        })
        .await;
    assert!(result.is_err(), "COMMIT on a {killed} returned Ok");
    assert_eq!(log.take(), ["outer rolled back", "savepoint rolled back"]);
    assert!(!conn.in_transaction());
    assert!(
        is_broken::<D>(&mut conn),
        "a pool must not reuse this connection (COMMIT failed with {result:?})"
    );
    drop(conn);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        log.take().is_empty(),
        "a hook ran when the wrapper was dropped"
    );
    assert_eq!(committed::<D>(&db).await, Vec::<i32>::new());
}

// ---------------------------------------------------------------------------
// Cancellation: the caller's future dropped mid-body.
// ---------------------------------------------------------------------------

pub async fn transaction_future_dropped_mid_body_commits_nothing_and_hands_on_rollback_to_a_task<
    D: AsyncTestDb,
>() {
    let (db, mut conn) = setup::<D>().await;
    let log = Log::new();
    let l = log.clone();
    let timed_out = tokio::time::timeout(
        Duration::from_millis(300),
        conn.transaction::<(), Error, _>(async |c| {
            D::insert(c, 1).await?;
            c.on_commit(l.hook("never"));
            c.on_commit_async(later(&l, "never async"));
            c.on_rollback(l.hook("rolled back"));
            c.on_rollback_async(later(&l, "rolled back async"));
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        }),
    )
    .await;
    assert!(
        timed_out.is_err(),
        "the transaction finished: {timed_out:?}"
    );
    assert!(log.get().is_empty(), "a hook ran inside Drop");
    assert!(
        is_broken::<D>(&mut conn),
        "a connection whose transaction was abandoned must not be reused"
    );
    assert!(!conn.in_transaction());
    assert_eq!(
        wait_for(&log, 2).await,
        ["rolled back", "rolled back async"],
        "the on_rollback hooks run on a spawned task"
    );
    assert_eq!(committed::<D>(&db).await, Vec::<i32>::new());
    drop(conn);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(log.take().len(), 2, "a hook ran twice");
    assert_eq!(committed::<D>(&db).await, Vec::<i32>::new());
}

pub async fn transaction_future_dropped_with_a_statement_in_flight_commits_nothing_and_hands_on_rollback_to_a_task<
    D: AsyncTestDb,
>() {
    let (db, mut conn) = setup::<D>().await;
    let log = Log::new();
    let l = log.clone();
    let timed_out = tokio::time::timeout(
        Duration::from_millis(300),
        conn.transaction::<(), Error, _>(async |c| {
            D::insert(c, 1).await?;
            c.on_commit(l.hook("never"));
            c.on_commit_async(later(&l, "never async"));
            c.on_rollback(l.hook("rolled back"));
            c.on_rollback_async(later(&l, "rolled back async"));
            // Dropped while a statement is in flight.
            c.batch_execute(D::SLEEP_1S).await?;
            Ok(())
        }),
    )
    .await;
    assert!(
        timed_out.is_err(),
        "the transaction finished: {timed_out:?}"
    );
    assert!(log.get().is_empty(), "a hook ran inside Drop");
    assert!(
        is_broken::<D>(&mut conn),
        "a connection whose transaction was abandoned must not be reused"
    );
    assert_eq!(
        wait_for(&log, 2).await,
        ["rolled back", "rolled back async"],
        "the on_rollback hooks run on a spawned task"
    );
    drop(conn);
    assert_eq!(committed::<D>(&db).await, Vec::<i32>::new());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(log.take().len(), 2, "a hook ran twice");
}

// ---------------------------------------------------------------------------
// Rule 11: test transactions.
// ---------------------------------------------------------------------------

pub async fn test_transaction_is_the_baseline_and_its_end_fires_nothing<D: AsyncTestDb>() {
    // The table is created first: on MySQL, DDL would commit a test
    // transaction.
    let (db, mut conn) = setup::<D>().await;
    let log = Log::new();
    let l = log.clone();
    conn.test_transaction::<_, Error, _>(async |c| {
        assert!(!c.in_transaction(), "a test transaction alone is d == 0");
        c.on_commit(l.hook("at once"));
        assert_eq!(l.take(), ["at once"], "rule 2 applies at the baseline");
        c.on_rollback(l.hook("dropped at d == 0"));
        let l2 = l.clone();
        c.transaction::<_, Error, _>(async move |c| {
            assert!(c.in_transaction());
            D::insert(c, 1).await?;
            c.on_commit_async(later(&l2, "user commit"));
            c.on_rollback(l2.hook("never"));
            Ok(())
        })
        .await?;
        assert_eq!(l.take(), ["user commit"]);
        let l2 = l.clone();
        let rolled_back = c
            .transaction::<(), Error, _>(async move |c| {
                D::insert(c, 2).await?;
                c.on_commit(l2.hook("never"));
                c.on_rollback_async(later(&l2, "user rollback"));
                Err(Error::RollbackTransaction)
            })
            .await;
        assert!(rolled_back.is_err());
        assert_eq!(l.take(), ["user rollback"]);
        assert_eq!(D::ids(c).await, [1]);
        assert_eq!(
            committed::<D>(&db).await,
            Vec::<i32>::new(),
            "the test transaction hides row 1"
        );
        Ok(())
    })
    .await;
    assert_eq!(
        log.take(),
        Vec::<String>::new(),
        "nothing fires when the test transaction ends"
    );
    assert!(!conn.in_transaction());
    assert!(!is_broken::<D>(&mut conn));
    assert_eq!(D::ids(&mut conn).await, Vec::<i32>::new(), "rolled back");
    // Baseline gone: the next transaction is a real one.
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |c| {
        D::insert(c, 3).await?;
        c.on_commit(l.hook("real commit"));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(log.take(), ["real commit"]);
    assert_eq!(committed::<D>(&db).await, [3]);
}
