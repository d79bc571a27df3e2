//! MySQL / MariaDB through the async wrapper
//! (`AsyncHookedConnection<AsyncMysqlConnection>`, diesel-async 0.9): the
//! rules that only MySQL shows (a statement error that does not abort the
//! transaction, deadlocks), on a real server; the rules that read the same
//! on PostgreSQL are written once in tests/async_backend_rules/ and stamped
//! out here. The rules themselves are covered on SQLite in
//! tests/async_sqlite.rs; pools in tests/async_pools.rs.
//!
//! Needs `MYSQL_DATABASE_URL` (see `tests/common/mod.rs`); `bash .ci/run`
//! starts the server and sets it. Each test works in a database of its own
//! (`MysqlDb`). MySQL has no deferred constraints, and a failed statement
//! does not abort the transaction (unlike PostgreSQL); a deadlock does
//! (diesel-async reports InnoDB's 1213 as `Unknown`; the wrapper reports a
//! swallowed one as `SerializationFailure`, so that callers retry).
#![cfg(all(feature = "async", feature = "mysql"))]

mod async_backend_rules;
mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use async_backend_rules::{is_broken, items, kind_and_message, AsyncTestDb};
use common::async_conn::{async_mysql_in, later};
use common::{Log, MysqlDb};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error};
use diesel_async::{AsyncMysqlConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_on_commit::AsyncHookedConnection;
use tokio::sync::Barrier;

type Conn = AsyncHookedConnection<AsyncMysqlConnection>;

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

impl AsyncTestDb for AsyncMysqlConnection {
    type Db = MysqlDb;
    const CREATE_ITEMS: &'static str = CREATE_ITEMS;
    const SLEEP_1S: &'static str = "DO SLEEP(1)";
    const KILLED: &'static str = "killed connection";

    fn db() -> MysqlDb {
        MysqlDb::new()
    }
    fn conn(db: &MysqlDb) -> impl Future<Output = Conn> + Send {
        async_mysql_in(db)
    }
    fn session_id(conn: &mut Conn) -> impl Future<Output = i64> + Send {
        connection_id(conn)
    }
    fn kill(killer: &mut Conn, id: i64) -> impl Future<Output = ()> + Send {
        kill(killer, id)
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

// The rules that read the same on PostgreSQL (tests/async_backend_rules/).
async_backend_rules::async_rule_tests!(AsyncMysqlConnection);

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
