//! PostgreSQL through the async wrapper (`AsyncHookedConnection<AsyncPgConnection>`,
//! diesel-async 0.9): the rules that only PostgreSQL shows (an aborted
//! transaction, serialization failures, deferred constraints, a COMMIT in
//! flight), on a real server; the rules that read the same on MySQL are
//! written once in tests/async_backend_rules/ and stamped out here. The rules
//! themselves are covered on SQLite in tests/async_sqlite.rs; pools in
//! tests/async_pools.rs.
//!
//! Needs `POSTGRES_DATABASE_URL` (see `tests/common/mod.rs`); `bash .ci/run`
//! starts the server and sets it. Each test works in a schema of its own
//! (`PgSchema`; tokio-postgres honours its URL's `options=-csearch_path=..`).
#![cfg(all(feature = "async", feature = "postgres"))]

mod async_backend_rules;
mod common;

use std::future::Future;
use std::time::Duration;

use async_backend_rules::{is_broken, items, kind_and_message, AsyncTestDb};
use common::async_conn::{async_pg_in, later, wait_for};
use common::{Log, PgSchema};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_on_commit::AsyncHookedConnection;
use tokio::sync::Barrier;

type Conn = AsyncHookedConnection<AsyncPgConnection>;

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

impl AsyncTestDb for AsyncPgConnection {
    type Db = PgSchema;
    const CREATE_ITEMS: &'static str = CREATE_ITEMS;
    const SLEEP_1S: &'static str = "SELECT pg_sleep(1)";
    const KILLED: &'static str = "dead backend";

    fn db() -> PgSchema {
        PgSchema::new()
    }
    fn conn(db: &PgSchema) -> impl Future<Output = Conn> + Send {
        async_pg_in(db)
    }
    fn session_id(conn: &mut Conn) -> impl Future<Output = i64> + Send {
        backend_pid(conn)
    }
    fn kill(killer: &mut Conn, id: i64) -> impl Future<Output = ()> + Send {
        terminate(killer, id)
    }
    fn insert(conn: &mut Conn, id: i32) -> impl Future<Output = QueryResult<usize>> + Send {
        insert(conn, id)
    }
    fn ids(conn: &mut Conn) -> impl Future<Output = Vec<i32>> + Send {
        ids(conn)
    }
    fn count(conn: &mut Conn, sql: &str) -> impl Future<Output = QueryResult<i64>> + Send {
        count(conn, sql)
    }
}

// The rules that read the same on MySQL (tests/async_backend_rules/).
async_backend_rules::async_rule_tests!(AsyncPgConnection);

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
// Rule 5.2: a before_commit hook vetoes (its query awaited inside the
// transaction: tests/async_backend_rules/).
// ---------------------------------------------------------------------------

#[tokio::test]
async fn pg_before_commit_error_from_a_deferred_constraint_vetoes_the_commit() {
    let (db, mut conn) = setup().await;
    conn.batch_execute(
        "CREATE TABLE parents (id INT4 PRIMARY KEY);
         CREATE TABLE children (
             id INT4 PRIMARY KEY,
             parent_id INT4 NOT NULL REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED
         );",
    )
    .await
    .unwrap();
    insert(&mut conn, 1).await.unwrap();
    let log = Log::new();

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
    assert_eq!(committed(&db).await, [1]);
}

// ---------------------------------------------------------------------------
// Cancellation.
// ---------------------------------------------------------------------------

// Rule C3 on PostgreSQL: the future is dropped while COMMIT is in
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
