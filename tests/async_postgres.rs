//! PostgreSQL through the async wrapper (`AsyncHookedConnection<AsyncPgConnection>`,
//! diesel-async 0.9): the rules of SPEC.md where backends differ, on a real
//! server. The rules themselves are covered on SQLite in tests/async_sqlite.rs;
//! pools in tests/async_pools.rs.
//!
//! Needs `POSTGRES_DATABASE_URL` (see `tests/common/mod.rs`); `bash .ci/run`
//! starts the server and sets it. Each test works in a schema of its own
//! (`PgSchema`; tokio-postgres honours its URL's `options=-csearch_path=..`).
#![cfg(all(feature = "async", feature = "postgres"))]

mod common;

use std::time::Duration;

use common::async_conn::{async_pg_in, later, wait_for};
use common::{Log, PgSchema};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error};
use diesel_async::pooled_connection::PoolableConnection;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_on_commit::AsyncHookedConnection;
use tokio::sync::Barrier;

type Conn = AsyncHookedConnection<AsyncPgConnection>;

diesel::table! {
    items (id) {
        id -> Int4,
        name -> Text,
    }
}

const CREATE_ITEMS: &str = "CREATE TABLE items (id INT4 PRIMARY KEY, name TEXT NOT NULL)";

async fn setup() -> (PgSchema, Conn) {
    let db = PgSchema::new();
    let mut conn = async_pg_in(&db).await;
    conn.batch_execute(CREATE_ITEMS).await.unwrap();
    (db, conn)
}

async fn insert(conn: &mut Conn, id: i32) -> QueryResult<usize> {
    diesel::insert_into(items::table)
        .values((items::id.eq(id), items::name.eq(format!("item {id}"))))
        .execute(conn)
        .await
}

async fn ids(conn: &mut Conn) -> Vec<i32> {
    items::table
        .select(items::id)
        .order(items::id)
        .load(conn)
        .await
        .expect("SELECT id FROM items")
}

/// The committed rows, seen from a session of its own.
async fn committed(db: &PgSchema) -> Vec<i32> {
    ids(&mut async_pg_in(db).await).await
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn count(conn: &mut Conn, sql: &str) -> QueryResult<i64> {
    diesel::sql_query(sql)
        .get_result::<N>(conn)
        .await
        .map(|r| r.n)
}

async fn backend_pid(conn: &mut Conn) -> i64 {
    count(conn, "SELECT pg_backend_pid()::int8 AS n")
        .await
        .expect("SELECT pg_backend_pid()")
}

/// Terminates backend `pid` from another session and waits until it is gone.
async fn terminate(killer: &mut Conn, pid: i64) {
    let gone = count(
        killer,
        &format!(
            "SELECT count(*) AS n FROM (SELECT pg_terminate_backend({pid}, 20000) AS t) s WHERE t"
        ),
    )
    .await
    .expect("pg_terminate_backend");
    assert_eq!(gone, 1, "backend {pid} did not terminate within 20s");
}

/// The kind and message of a database error, to compare errors.
fn kind_and_message(error: &Error) -> (DatabaseErrorKind, String) {
    match error {
        Error::DatabaseError(kind, info) => (*kind, info.message().to_owned()),
        other => panic!("expected a database error, got {other:?}"),
    }
}

fn is_broken(conn: &mut Conn) -> bool {
    PoolableConnection::is_broken(conn)
}

// ---------------------------------------------------------------------------
// Rules 1, 3, 4, 5.4, 13: commit, rollback, savepoints on a real server.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn pg_commit_awaits_sync_and_async_hooks_in_registration_order_after_commit() {
    let (db, mut conn) = setup().await;
    let log = Log::new();
    let l = log.clone();
    let mut observer = async_pg_in(&db).await;
    conn.transaction::<_, Error, _>(async |c| {
        insert(c, 1).await?;
        c.on_commit(l.hook("sync 1"));
        // Runs after COMMIT: another session already sees the row.
        let l2 = l.clone();
        c.on_commit_async(async move {
            let seen = ids(&mut observer).await;
            l2.push(format!("async 2: observer sees {seen:?}"));
        });
        let l3 = l.clone();
        c.on_commit_with(async move |c: &mut Conn| -> QueryResult<()> {
            l3.push(format!("with 3: in_transaction = {}", c.in_transaction()));
            // A hook that opens a transaction gets a fresh one whose hooks
            // run at its own commit, before the next hook (depth first).
            let l4 = l3.clone();
            c.transaction::<_, Error, _>(async move |c| {
                insert(c, 2).await?;
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
    assert_eq!(committed(&db).await, [1, 2]);
}

#[tokio::test]
async fn pg_rollback_discards_on_commit_hooks_and_awaits_on_rollback_hooks_in_order() {
    let (db, mut conn) = setup().await;
    let log = Log::new();
    let l = log.clone();
    let result = conn
        .transaction::<(), Error, _>(async |c| {
            insert(c, 1).await?;
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
    insert(&mut conn, 5).await.unwrap();
    let l = log.clone();
    let result = conn
        .transaction::<(), Error, _>(async |c| {
            c.on_commit(l.hook("never"));
            c.on_rollback_async(later(&l, "duplicate rolled back"));
            insert(c, 6).await?;
            insert(c, 5).await?; // duplicate key
            Ok(())
        })
        .await;
    assert_eq!(
        kind_and_message(&result.unwrap_err()).0,
        DatabaseErrorKind::UniqueViolation
    );
    assert_eq!(log.take(), ["duplicate rolled back"]);
    assert!(!conn.in_transaction());
    assert_eq!(committed(&db).await, [5]);
}

#[tokio::test]
async fn pg_savepoint_release_merges_hooks_and_savepoint_rollback_discards_them() {
    let (db, mut conn) = setup().await;
    let log = Log::new();
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |c| {
        insert(c, 1).await?;
        c.on_commit(l.hook("outer, before"));
        c.on_rollback(l.hook("outer rolled back"));
        let l2 = l.clone();
        c.transaction::<_, Error, _>(async move |c| {
            insert(c, 2).await?;
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
                insert(c, 3).await?;
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
            ids(c).await,
            [1, 2],
            "ROLLBACK TO SAVEPOINT undid its insert"
        );
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
    assert_eq!(committed(&db).await, [1, 2]);
}

#[tokio::test]
async fn pg_savepoint_rolled_back_by_a_statement_error_repairs_the_transaction() {
    // PostgreSQL aborts the whole transaction on a statement error; rolling
    // the savepoint back (the error propagated with `?`) repairs it.
    let (db, mut conn) = setup().await;
    let log = Log::new();
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |c| {
        insert(c, 1).await?;
        c.on_commit(l.hook("outer"));
        let l2 = l.clone();
        let inner = c
            .transaction::<usize, Error, _>(async move |c| {
                c.on_commit(l2.hook("never"));
                c.on_rollback_async(later(&l2, "savepoint rolled back"));
                insert(c, 1).await // duplicate key
            })
            .await;
        assert_eq!(
            kind_and_message(&inner.unwrap_err()).0,
            DatabaseErrorKind::UniqueViolation
        );
        assert_eq!(l.take(), ["savepoint rolled back"]);
        insert(c, 2).await?; // usable again
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(log.take(), ["outer"]);
    assert_eq!(committed(&db).await, [1, 2]);
}

// ---------------------------------------------------------------------------
// Rule 5.3: work the database aborted, and a COMMIT that fails.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn pg_swallowed_statement_error_fails_the_commit_with_the_same_kind_and_message() {
    // PostgreSQL answers COMMIT of an aborted transaction with ROLLBACK and
    // no error: transaction() must not return Ok, and no on_commit may run.
    let (db, mut conn) = setup().await;
    insert(&mut conn, 1).await.unwrap();
    let log = Log::new();
    let l = log.clone();
    let mut swallowed = None;
    let result = conn
        .transaction::<_, Error, _>(async |c| {
            c.on_commit(l.hook("committed"));
            c.on_commit_async(later(&l, "committed async"));
            c.on_rollback(l.hook("rolled back"));
            insert(c, 2).await?;
            swallowed = Some(insert(c, 1).await.expect_err("duplicate key"));
            Ok(())
        })
        .await;
    let swallowed = swallowed.unwrap();
    assert_eq!(
        kind_and_message(&swallowed).0,
        DatabaseErrorKind::UniqueViolation
    );
    assert_eq!(committed(&db).await, [1], "PostgreSQL did not commit row 2");
    assert_eq!(
        log.take(),
        ["rolled back"],
        "on_commit hooks ran for work that was not committed (result {result:?})"
    );
    let error = result.expect_err("transaction() returned Ok for work that was not committed");
    assert_eq!(kind_and_message(&error), kind_and_message(&swallowed));
    assert!(!conn.in_transaction());
    // The connection is usable afterwards.
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |c| {
        insert(c, 3).await?;
        c.on_commit(l.hook("next"));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(log.take(), ["next"]);
    assert_eq!(committed(&db).await, [1, 3]);
}

#[tokio::test]
async fn pg_swallowed_statement_error_in_a_savepoint_fails_its_release_and_the_outer_commit_goes_on(
) {
    let (db, mut conn) = setup().await;
    insert(&mut conn, 1).await.unwrap();
    let log = Log::new();
    let l = log.clone();
    let outcome = conn
        .transaction::<_, Error, _>(async |c| {
            insert(c, 2).await?;
            c.on_commit(l.hook("outer"));
            let l2 = l.clone();
            let mut swallowed = None;
            let inner = c
                .transaction::<_, Error, _>(async |c| {
                    c.on_commit(l2.hook("never: savepoint"));
                    c.on_rollback(l2.hook("savepoint rolled back"));
                    insert(c, 3).await?;
                    swallowed = Some(insert(c, 1).await.expect_err("duplicate key"));
                    Ok(())
                })
                .await;
            let error = inner.expect_err("a savepoint whose RELEASE fails returned Ok");
            assert_eq!(
                kind_and_message(&error),
                kind_and_message(&swallowed.unwrap()),
                "RELEASE of an aborted savepoint must report the error that aborted it"
            );
            assert_eq!(l.take(), ["savepoint rolled back"]);
            assert!(c.in_transaction());
            insert(c, 4).await?; // the savepoint's rollback repaired the transaction
            Ok(())
        })
        .await;
    outcome.unwrap();
    assert_eq!(log.take(), ["outer"]);
    assert_eq!(committed(&db).await, [1, 2, 4]);
}

const CREATE_DOCTORS: &str = "CREATE TABLE doctors (id INT4 PRIMARY KEY, on_call BOOL NOT NULL);
     INSERT INTO doctors VALUES (1, true), (2, true);";

async fn on_call(conn: &mut Conn) -> QueryResult<i64> {
    count(conn, "SELECT count(*) AS n FROM doctors WHERE on_call").await
}

async fn go_off_call(conn: &mut Conn, id: i32) -> QueryResult<usize> {
    diesel::sql_query("UPDATE doctors SET on_call = false WHERE id = $1")
        .bind::<diesel::sql_types::Integer, _>(id)
        .execute(conn)
        .await
}

#[tokio::test]
async fn pg_swallowed_serialization_failure_is_returned_as_serialization_failure() {
    // A statement fails with 40001 ("concurrent update"); the body swallows
    // it. The wrapper must still say SerializationFailure so callers retry.
    let db = PgSchema::new();
    let mut a = async_pg_in(&db).await;
    let mut other = async_pg_in(&db).await;
    a.batch_execute(CREATE_DOCTORS).await.unwrap();
    let log = Log::new();
    let l = log.clone();
    let mut swallowed = None;
    let result = a
        .transaction::<_, Error, _>(async |a| {
            a.batch_execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                .await?;
            a.on_commit(l.hook("committed"));
            a.on_commit_async(later(&l, "committed async"));
            a.on_rollback_async(later(&l, "rolled back"));
            assert_eq!(on_call(a).await?, 2); // the snapshot is taken
            go_off_call(&mut other, 1).await?; // autocommits after A's snapshot
            swallowed = Some(
                go_off_call(a, 1)
                    .await
                    .expect_err("a concurrent update under SERIALIZABLE"),
            );
            Ok(())
        })
        .await;
    let swallowed = kind_and_message(&swallowed.unwrap());
    assert_eq!(swallowed.0, DatabaseErrorKind::SerializationFailure);
    let error = result.expect_err("transaction() returned Ok for an aborted transaction");
    assert_eq!(kind_and_message(&error), swallowed);
    assert_eq!(log.take(), ["rolled back"]);
    assert!(!a.in_transaction());
}

/// One side of a write skew: checks that both doctors are on call, waits for
/// the other side to have checked too, takes doctor `me` off call, waits
/// for the other side to have written too, and commits.
async fn write_skew_side(
    conn: &mut Conn,
    me: i32,
    barrier: &Barrier,
    log: &Log,
) -> QueryResult<()> {
    conn.transaction::<_, Error, _>(async |c| {
        c.batch_execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            .await?;
        let l = log.clone();
        c.on_commit(move || l.push(format!("{me} committed")));
        c.on_commit_async(later(log, format!("{me} committed async")));
        let l = log.clone();
        c.on_rollback(move || l.push(format!("{me} rolled back")));
        let seen = on_call(c).await;
        barrier.wait().await;
        assert_eq!(seen?, 2);
        let wrote = go_off_call(c, me).await;
        barrier.wait().await;
        wrote?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn pg_write_skew_between_two_connections_fails_exactly_one_with_serialization_failure() {
    let db = PgSchema::new();
    let mut a = async_pg_in(&db).await;
    let mut b = async_pg_in(&db).await;
    a.batch_execute(CREATE_DOCTORS).await.unwrap();
    let barrier = Barrier::new(2);
    let (log_a, log_b) = (Log::new(), Log::new());
    let (ra, rb) = tokio::join!(
        write_skew_side(&mut a, 1, &barrier, &log_a),
        write_skew_side(&mut b, 2, &barrier, &log_b),
    );
    let ((loser, loser_log, loser_conn), winner_log) = match (&ra, &rb) {
        (Err(e), Ok(())) => ((e, log_a.take(), &mut a), log_b.take()),
        (Ok(()), Err(e)) => ((e, log_b.take(), &mut b), log_a.take()),
        other => panic!("expected exactly one serialization failure, got {other:?}"),
    };
    assert_eq!(
        kind_and_message(loser).0,
        DatabaseErrorKind::SerializationFailure,
        "{loser}"
    );
    assert_eq!(loser_log.len(), 1, "the loser's hooks: {loser_log:?}");
    assert!(loser_log[0].ends_with(" rolled back"), "{loser_log:?}");
    assert!(!loser_conn.in_transaction());
    assert_eq!(winner_log.len(), 2, "the winner's hooks: {winner_log:?}");
    assert!(winner_log[0].ends_with(" committed"), "{winner_log:?}");
    assert!(
        winner_log[1].ends_with(" committed async"),
        "{winner_log:?}"
    );
    assert_eq!(
        on_call(&mut async_pg_in(&db).await).await.unwrap(),
        1,
        "only the winner's update committed"
    );
}

#[tokio::test]
async fn pg_failed_commit_of_a_deferred_foreign_key_runs_on_rollback_and_returns_the_error() {
    let db = PgSchema::new();
    let mut conn = async_pg_in(&db).await;
    conn.batch_execute(
        "CREATE TABLE parents (id INT4 PRIMARY KEY);
         CREATE TABLE children (
             id INT4 PRIMARY KEY,
             parent_id INT4 NOT NULL REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED
         );",
    )
    .await
    .unwrap();
    let log = Log::new();
    let l = log.clone();
    let result = conn
        .transaction::<_, Error, _>(async |c| {
            c.on_commit(l.hook("outer committed"));
            c.on_commit_async(later(&l, "outer committed async"));
            c.on_rollback(l.hook("outer rolled back"));
            let l2 = l.clone();
            c.transaction::<_, Error, _>(async move |c| {
                c.on_commit_async(later(&l2, "savepoint committed"));
                c.on_rollback_async(later(&l2, "savepoint rolled back"));
                // No parent 42: only COMMIT checks the deferred constraint.
                c.batch_execute("INSERT INTO children VALUES (1, 42)").await
            })
            .await?;
            assert!(l.get().is_empty());
            Ok(())
        })
        .await;
    let error = result.expect_err("COMMIT must fail on the deferred foreign key");
    assert_eq!(
        kind_and_message(&error).0,
        DatabaseErrorKind::ForeignKeyViolation,
        "{error}"
    );
    assert_eq!(log.take(), ["outer rolled back", "savepoint rolled back"]);
    assert!(!conn.in_transaction());
    assert!(
        !is_broken(&mut conn),
        "a failed COMMIT does not break the connection"
    );
    let children = count(
        &mut async_pg_in(&db).await,
        "SELECT count(*) AS n FROM children",
    )
    .await
    .unwrap();
    assert_eq!(children, 0, "the child row was committed");
    // The connection is usable, and its next transaction fires normally.
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |c| {
        c.on_commit_async(later(&l, "next"));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(log.take(), ["next"]);
}

// ---------------------------------------------------------------------------
// Rule 5.1-5.2: before_commit awaits queries and vetoes.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn pg_before_commit_awaits_a_query_inside_the_transaction_and_an_err_vetoes() {
    let db = PgSchema::new();
    let mut conn = async_pg_in(&db).await;
    conn.batch_execute(
        "CREATE TABLE items (id INT4 PRIMARY KEY, name TEXT NOT NULL);
         CREATE TABLE parents (id INT4 PRIMARY KEY);
         CREATE TABLE children (
             id INT4 PRIMARY KEY,
             parent_id INT4 NOT NULL REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED
         );",
    )
    .await
    .unwrap();
    let log = Log::new();

    // A before_commit hook that awaits queries inside the transaction; what
    // it writes commits with the rest.
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |c| {
        insert(c, 1).await?;
        let l2 = l.clone();
        c.before_commit(async move |c: &mut Conn| {
            assert!(
                c.in_transaction(),
                "before_commit runs inside the transaction"
            );
            let n = count(c, "SELECT count(*) AS n FROM items").await?;
            insert(c, 100 + n as i32).await?;
            l2.push(format!("before_commit saw {n} row"));
            Ok(())
        });
        c.on_commit_async(later(&l, "committed"));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(log.take(), ["before_commit saw 1 row", "committed"]);
    assert_eq!(committed(&db).await, [1, 101]);

    // A before_commit hook that checks the deferred constraints early: its
    // error vetoes the commit, the hooks after it do not run.
    let l = log.clone();
    let result = conn
        .transaction::<_, Error, _>(async |c| {
            c.on_commit(l.hook("never"));
            c.on_rollback_async(later(&l, "rolled back"));
            insert(c, 2).await?;
            c.batch_execute("INSERT INTO children VALUES (1, 42)")
                .await?;
            c.before_commit(async |c: &mut Conn| {
                c.batch_execute("SET CONSTRAINTS ALL IMMEDIATE").await
            });
            let l2 = l.clone();
            c.before_commit(async move |_: &mut Conn| {
                l2.push("never: second before_commit");
                Ok(())
            });
            Ok(())
        })
        .await;
    let error = result.expect_err("the before_commit hook's error must abort the commit");
    assert_eq!(
        kind_and_message(&error).0,
        DatabaseErrorKind::ForeignKeyViolation,
        "{error}"
    );
    assert_eq!(log.take(), ["rolled back"]);
    assert!(!conn.in_transaction());
    assert_eq!(committed(&db).await, [1, 101]);
}

// ---------------------------------------------------------------------------
// Rule 9: the backend dies with a transaction open.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn pg_terminated_backend_fails_the_next_statement_runs_on_rollback_and_reports_broken() {
    let (db, mut conn) = setup().await;
    let mut killer = async_pg_in(&db).await;
    let pid = backend_pid(&mut conn).await;
    let log = Log::new();
    let l = log.clone();
    let result = conn
        .transaction::<(), Error, _>(async |c| {
            insert(c, 1).await?;
            c.on_commit(l.hook("never"));
            c.on_commit_async(later(&l, "never async"));
            c.on_rollback(l.hook("rolled back"));
            c.on_rollback_async(later(&l, "rolled back async"));
            terminate(&mut killer, pid).await;
            insert(c, 2).await?; // fails: the backend is gone
            Ok(())
        })
        .await;
    assert!(result.is_err(), "a statement on a dead backend returned Ok");
    assert_eq!(log.take(), ["rolled back", "rolled back async"]);
    assert!(!conn.in_transaction());
    assert!(
        is_broken(&mut conn),
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
    assert!(
        again.is_err(),
        "a transaction on a dead backend returned Ok"
    );
    assert_eq!(log.take(), ["late on_rollback"]);
    assert_eq!(committed(&db).await, Vec::<i32>::new());
}

#[tokio::test]
async fn pg_terminated_backend_fails_the_commit_and_no_on_commit_hook_ever_runs() {
    let (db, mut conn) = setup().await;
    let mut killer = async_pg_in(&db).await;
    let pid = backend_pid(&mut conn).await;
    let log = Log::new();
    let l = log.clone();
    let result = conn
        .transaction::<_, Error, _>(async |c| {
            insert(c, 1).await?;
            c.on_commit(l.hook("outer committed"));
            c.on_rollback(l.hook("outer rolled back"));
            let l2 = l.clone();
            c.transaction::<_, Error, _>(async |c| {
                c.on_commit_async(later(&l2, "savepoint committed"));
                c.on_rollback_async(later(&l2, "savepoint rolled back"));
                Ok(())
            })
            .await?;
            terminate(&mut killer, pid).await;
            Ok(()) // the next step is COMMIT
        })
        .await;
    assert!(result.is_err(), "COMMIT on a dead backend returned Ok");
    assert_eq!(log.take(), ["outer rolled back", "savepoint rolled back"]);
    assert!(!conn.in_transaction());
    assert!(
        is_broken(&mut conn),
        "a pool must not reuse this connection"
    );
    drop(conn);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        log.take().is_empty(),
        "a hook ran when the wrapper was dropped"
    );
    assert_eq!(committed(&db).await, Vec::<i32>::new());
}

// ---------------------------------------------------------------------------
// Cancellation: the caller's future dropped mid-body.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn pg_transaction_future_dropped_mid_body_commits_nothing_and_hands_on_rollback_to_a_task() {
    let (db, mut conn) = setup().await;
    let log = Log::new();
    let l = log.clone();
    let timed_out = tokio::time::timeout(
        Duration::from_millis(300),
        conn.transaction::<(), Error, _>(async |c| {
            insert(c, 1).await?;
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
        is_broken(&mut conn),
        "a connection whose transaction was abandoned must not be reused"
    );
    assert!(!conn.in_transaction());
    assert_eq!(
        wait_for(&log, 2).await,
        ["rolled back", "rolled back async"],
        "the on_rollback hooks run on a spawned task"
    );
    assert_eq!(committed(&db).await, Vec::<i32>::new());
    drop(conn);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(log.take().len(), 2, "a hook ran twice");
    assert_eq!(committed(&db).await, Vec::<i32>::new());
}

// ---------------------------------------------------------------------------
// Rule 11: test transactions.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn pg_test_transaction_is_the_baseline_and_its_end_fires_nothing() {
    let (db, mut conn) = setup().await;
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
            insert(c, 1).await?;
            c.on_commit_async(later(&l2, "user commit"));
            c.on_rollback(l2.hook("never"));
            Ok(())
        })
        .await?;
        assert_eq!(l.take(), ["user commit"]);
        let l2 = l.clone();
        let rolled_back = c
            .transaction::<(), Error, _>(async move |c| {
                insert(c, 2).await?;
                c.on_commit(l2.hook("never"));
                c.on_rollback_async(later(&l2, "user rollback"));
                Err(Error::RollbackTransaction)
            })
            .await;
        assert!(rolled_back.is_err());
        assert_eq!(l.take(), ["user rollback"]);
        assert_eq!(ids(c).await, [1]);
        assert_eq!(
            committed(&db).await,
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
    assert!(!is_broken(&mut conn));
    assert_eq!(ids(&mut conn).await, Vec::<i32>::new(), "rolled back");
    // Baseline gone: the next transaction is a real one.
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |c| {
        insert(c, 3).await?;
        c.on_commit(l.hook("real commit"));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(log.take(), ["real commit"]);
    assert_eq!(committed(&db).await, [3]);
}

// Cancellation rule 3 on PostgreSQL: the future is dropped while COMMIT is in
// flight (a deferred constraint trigger makes COMMIT take 1 s). The outcome
// is unknown to the wrapper, so it counts as failed: no on_commit hook ever
// runs, the on_rollback hooks run on a spawned task, the connection is
// broken — and the server did commit, which is what the docs warn about.
#[tokio::test]
async fn pg_future_dropped_while_commit_is_in_flight_counts_as_failed() {
    let (db, mut conn) = setup().await;
    conn.batch_execute(
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON items
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();",
    )
    .await
    .unwrap();
    let log = Log::new();
    let l = log.clone();
    let started = std::time::Instant::now();
    let timed_out = tokio::time::timeout(
        Duration::from_millis(400),
        conn.transaction::<(), Error, _>(async |c| {
            insert(c, 1).await?;
            c.on_commit(l.hook("never"));
            c.on_commit_async(later(&l, "never async"));
            c.on_rollback(l.hook("rolled back"));
            c.on_rollback_async(later(&l, "rolled back async"));
            Ok(())
        }),
    )
    .await;
    assert!(timed_out.is_err(), "COMMIT finished: {timed_out:?}");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "dropped before COMMIT returned"
    );
    assert!(log.get().is_empty(), "a hook ran inside Drop");
    assert!(
        is_broken(&mut conn),
        "a COMMIT of unknown outcome breaks the connection"
    );
    assert_eq!(
        wait_for(&log, 2).await,
        ["rolled back", "rolled back async"],
        "counted as failed: the on_rollback hooks run on a spawned task"
    );
    // The server finishes the COMMIT on its own.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(committed(&db).await, [1], "PostgreSQL did commit it");
    assert_eq!(log.take().len(), 2, "no on_commit hook ran, none twice");
}
