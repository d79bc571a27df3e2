//! MySQL / MariaDB through the async wrapper
//! (`AsyncHookedConnection<AsyncMysqlConnection>`, diesel-async 0.9): the
//! rules of SPEC.md where backends differ, on a real server. The rules
//! themselves are covered on SQLite in tests/async_sqlite.rs; pools in
//! tests/async_pools.rs.
//!
//! Needs `MYSQL_DATABASE_URL` (see `tests/common/mod.rs`); `bash .ci/run`
//! starts the server and sets it. Each test works in a database of its own
//! (`MysqlDb`). MySQL has no deferred constraints, and a failed statement
//! does not abort the transaction (unlike PostgreSQL); a deadlock does
//! (diesel-async reports InnoDB's 1213 as `Unknown`; the wrapper reports a
//! swallowed one as `SerializationFailure`, so that callers retry).
#![cfg(all(feature = "async", feature = "mysql"))]

mod common;

use std::time::{Duration, Instant};

use common::async_conn::{async_mysql_in, later, wait_for};
use common::{Log, MysqlDb};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error};
use diesel_async::pooled_connection::PoolableConnection;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_on_commit::AsyncHookedConnection;
use tokio::sync::Barrier;

type Conn = AsyncHookedConnection<AsyncMysqlConnection>;

diesel::table! {
    items (id) {
        id -> Integer,
        name -> Text,
    }
}

const CREATE_ITEMS: &str =
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(255) NOT NULL) ENGINE=InnoDB";

async fn setup() -> (MysqlDb, Conn) {
    let db = MysqlDb::new();
    let mut conn = async_mysql_in(&db).await;
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
async fn committed(db: &MysqlDb) -> Vec<i32> {
    ids(&mut async_mysql_in(db).await).await
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

async fn connection_id(conn: &mut Conn) -> i64 {
    count(conn, "SELECT CAST(CONNECTION_ID() AS SIGNED) AS n")
        .await
        .expect("SELECT CONNECTION_ID()")
}

/// Kills connection `id` from another session and waits until the server
/// no longer lists it.
async fn kill(killer: &mut Conn, id: i64) {
    killer
        .batch_execute(&format!("KILL {id}"))
        .await
        .expect("KILL");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = count(
            killer,
            &format!("SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST WHERE ID = {id}"),
        )
        .await
        .expect("PROCESSLIST");
        if listed == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "connection {id} still listed 20s after KILL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // polling the server's state
    }
}

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
async fn mysql_commit_awaits_sync_and_async_hooks_in_registration_order_after_commit() {
    let (db, mut conn) = setup().await;
    let log = Log::new();
    let l = log.clone();
    let mut observer = async_mysql_in(&db).await;
    conn.transaction::<_, Error, _>(async |c| {
        insert(c, 1).await?;
        c.on_commit(l.hook("sync 1"));
        let l2 = l.clone();
        c.on_commit_async(async move {
            let seen = ids(&mut observer).await;
            l2.push(format!("async 2: observer sees {seen:?}"));
        });
        let l3 = l.clone();
        c.on_commit_with(async move |c: &mut Conn| -> QueryResult<()> {
            l3.push(format!("with 3: in_transaction = {}", c.in_transaction()));
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
async fn mysql_rollback_discards_on_commit_hooks_and_awaits_on_rollback_hooks_in_order() {
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
        ["rolled back 1", "rolled back 2", "rolled back 3"]
    );
    insert(&mut conn, 5).await.unwrap();
    let l = log.clone();
    let result = conn
        .transaction::<(), Error, _>(async |c| {
            c.on_commit(l.hook("never"));
            c.on_rollback_async(later(&l, "duplicate rolled back"));
            insert(c, 6).await?;
            insert(c, 5).await?; // duplicate key, propagated
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
async fn mysql_savepoint_release_merges_hooks_and_savepoint_rollback_discards_them() {
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
            ["savepoint rolled back 1", "savepoint rolled back 2"]
        );
        assert_eq!(
            ids(c).await,
            [1, 2],
            "ROLLBACK TO SAVEPOINT undid its insert"
        );
        // A statement error propagated out of a savepoint rolls it back too.
        let l2 = l.clone();
        let failed = c
            .transaction::<usize, Error, _>(async move |c| {
                c.on_commit(l2.hook("never: failed savepoint"));
                c.on_rollback_async(later(&l2, "failed savepoint rolled back"));
                insert(c, 4).await?;
                insert(c, 1).await // duplicate key
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
    assert_eq!(committed(&db).await, [1, 2]);
}

// ---------------------------------------------------------------------------
// Rule 5.3 on MySQL: a statement error does not abort the transaction; a
// deadlock does.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn mysql_swallowed_statement_error_does_not_abort_the_transaction() {
    // Unlike PostgreSQL, MySQL only undoes the failed statement: the
    // transaction commits and its hooks fire.
    let (db, mut conn) = setup().await;
    insert(&mut conn, 1).await.unwrap();
    let log = Log::new();
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |c| {
        c.on_commit(l.hook("committed"));
        c.on_commit_async(later(&l, "committed async"));
        c.on_rollback(l.hook("rolled back"));
        insert(c, 2).await?;
        let swallowed = insert(c, 1).await.expect_err("duplicate key");
        assert_eq!(
            kind_and_message(&swallowed).0,
            DatabaseErrorKind::UniqueViolation
        );
        insert(c, 3).await?;
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(log.take(), ["committed", "committed async"]);
    assert_eq!(committed(&db).await, [1, 2, 3]);
}

/// Where the second, deadlocking update of [`transfer`] runs.
#[derive(Clone, Copy, Debug)]
enum Second {
    /// In the transaction itself; its error is propagated with `?`.
    Propagated,
    /// In the transaction itself; its error is swallowed.
    Swallowed,
    /// In a savepoint that propagates the error with `?`; the enclosing
    /// transaction swallows the savepoint's error and goes on.
    InSavepoint,
}

struct Transfer {
    second_update: QueryResult<usize>,
    result: QueryResult<()>,
    hooks: Vec<String>,
}

async fn bump(c: &mut Conn, id: i32) -> QueryResult<usize> {
    diesel::sql_query("UPDATE accounts SET balance = balance + 1 WHERE id = ?")
        .bind::<diesel::sql_types::Integer, _>(id)
        .execute(c)
        .await
}

/// Updates row `first`, waits for the other side to have updated its first
/// row, then updates row `second` (see [`Second`]).
async fn transfer(
    conn: &mut Conn,
    barrier: &Barrier,
    first: i32,
    second: i32,
    how: Second,
) -> Transfer {
    let log = Log::new();
    let mut second_update = None;
    let result = conn
        .transaction::<_, Error, _>(async |c| {
            c.on_commit(log.hook("committed"));
            c.on_commit_async(later(&log, "committed async"));
            c.on_rollback(log.hook("rolled back"));
            let first_update = bump(c, first).await;
            barrier.wait().await;
            first_update?;
            let r = match how {
                Second::Propagated | Second::Swallowed => bump(c, second).await,
                Second::InSavepoint => {
                    let l = log.clone();
                    c.transaction::<_, Error, _>(async move |c| {
                        c.on_commit(l.hook("savepoint committed"));
                        c.on_rollback_async(later(&l, "savepoint rolled back"));
                        bump(c, second).await
                    })
                    .await
                }
            };
            let failed = r.is_err();
            second_update = Some(r);
            if failed && matches!(how, Second::Propagated) {
                return Err(Error::RollbackTransaction);
            }
            Ok(())
        })
        .await;
    Transfer {
        second_update: second_update.expect("the body ran to its end"),
        result,
        hooks: log.take(),
    }
}

/// Two transactions lock two rows in opposite orders (two connections,
/// driven concurrently): InnoDB detects the deadlock and rolls one of them
/// back entirely. Returns the victim and the winner, after checking the
/// database kept only the winner's work.
async fn deadlock(how: Second) -> (Transfer, Transfer) {
    let db = MysqlDb::new();
    let mut a = async_mysql_in(&db).await;
    let mut b = async_mysql_in(&db).await;
    a.batch_execute(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL) ENGINE=InnoDB",
    )
    .await
    .unwrap();
    a.batch_execute("INSERT INTO accounts VALUES (1, 0), (2, 0)")
        .await
        .unwrap();
    let barrier = Barrier::new(2);
    let (ta, tb) = tokio::join!(
        transfer(&mut a, &barrier, 1, 2, how),
        transfer(&mut b, &barrier, 2, 1, how),
    );
    let (victim, winner) = match (&ta.second_update, &tb.second_update) {
        (Err(_), Ok(_)) => (ta, tb),
        (Ok(_), Err(_)) => (tb, ta),
        other => panic!("{how:?}: expected exactly one deadlock victim, got {other:?}"),
    };
    assert!(!a.in_transaction() && !b.in_transaction());
    assert!(
        !is_broken(&mut a) && !is_broken(&mut b),
        "a deadlock breaks no connection"
    );
    let balances = count(
        &mut async_mysql_in(&db).await,
        "SELECT CAST(SUM(balance) AS SIGNED) AS n FROM accounts",
    )
    .await
    .unwrap();
    assert_eq!(
        balances, 2,
        "{how:?}: only the winner's two updates committed"
    );
    (victim, winner)
}

fn assert_deadlock(error: &Error) {
    let (_, message) = kind_and_message(error);
    assert!(
        message.starts_with("Deadlock found"),
        "not a deadlock: {error:?}"
    );
}

#[tokio::test]
async fn mysql_deadlock_victim_propagating_the_error_runs_on_rollback_and_no_on_commit() {
    let (victim, winner) = deadlock(Second::Propagated).await;
    assert_deadlock(victim.second_update.as_ref().unwrap_err());
    assert!(
        matches!(victim.result, Err(Error::RollbackTransaction)),
        "{:?}",
        victim.result
    );
    assert_eq!(victim.hooks, ["rolled back"]);
    assert!(winner.result.is_ok(), "{:?}", winner.result);
    assert_eq!(winner.hooks, ["committed", "committed async"]);
}

#[tokio::test]
async fn mysql_swallowed_deadlock_fails_the_commit_as_serialization_failure() {
    // The victim's body swallows the deadlock; InnoDB has rolled the whole
    // transaction back. The wrapper must not report Ok, and must say
    // SerializationFailure so that callers retry.
    let (victim, winner) = deadlock(Second::Swallowed).await;
    let deadlock = victim.second_update.as_ref().unwrap_err();
    assert_deadlock(deadlock);
    let error = victim
        .result
        .expect_err("transaction() returned Ok for a transaction InnoDB rolled back");
    assert_eq!(
        kind_and_message(&error),
        (
            DatabaseErrorKind::SerializationFailure,
            kind_and_message(deadlock).1
        )
    );
    assert_eq!(victim.hooks, ["rolled back"]);
    assert!(winner.result.is_ok(), "{:?}", winner.result);
    assert_eq!(winner.hooks, ["committed", "committed async"]);
}

#[tokio::test]
async fn mysql_deadlock_in_a_savepoint_fails_the_outermost_commit_even_when_swallowed() {
    // InnoDB rolls back the whole transaction, not just the savepoint: the
    // enclosing transaction that swallows the savepoint's error must not
    // commit (rule 5.3), and no on_commit hook of either level runs.
    let (victim, winner) = deadlock(Second::InSavepoint).await;
    assert!(victim.second_update.is_err());
    let error = victim
        .result
        .expect_err("transaction() returned Ok for a transaction InnoDB rolled back");
    assert_eq!(
        kind_and_message(&error).0,
        DatabaseErrorKind::SerializationFailure
    );
    assert_deadlock(&error);
    assert_eq!(victim.hooks, ["savepoint rolled back", "rolled back"]);
    assert!(winner.result.is_ok(), "{:?}", winner.result);
    assert_eq!(
        winner.hooks,
        ["committed", "committed async", "savepoint committed"]
    );
}

#[tokio::test]
async fn mysql_deadlock_in_a_savepoint_is_what_the_savepoint_returns() {
    // The savepoint propagates the deadlock with `?`; its ROLLBACK TO
    // SAVEPOINT then fails (InnoDB already rolled everything back, the
    // savepoint is gone). transaction() must return the deadlock, which the
    // caller can retry, not "SAVEPOINT ... does not exist" (the sync wrapper
    // on MysqlConnection returns the deadlock).
    let (victim, _winner) = deadlock(Second::InSavepoint).await;
    assert_deadlock(victim.second_update.as_ref().unwrap_err());
}

// ---------------------------------------------------------------------------
// Rule 5.1-5.2: before_commit awaits queries and vetoes.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn mysql_before_commit_awaits_a_query_inside_the_transaction_and_an_err_vetoes() {
    let (db, mut conn) = setup().await;
    let log = Log::new();
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |c| {
        insert(c, 1).await?;
        let l2 = l.clone();
        c.before_commit(async move |c: &mut Conn| {
            assert!(
                c.in_transaction(),
                "before_commit runs inside the transaction"
            );
            let n = count(c, "SELECT COUNT(*) AS n FROM items").await?;
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

    // A before_commit hook whose query fails: its error vetoes the commit.
    let l = log.clone();
    let result = conn
        .transaction::<_, Error, _>(async |c| {
            c.on_commit(l.hook("never"));
            c.on_rollback_async(later(&l, "rolled back"));
            insert(c, 2).await?;
            c.before_commit(async |c: &mut Conn| insert(c, 1).await.map(drop)); // duplicate key
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
        DatabaseErrorKind::UniqueViolation
    );
    assert_eq!(log.take(), ["rolled back"]);
    assert!(!conn.in_transaction());
    assert_eq!(committed(&db).await, [1, 101], "row 2 was rolled back");
}

// ---------------------------------------------------------------------------
// Rule 9: the connection is killed with a transaction open.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn mysql_killed_connection_fails_the_next_statement_runs_on_rollback_and_reports_broken() {
    let (db, mut conn) = setup().await;
    let mut killer = async_mysql_in(&db).await;
    let id = connection_id(&mut conn).await;
    let log = Log::new();
    let l = log.clone();
    let result = conn
        .transaction::<(), Error, _>(async |c| {
            insert(c, 1).await?;
            c.on_commit(l.hook("never"));
            c.on_commit_async(later(&l, "never async"));
            c.on_rollback(l.hook("rolled back"));
            c.on_rollback_async(later(&l, "rolled back async"));
            kill(&mut killer, id).await;
            insert(c, 2).await?; // fails: the connection is gone
            Ok(())
        })
        .await;
    assert!(
        result.is_err(),
        "a statement on a killed connection returned Ok"
    );
    assert_eq!(log.take(), ["rolled back", "rolled back async"]);
    assert!(!conn.in_transaction());
    assert!(
        is_broken(&mut conn),
        "a pool must not reuse this connection"
    );
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
        "a transaction on a killed connection returned Ok"
    );
    assert_eq!(log.take(), ["late on_rollback"]);
    assert_eq!(committed(&db).await, Vec::<i32>::new());
}

#[tokio::test]
async fn mysql_killed_connection_fails_the_commit_and_reports_broken() {
    let (db, mut conn) = setup().await;
    let mut killer = async_mysql_in(&db).await;
    let id = connection_id(&mut conn).await;
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
            kill(&mut killer, id).await;
            Ok(()) // the next step is COMMIT
        })
        .await;
    assert!(result.is_err(), "COMMIT on a killed connection returned Ok");
    assert_eq!(log.take(), ["outer rolled back", "savepoint rolled back"]);
    assert!(!conn.in_transaction());
    assert!(
        is_broken(&mut conn),
        "a pool must not reuse this connection (COMMIT failed with {result:?})"
    );
    assert_eq!(committed(&db).await, Vec::<i32>::new());
}

// ---------------------------------------------------------------------------
// Cancellation: the caller's future dropped mid-body.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn mysql_transaction_future_dropped_mid_body_commits_nothing_and_hands_on_rollback_to_a_task()
{
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
            // Dropped while a statement is in flight.
            c.batch_execute("DO SLEEP(1)").await?;
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
    assert_eq!(
        wait_for(&log, 2).await,
        ["rolled back", "rolled back async"],
        "the on_rollback hooks run on a spawned task"
    );
    drop(conn);
    assert_eq!(committed(&db).await, Vec::<i32>::new());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(log.take().len(), 2, "a hook ran twice");
}

// ---------------------------------------------------------------------------
// Rule 11: test transactions.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn mysql_test_transaction_is_the_baseline_and_its_end_fires_nothing() {
    let (db, mut conn) = setup().await; // DDL would commit a test transaction
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
