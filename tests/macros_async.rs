//! `#[atomic]` on `async fn`, on diesel-async's
//! `SyncConnectionWrapper<SqliteConnection>`: commit, rollback, `?` and
//! `return`, nesting as savepoints, `durable`, panics, the kept signature
//! (generics, `self`, `impl Trait`, lifetimes, options), `Send` futures, a
//! future dropped mid-transaction, hooks on an `AsyncHookedConnection`, and
//! `on_commit!` on the connection owned, `&mut` or behind a deadpool guard
//! (M3).
#![cfg(all(feature = "async", feature = "sqlite"))]

mod common;

use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use common::async_conn::{async_sqlite, later, AsyncSqlite};
use common::{capture_logs, panic_text, unique, Log};
use diesel::result::{DatabaseErrorKind, Error, QueryResult};
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel::{ExpressionMethods, QueryDsl};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection, TransactionManager};
use diesel_on_commit::{atomic, on_commit, AsyncHookedConnection};

type Conn = SyncConnectionWrapper<SqliteConnection>;
type Manager = <Conn as AsyncConnection>::TransactionManager;

diesel::table! {
    orders (id) {
        id -> Integer,
        customer -> Text,
    }
}

const SCHEMA: &str = "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL)";

async fn db() -> Conn {
    let mut conn = Conn::establish(":memory:").await.unwrap();
    conn.batch_execute(SCHEMA).await.unwrap();
    conn
}

async fn order_ids<C: AsyncConnection<Backend = Sqlite>>(conn: &mut C) -> Vec<i32> {
    orders::table
        .select(orders::id)
        .order(orders::id)
        .load(conn)
        .await
        .unwrap()
}

/// Diesel's transaction depth (a test transaction included).
fn depth<C: AsyncConnection>(conn: &mut C) -> u32 {
    C::TransactionManager::transaction_manager_status_mut(conn)
        .transaction_depth()
        .expect("transaction manager in error")
        .map_or(0, |d| d.get())
}

async fn insert(conn: &mut Conn, id: i32) -> QueryResult<usize> {
    diesel::insert_into(orders::table)
        .values((orders::id.eq(id), orders::customer.eq("ada")))
        .execute(conn)
        .await
}

/// Awaits `f`, catching a panic out of it: `Err(message)`.
async fn catch_panic<F: Future>(f: F) -> Result<F::Output, String> {
    let mut f = pin!(f);
    std::future::poll_fn(
        |cx| match panic::catch_unwind(AssertUnwindSafe(|| f.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => Poll::Ready(Err(panic_text(&*payload))),
        },
    )
    .await
}

/// Polls `future` once.
async fn poll_once<F: Future>(future: &mut Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
}

/// An application error, as services have: Diesel's errors convert into it.
#[derive(Debug, PartialEq)]
enum ShopError {
    Db(Error),
    EmptyCart,
}

impl From<Error> for ShopError {
    fn from(e: Error) -> Self {
        ShopError::Db(e)
    }
}

// ---------------------------------------------------------------------------
// Commit, rollback, `?`, `return`

/// Inserts order `id`; `total <= 0` fails after the INSERT.
#[atomic]
async fn create_order(conn: &mut Conn, id: i32, total: i32) -> Result<i32, ShopError> {
    assert_eq!(depth(conn), 1, "the body runs inside the transaction");
    insert(conn, id).await?;
    if total <= 0 {
        // After the INSERT: it must be undone.
        return Err(ShopError::EmptyCart);
    }
    Ok(id)
}

#[tokio::test]
async fn ok_commits() {
    let mut conn = db().await;
    assert_eq!(create_order(&mut conn, 1, 30).await, Ok(1));
    assert_eq!(depth(&mut conn), 0);
    assert_eq!(order_ids(&mut conn).await, [1]);
}

#[tokio::test]
async fn err_from_return_rolls_back() {
    let mut conn = db().await;
    assert_eq!(
        create_order(&mut conn, 1, 0).await,
        Err(ShopError::EmptyCart)
    );
    assert_eq!(depth(&mut conn), 0);
    assert!(order_ids(&mut conn).await.is_empty());
}

#[atomic]
async fn two_orders(conn: &mut Conn, first: i32, second: i32) -> QueryResult<()> {
    insert(conn, first).await?;
    insert(conn, second).await?;
    Ok(())
}

#[tokio::test]
async fn question_mark_returns_the_error_and_rolls_back() {
    let mut conn = db().await;
    let err = two_orders(&mut conn, 1, 1).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
        ),
        "{err:?}"
    );
    // The first INSERT, before the `?`, is rolled back too.
    assert!(order_ids(&mut conn).await.is_empty());
    assert_eq!(depth(&mut conn), 0);
    two_orders(&mut conn, 1, 2).await.unwrap();
    assert_eq!(order_ids(&mut conn).await, [1, 2]);
}

/// `return` of an `Ok` value early.
#[atomic]
async fn early_return(conn: &mut Conn, id: i32) -> QueryResult<&'static str> {
    insert(conn, id).await?;
    if id % 2 == 0 {
        return Ok("even");
    }
    Ok("odd")
}

#[tokio::test]
async fn return_ok_early_commits() {
    let mut conn = db().await;
    assert_eq!(early_return(&mut conn, 2).await, Ok("even"));
    assert_eq!(early_return(&mut conn, 3).await, Ok("odd"));
    assert_eq!(order_ids(&mut conn).await, [2, 3]);
}

/// Inserts a child whose parent does not exist: the deferred foreign key
/// fails at COMMIT.
#[atomic]
async fn orphan_child(conn: &mut Conn, id: i32, parent: i32) -> QueryResult<()> {
    conn.batch_execute(&format!(
        "INSERT INTO child (id, parent_id) VALUES ({id}, {parent})"
    ))
    .await
}

#[tokio::test]
async fn failed_commit_returns_the_error_and_leaves_nothing() {
    let mut conn = Conn::establish(":memory:").await.unwrap();
    conn.batch_execute(
        "PRAGMA foreign_keys = ON;
         CREATE TABLE parent (id INTEGER PRIMARY KEY);
         CREATE TABLE child (id INTEGER PRIMARY KEY,
             parent_id INTEGER NOT NULL REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);
         INSERT INTO parent (id) VALUES (1);",
    )
    .await
    .unwrap();
    let failed = orphan_child(&mut conn, 1, 42).await;
    assert!(
        matches!(
            failed,
            Err(Error::DatabaseError(
                DatabaseErrorKind::ForeignKeyViolation,
                _
            ))
        ),
        "{failed:?}"
    );
    assert_eq!(depth(&mut conn), 0);
    // The connection is usable, the next transaction is an outermost one,
    // and the failed child is gone.
    orphan_child(&mut conn, 2, 1).await.unwrap();
    let children: Vec<i32> = diesel::sql_query("SELECT id FROM child ORDER BY id")
        .load::<ChildId>(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(children, [2]);
}

#[derive(diesel::QueryableByName)]
struct ChildId {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    id: i32,
}

// ---------------------------------------------------------------------------
// Nesting

#[atomic]
async fn inner_order(conn: &mut Conn, id: i32, fail: bool) -> QueryResult<u32> {
    insert(conn, id).await?;
    let depth = depth(conn);
    if fail {
        return Err(Error::RollbackTransaction);
    }
    Ok(depth)
}

#[atomic]
async fn outer_order(conn: &mut Conn) -> QueryResult<Vec<u32>> {
    insert(conn, 1).await?;
    let failed = inner_order(conn, 2, true).await;
    assert_eq!(failed, Err(Error::RollbackTransaction));
    // The savepoint is gone; the outer transaction goes on.
    assert_eq!(depth(conn), 1);
    let depth = inner_order(conn, 3, false).await?;
    Ok(vec![depth])
}

#[tokio::test]
async fn nested_call_is_a_savepoint() {
    let mut conn = db().await;
    assert_eq!(outer_order(&mut conn).await, Ok(vec![2]));
    assert_eq!(depth(&mut conn), 0);
    // The inner Err rolled back its savepoint only; the outer committed.
    assert_eq!(order_ids(&mut conn).await, [1, 3]);
}

#[atomic]
async fn outer_that_fails(conn: &mut Conn) -> QueryResult<()> {
    assert_eq!(inner_order(conn, 1, false).await, Ok(2));
    Err(Error::RollbackTransaction)
}

#[tokio::test]
async fn released_savepoint_is_rolled_back_with_its_outer_transaction() {
    let mut conn = db().await;
    assert_eq!(
        outer_that_fails(&mut conn).await,
        Err(Error::RollbackTransaction)
    );
    assert!(order_ids(&mut conn).await.is_empty());
}

// ---------------------------------------------------------------------------
// durable

/// Counts its runs in `runs`.
#[atomic(durable)]
async fn durable_order(conn: &mut Conn, runs: &AtomicUsize, id: i32) -> QueryResult<()> {
    let _ = runs.fetch_add(1, Ordering::SeqCst);
    insert(conn, id).await?;
    Ok(())
}

#[atomic]
async fn calls_durable(conn: &mut Conn, runs: &AtomicUsize) -> QueryResult<()> {
    insert(conn, 1).await?;
    assert_eq!(
        durable_order(conn, runs, 2).await,
        Err(Error::AlreadyInTransaction)
    );
    assert_eq!(depth(conn), 1);
    Ok(())
}

#[tokio::test]
async fn durable_inside_a_transaction_is_refused_without_running_the_body() {
    let mut conn = db().await;
    let runs = AtomicUsize::new(0);
    calls_durable(&mut conn, &runs).await.unwrap();
    assert_eq!(
        AtomicUsize::load(&runs, Ordering::SeqCst),
        0,
        "the body must not run"
    );
    assert_eq!(order_ids(&mut conn).await, [1]);
    // At the top, it runs.
    durable_order(&mut conn, &runs, 3).await.unwrap();
    assert_eq!(AtomicUsize::load(&runs, Ordering::SeqCst), 1);
    assert_eq!(order_ids(&mut conn).await, [1, 3]);
}

#[tokio::test]
async fn durable_inside_a_test_transaction_runs() {
    let mut conn = db().await;
    conn.begin_test_transaction().await.unwrap();
    let runs = AtomicUsize::new(0);
    durable_order(&mut conn, &runs, 1).await.unwrap();
    assert_eq!(AtomicUsize::load(&runs, Ordering::SeqCst), 1);
    assert_eq!(depth(&mut conn), 1, "back to the test transaction");
    assert_eq!(order_ids(&mut conn).await, [1]);
}

// ---------------------------------------------------------------------------
// Panics

#[atomic]
async fn panics_after_insert(conn: &mut Conn, id: i32) -> QueryResult<()> {
    insert(conn, id).await?;
    tokio::task::yield_now().await;
    panic!("boom in order {id}");
}

#[atomic]
async fn outermost_depth(conn: &mut Conn, id: i32) -> QueryResult<u32> {
    insert(conn, id).await?;
    Ok(depth(conn))
}

#[tokio::test]
async fn panic_rolls_back_is_resumed_and_the_connection_stays_usable() {
    let mut conn = db().await;
    let message = catch_panic(panics_after_insert(&mut conn, 1))
        .await
        .unwrap_err();
    assert_eq!(message, "boom in order 1");
    assert_eq!(depth(&mut conn), 0);
    assert!(!Manager::is_broken_transaction_manager(&mut conn));
    assert!(order_ids(&mut conn).await.is_empty());
    // The next transaction is a real outermost one (not a savepoint of a
    // leftover transaction), and it commits.
    assert_eq!(outermost_depth(&mut conn, 2).await, Ok(1));
    assert_eq!(order_ids(&mut conn).await, [2]);
}

#[atomic]
async fn outer_catches_inner_panic(conn: &mut Conn) -> QueryResult<()> {
    insert(conn, 1).await?;
    let message = catch_panic(panics_after_insert(conn, 2)).await.unwrap_err();
    assert_eq!(message, "boom in order 2");
    assert_eq!(depth(conn), 1, "only the savepoint was rolled back");
    insert(conn, 3).await?;
    Ok(())
}

#[tokio::test]
async fn panic_in_a_nested_call_rolls_back_its_savepoint_only() {
    let mut conn = db().await;
    outer_catches_inner_panic(&mut conn).await.unwrap();
    assert_eq!(order_ids(&mut conn).await, [1, 3]);
}

// ---------------------------------------------------------------------------
// The signature is kept: generics, `impl Trait`, lifetimes, `self`,
// attributes, options

/// Generic over the connection, with an `impl Trait` argument.
#[atomic]
async fn generic_sum<C>(conn: &mut C, items: impl IntoIterator<Item = i32>) -> QueryResult<i32>
where
    C: AsyncConnection<Backend = Sqlite>,
{
    let mut sum = 0;
    for id in items {
        diesel::insert_into(orders::table)
            .values((orders::id.eq(id), orders::customer.eq("gen")))
            .execute(conn)
            .await?;
        sum += id;
    }
    Ok(sum)
}

#[atomic]
async fn borrowed<'a>(conn: &mut Conn, name: &'a str) -> QueryResult<&'a str> {
    insert(conn, name.len() as i32).await?;
    Ok(name)
}

/// The connection named by `conn = ..`, with another `&mut` parameter, and
/// the facade named by `crate = ..`.
#[atomic(conn = db, crate = diesel_on_commit)]
async fn named(values: &mut Vec<i32>, db: &mut Conn) -> QueryResult<usize> {
    values.push(depth(db) as i32);
    insert(db, 7).await?;
    Ok(values.len())
}

/// An owned `mut` connection, seen as `&mut Conn` by the body.
#[atomic]
async fn owned(mut conn: Conn) -> QueryResult<Vec<i32>> {
    insert(conn, 1).await?;
    Ok(order_ids(conn).await)
}

/// `mut conn: &mut Conn`: the body may re-bind it.
#[atomic]
async fn rebound(mut conn: &mut Conn) -> QueryResult<()> {
    conn = {
        let again: &mut Conn = conn;
        again
    };
    insert(conn, 9).await?;
    Ok(())
}

struct Service {
    calls: u32,
}

impl Service {
    /// A `&mut self` method; its attributes are kept.
    #[inline]
    #[atomic]
    async fn call(&mut self, conn: &mut Conn, fail: bool) -> QueryResult<u32> {
        self.calls += 1;
        insert(conn, 100 + self.calls as i32).await?;
        if fail {
            return Err(Error::RollbackTransaction);
        }
        Ok(self.calls)
    }
}

trait Repository {
    async fn store(&self, conn: &mut Conn, id: i32) -> QueryResult<i32>;
}

struct Orders;

impl Repository for Orders {
    #[atomic]
    async fn store(&self, conn: &mut Conn, id: i32) -> QueryResult<i32> {
        insert(conn, id).await?;
        Ok(id)
    }
}

#[tokio::test]
async fn signatures_are_kept() {
    let mut conn = db().await;
    assert_eq!(generic_sum(&mut conn, [1, 2]).await, Ok(3));
    assert!(generic_sum(&mut conn, [3, 3]).await.is_err());
    assert_eq!(order_ids(&mut conn).await, [1, 2]);

    assert_eq!(borrowed(&mut conn, "abcde").await, Ok("abcde"));

    let mut values = Vec::new();
    assert_eq!(named(&mut values, &mut conn).await, Ok(1));
    assert_eq!(values, [1], "the body ran at depth 1");

    rebound(&mut conn).await.unwrap();

    let mut service = Service { calls: 0 };
    assert_eq!(service.call(&mut conn, false).await, Ok(1));
    assert_eq!(
        service.call(&mut conn, true).await,
        Err(Error::RollbackTransaction)
    );
    assert_eq!(service.calls, 2);

    assert_eq!(Orders.store(&mut conn, 50).await, Ok(50));
    assert_eq!(order_ids(&mut conn).await, [1, 2, 5, 7, 9, 50, 101]);

    let fresh = db().await;
    assert_eq!(owned(fresh).await, Ok(vec![1]));
}

// ---------------------------------------------------------------------------
// Send

fn assert_send<T: Send>(_: &T) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn futures_are_send_when_the_body_is() {
    let mut conn = db().await;
    {
        let future = create_order(&mut conn, 1, 1);
        assert_send(&future);
        assert_eq!(future.await, Ok(1));
    }
    let future = outer_order(&mut conn);
    assert_send(&future);
    drop(future);
    // As an axum handler would: on a spawned task, across threads.
    let mut conn = db().await;
    let (conn, result) = tokio::spawn(async move {
        let result = outer_order(&mut conn).await;
        (conn, result)
    })
    .await
    .unwrap();
    assert_eq!(result, Ok(vec![2]));
    let mut conn = conn;
    assert_eq!(order_ids(&mut conn).await, [1, 3]);
}

// ---------------------------------------------------------------------------
// A future dropped mid-transaction

/// Inserts, then waits for `release` (never signalled in the tests).
#[atomic]
async fn insert_then_wait(
    conn: &mut Conn,
    id: i32,
    release: Arc<tokio::sync::Notify>,
) -> QueryResult<()> {
    insert(conn, id).await?;
    release.notified().await;
    Ok(())
}

/// A database file, so that a second connection can look at what the
/// first one committed.
struct TempDb(std::path::PathBuf);

impl TempDb {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("{}.sqlite", unique("macros_async")));
        Self(path)
    }

    fn url(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn dropped_future_leaves_the_work_uncommitted_and_the_connection_broken() {
    let file = TempDb::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (mut conn, logs) = capture_logs(|| {
        runtime.block_on(async {
            let mut conn = Conn::establish(file.url()).await.unwrap();
            conn.batch_execute(SCHEMA).await.unwrap();
            let release = Arc::new(tokio::sync::Notify::new());
            let timed_out = tokio::time::timeout(
                Duration::from_millis(100),
                insert_then_wait(&mut conn, 1, release.clone()),
            )
            .await;
            assert!(timed_out.is_err(), "the body waits forever");
            conn
        })
    });
    assert!(
        logs.contains("ERROR") && logs.contains("dropped inside its transaction"),
        "{logs}"
    );
    runtime.block_on(async {
        assert!(Manager::is_broken_transaction_manager(&mut conn));
        // Diesel refuses further transactions on it.
        let next = outermost_depth(&mut conn, 2).await;
        assert!(
            matches!(next, Err(Error::BrokenTransactionManager)),
            "{next:?}"
        );
        // Nothing was committed: another connection sees no row.
        let mut other = Conn::establish(file.url()).await.unwrap();
        assert!(order_ids(&mut other).await.is_empty());
    });
}

#[tokio::test]
async fn dropped_future_inside_a_test_transaction_breaks_the_connection_too() {
    let mut conn = db().await;
    conn.begin_test_transaction().await.unwrap();
    // Without the guard, diesel-async would call this connection healthy: a
    // test transaction is open, and nothing else shows the dangling level.
    let release = Arc::new(tokio::sync::Notify::new());
    {
        let mut future = pin!(insert_then_wait(&mut conn, 1, release));
        // BEGIN (a savepoint) and the INSERT run, then the body waits.
        for _ in 0..50 {
            assert!(poll_once(&mut future).await.is_pending());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    } // dropped here
    assert!(Manager::is_broken_transaction_manager(&mut conn));
}

#[tokio::test]
async fn future_dropped_before_its_first_poll_changes_nothing() {
    let mut conn = db().await;
    let release = Arc::new(tokio::sync::Notify::new());
    drop(insert_then_wait(&mut conn, 1, release));
    assert!(!Manager::is_broken_transaction_manager(&mut conn));
    assert_eq!(outermost_depth(&mut conn, 2).await, Ok(1));
    assert_eq!(order_ids(&mut conn).await, [2]);
}

#[atomic]
async fn slow_query(conn: &mut Conn) -> QueryResult<()> {
    insert(conn, 1).await?;
    // A second or so of work on SQLite's blocking thread.
    conn.batch_execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000000) \
         SELECT count(*) FROM n",
    )
    .await
}

// `SyncConnectionWrapper` waits for its blocking task when a query's future
// is dropped, with `block_in_place`: a multi-threaded runtime is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_dropped_while_a_query_is_in_flight_marks_the_connection_broken() {
    let mut conn = db().await;
    let started = std::time::Instant::now();
    let timed_out = tokio::time::timeout(Duration::from_millis(20), slow_query(&mut conn)).await;
    assert!(
        timed_out.is_err(),
        "the query finished in {:?}: make it slower",
        started.elapsed()
    );
    assert!(Manager::is_broken_transaction_manager(&mut conn));
    let next = outermost_depth(&mut conn, 2).await;
    assert!(
        matches!(next, Err(Error::BrokenTransactionManager)),
        "{next:?}"
    );
}

/// Inserts, sets `waiting`, waits for `release`, and returns `Ok`.
#[atomic]
async fn insert_wait_commit(
    conn: &mut Conn,
    id: i32,
    waiting: Arc<AtomicBool>,
    release: Arc<tokio::sync::Notify>,
) -> QueryResult<()> {
    insert(conn, id).await?;
    waiting.store(true, Ordering::SeqCst);
    release.notified().await;
    Ok(())
}

// `SyncConnectionWrapper` waits for its blocking task (here the COMMIT)
// when its future is dropped: the transaction manager then knows the
// outcome, and the connection is not marked broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_dropped_while_a_commit_finishes_leaves_the_connection_healthy() {
    let file = TempDb::new();
    let mut conn = Conn::establish(file.url()).await.unwrap();
    conn.batch_execute(SCHEMA).await.unwrap();
    let waiting = Arc::new(AtomicBool::new(false));
    let release = Arc::new(tokio::sync::Notify::new());
    {
        let mut future = pin!(insert_wait_commit(
            &mut conn,
            1,
            waiting.clone(),
            release.clone()
        ));
        while !AtomicBool::load(&waiting, Ordering::SeqCst) {
            assert!(poll_once(&mut future).await.is_pending());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        release.notify_one();
        // The body returns `Ok`; COMMIT goes to SQLite's blocking thread.
        assert!(
            poll_once(&mut future).await.is_pending(),
            "COMMIT to a database file was expected to take longer than one poll"
        );
    } // dropped: the wrapper waits for the COMMIT to finish
    assert!(!Manager::is_broken_transaction_manager(&mut conn));
    assert_eq!(depth(&mut conn), 0);
    let mut other = Conn::establish(file.url()).await.unwrap();
    assert_eq!(order_ids(&mut other).await, [1]);
    assert_eq!(outermost_depth(&mut conn, 2).await, Ok(1));
}

// ---------------------------------------------------------------------------
// Hooks on an `AsyncHookedConnection`

type DbConn = AsyncHookedConnection<AsyncSqlite>;

async fn hooked_db() -> DbConn {
    let mut conn = async_sqlite().await;
    conn.batch_execute(SCHEMA).await.unwrap();
    conn
}

/// Inserts `id` and registers hooks that write to `log`; fails when asked.
#[atomic]
async fn hooked_order(conn: &mut DbConn, log: &Log, id: i32, fail: bool) -> QueryResult<()> {
    diesel::insert_into(orders::table)
        .values((orders::id.eq(id), orders::customer.eq("ada")))
        .execute(conn)
        .await?;
    let committed = log.clone();
    on_commit!(conn, committed.push(format!("committed {id}")));
    conn.on_rollback(log.hook("rolled back"));
    if fail {
        return Err(Error::RollbackTransaction);
    }
    Ok(())
}

#[atomic]
async fn hooked_outer(conn: &mut DbConn, log: &Log) -> QueryResult<()> {
    hooked_order(conn, log, 3, false).await?;
    assert_eq!(
        hooked_order(conn, log, 4, true).await,
        Err(Error::RollbackTransaction)
    );
    assert!(log.get().iter().all(|l| !l.starts_with("committed")));
    Ok(())
}

#[tokio::test]
async fn on_commit_hooks_run_after_the_outermost_commit_only() {
    let mut conn = hooked_db().await;
    let log = Log::new();
    hooked_order(&mut conn, &log, 1, false).await.unwrap();
    assert_eq!(log.take(), ["committed 1"]);
    assert_eq!(
        hooked_order(&mut conn, &log, 2, true).await,
        Err(Error::RollbackTransaction)
    );
    assert_eq!(log.take(), ["rolled back"]);
    // Nested: the inner savepoint that failed drops its own hook only.
    hooked_outer(&mut conn, &log).await.unwrap();
    assert_eq!(log.take(), ["rolled back", "committed 3"]);
    assert_eq!(order_ids(&mut conn).await, [1, 3]);
}

#[atomic]
async fn hooked_panic(conn: &mut DbConn, log: &Log) -> QueryResult<()> {
    hooked_order(conn, log, 1, false).await?;
    panic!("boom after a hook");
}

#[tokio::test]
async fn panic_discards_the_hooks_and_runs_on_rollback() {
    let mut conn = hooked_db().await;
    let log = Log::new();
    let message = catch_panic(hooked_panic(&mut conn, &log))
        .await
        .unwrap_err();
    assert_eq!(message, "boom after a hook");
    assert_eq!(log.take(), ["rolled back"]);
    assert!(!conn.in_transaction());
    assert!(order_ids(&mut conn).await.is_empty());
    hooked_order(&mut conn, &log, 2, false).await.unwrap();
    assert_eq!(log.take(), ["committed 2"]);
}

#[atomic]
async fn hooked_then_wait(
    conn: &mut DbConn,
    log: &Log,
    release: Arc<tokio::sync::Notify>,
) -> QueryResult<()> {
    hooked_order(conn, log, 1, false).await?;
    release.notified().await;
    Ok(())
}

#[tokio::test]
async fn dropped_future_never_runs_its_on_commit_hooks() {
    let mut conn = hooked_db().await;
    let log = Log::new();
    let release = Arc::new(tokio::sync::Notify::new());
    let timed_out = tokio::time::timeout(
        Duration::from_millis(50),
        hooked_then_wait(&mut conn, &log, release),
    )
    .await;
    assert!(timed_out.is_err());
    assert!(
        <DbConn as AsyncConnection>::TransactionManager::is_broken_transaction_manager(&mut conn)
    );
    let next = hooked_order(&mut conn, &log, 2, false).await;
    assert!(
        matches!(next, Err(Error::BrokenTransactionManager)),
        "{next:?}"
    );
    assert!(
        log.get().iter().all(|l| !l.starts_with("committed")),
        "{:?}",
        log.get()
    );
}

// ---------------------------------------------------------------------------
// M3: `on_commit!` takes the async wrapper as it is held.

type HookedManager = <DbConn as AsyncConnection>::TransactionManager;

/// Every async form and a sync one on `conn`, logging `what`.
macro_rules! register_every_form {
    ($conn:expr, $log:expr, $what:literal) => {{
        let (a, b, c, d, e) = (
            $log.clone(),
            $log.clone(),
            $log.clone(),
            $log.clone(),
            $log.clone(),
        );
        on_commit!($conn, a.push(concat!($what, " sync")));
        on_commit!($conn, later(&b, concat!($what, " awaits")).await);
        on_commit!($conn, async move { c.push(concat!($what, " async block")) });
        on_commit!($conn, async move || d
            .push(concat!($what, " async closure")));
        on_commit!($conn, async move |conn: &mut DbConn| e.push(format!(
            "{} with, in tx: {}",
            $what,
            conn.in_transaction()
        )));
    }};
}

fn every_form(what: &str) -> Vec<String> {
    ["sync", "awaits", "async block", "async closure"]
        .iter()
        .map(|form| format!("{what} {form}"))
        .chain([format!("{what} with, in tx: false")])
        .collect()
}

#[tokio::test]
async fn on_commit_takes_an_owned_async_wrapper_and_a_reference() {
    let mut conn = hooked_db().await;
    let log = Log::new();
    // An owned `mut` binding, in a transaction the wrapper's own manager
    // opened: the hooks wait for COMMIT.
    HookedManager::begin_transaction(&mut conn).await.unwrap();
    register_every_form!(conn, log, "owned");
    assert!(log.get().is_empty(), "nothing before COMMIT");
    HookedManager::commit_transaction(&mut conn).await.unwrap();
    assert_eq!(log.take(), every_form("owned"));

    // `&mut conn`, then dropped by a rollback.
    HookedManager::begin_transaction(&mut conn).await.unwrap();
    register_every_form!(&mut conn, log, "&mut conn");
    HookedManager::rollback_transaction(&mut conn)
        .await
        .unwrap();
    assert!(log.get().is_empty(), "dropped on rollback");

    // A `&mut` reference, as a transaction closure gets it.
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |conn| {
        register_every_form!(conn, l, "reference");
        assert!(l.get().is_empty(), "nothing before COMMIT");
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(log.take(), every_form("reference"));
}

#[tokio::test]
async fn on_commit_takes_a_deadpool_guard_of_the_async_wrapper() {
    use diesel_async::pooled_connection::deadpool::Pool;
    use diesel_async::pooled_connection::AsyncDieselConnectionManager;
    let pool = Pool::<DbConn>::builder(AsyncDieselConnectionManager::<DbConn>::new(":memory:"))
        .max_size(1)
        .build()
        .unwrap();
    let mut pooled = pool.get().await.unwrap();
    pooled.batch_execute(SCHEMA).await.unwrap();
    let log = Log::new();
    // The guard as it is: `DerefMut` reaches the wrapper.
    HookedManager::begin_transaction(&mut pooled).await.unwrap();
    register_every_form!(pooled, log, "guard");
    assert!(log.get().is_empty(), "nothing before COMMIT");
    HookedManager::commit_transaction(&mut pooled)
        .await
        .unwrap();
    assert_eq!(log.take(), every_form("guard"));
    // Outside a transaction a sync hook runs at once (rule 2).
    let l = log.clone();
    on_commit!(pooled, l.push("at once"));
    assert_eq!(log.take(), ["at once"]);
}

/// Waits (up to 2 s, polling a log, never the connection) until `log` holds
/// `want`.
async fn promptly(log: &Log, want: &[&str]) -> Vec<String> {
    for _ in 0..200 {
        if log.get() == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    log.get()
}

// Rule C1 through `#[atomic]`: the on_rollback hooks of a future dropped
// mid-body run on a spawned task at once, while the caller neither touches
// nor drops the connection (they used to wait for the connection's drop).
#[tokio::test]
async fn dropped_future_runs_its_on_rollback_hooks_promptly_on_a_task() {
    let mut conn = hooked_db().await;
    let log = Log::new();
    let release = Arc::new(tokio::sync::Notify::new());
    let timed_out = tokio::time::timeout(
        Duration::from_millis(50),
        hooked_then_wait(&mut conn, &log, release),
    )
    .await;
    assert!(timed_out.is_err());
    assert_eq!(promptly(&log, &["rolled back"]).await, ["rolled back"]);
    // Exactly once: neither the broken-connection checks nor the drop run
    // it again.
    assert!(
        <DbConn as AsyncConnection>::TransactionManager::is_broken_transaction_manager(&mut conn)
    );
    drop(conn);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(log.get(), ["rolled back"]);
}

#[atomic]
async fn generic_then_wait<C>(
    conn: &mut C,
    register: impl FnOnce(&mut C) + Send,
    release: Arc<tokio::sync::Notify>,
) -> QueryResult<()>
where
    C: AsyncConnection,
{
    register(conn);
    release.notified().await;
    Ok(())
}

// Generic code gets the same: the guard reaches the wrapper through
// `C::TransactionManager`.
#[tokio::test]
async fn generic_atomic_fn_on_the_wrapper_runs_on_rollback_promptly_when_dropped() {
    let mut conn = hooked_db().await;
    let log = Log::new();
    let l = log.clone();
    let release = Arc::new(tokio::sync::Notify::new());
    let timed_out = tokio::time::timeout(
        Duration::from_millis(50),
        generic_then_wait(
            &mut conn,
            move |c: &mut DbConn| {
                c.on_commit(l.hook("committed"));
                c.on_rollback(l.hook("rolled back"));
                c.on_rollback_async(common::async_conn::later(&l, "rolled back async"));
            },
            release,
        ),
    )
    .await;
    assert!(timed_out.is_err());
    let want = ["rolled back", "rolled back async"];
    assert_eq!(promptly(&log, &want).await, want);
    drop(conn);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(log.get(), want);
}

// ---------------------------------------------------------------------------
// Transaction options on an `async fn` (M1): `immediate` on SQLite, `retry`
// (feature `tokio`); `isolation`, `read_only`, `deferrable` on PostgreSQL and
// MySQL below. Options run on the async wrapper.

mod options {
    use super::*;
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    use diesel_on_commit::RetryPolicy;
    use std::cell::Cell;

    type DbConn = AsyncHookedConnection<AsyncSqlite>;

    /// A wrapped SQLite database in a file (another connection can see its
    /// locks), with `orders`, and its path.
    async fn file_db() -> (DbConn, String) {
        let dir = std::env::temp_dir().join(unique("async-options"));
        std::fs::create_dir_all(&dir).unwrap();
        let url = dir.join("db.sqlite").to_str().unwrap().to_owned();
        let mut conn = DbConn::establish(&url).await.unwrap();
        conn.batch_execute(SCHEMA).await.unwrap();
        (conn, url)
    }

    /// Whether another connection could take the write lock right now.
    fn other_can_write(url: &str) -> bool {
        let mut other = SqliteConnection::establish(url).unwrap();
        other.batch_execute("PRAGMA busy_timeout = 0").unwrap();
        match other.batch_execute("BEGIN IMMEDIATE") {
            Ok(()) => {
                other.batch_execute("ROLLBACK").unwrap();
                true
            }
            Err(e) => {
                assert!(e.to_string().contains("database is locked"), "{e}");
                false
            }
        }
    }

    async fn insert(conn: &mut DbConn, id: i32) -> QueryResult<usize> {
        diesel::insert_into(orders::table)
            .values((orders::id.eq(id), orders::customer.eq("c")))
            .execute(conn)
            .await
    }

    async fn ids(conn: &mut DbConn) -> Vec<i32> {
        orders::table
            .select(orders::id)
            .order(orders::id)
            .load(conn)
            .await
            .unwrap()
    }

    #[atomic(immediate)]
    async fn immediate_order(
        conn: &mut DbConn,
        url: &str,
        log: &Log,
        id: i32,
    ) -> QueryResult<bool> {
        // Before any statement of this transaction: the write lock is held.
        let other_could_write = other_can_write(url);
        insert(conn, id).await?;
        conn.on_commit(log.hook("committed"));
        Ok(other_could_write)
    }

    #[atomic]
    async fn deferred_order(conn: &mut DbConn, url: &str, log: &Log, id: i32) -> QueryResult<bool> {
        let other_could_write = other_can_write(url);
        insert(conn, id).await?;
        conn.on_commit(log.hook("committed"));
        Ok(other_could_write)
    }

    #[tokio::test]
    async fn immediate_takes_the_write_lock_at_begin_and_commits_with_hooks() {
        let (mut conn, url) = file_db().await;
        let log = Log::new();
        assert!(deferred_order(&mut conn, &url, &log, 1).await.unwrap());
        assert!(!immediate_order(&mut conn, &url, &log, 2).await.unwrap());
        assert_eq!(log.get(), ["committed", "committed"]);
        assert_eq!(ids(&mut conn).await, [1, 2]);
    }

    #[atomic(immediate)]
    async fn immediate_fails(conn: &mut DbConn, log: &Log) -> QueryResult<()> {
        insert(conn, 7).await?;
        conn.on_commit(log.hook("never"));
        conn.on_rollback_async(later(log, "rolled back"));
        Err(Error::RollbackTransaction)
    }

    #[tokio::test]
    async fn immediate_rolls_back_on_err_and_drops_the_hooks() {
        let (mut conn, _url) = file_db().await;
        let log = Log::new();
        assert!(immediate_fails(&mut conn, &log).await.is_err());
        assert_eq!(log.get(), ["rolled back"]);
        assert!(ids(&mut conn).await.is_empty());
        assert!(!conn.in_transaction());
    }

    #[atomic(immediate)]
    async fn immediate_panics(conn: &mut DbConn, log: &Log) -> QueryResult<()> {
        insert(conn, 8).await?;
        conn.on_rollback(log.hook("rolled back"));
        panic!("boom in an immediate transaction");
    }

    #[tokio::test]
    async fn a_panic_under_options_rolls_back_and_the_connection_stays_usable() {
        let (mut conn, url) = file_db().await;
        let log = Log::new();
        let caught = AssertUnwindSafe(immediate_panics(&mut conn, &log));
        let r = futures_catch_unwind(caught).await;
        assert!(r.is_err());
        assert_eq!(log.get(), ["rolled back"]);
        assert!(!conn.in_transaction());
        assert!(!immediate_order(&mut conn, &url, &log, 9).await.unwrap());
        assert_eq!(ids(&mut conn).await, [9]);
    }

    async fn futures_catch_unwind<F: Future>(
        fut: AssertUnwindSafe<F>,
    ) -> std::thread::Result<F::Output> {
        let mut fut = pin!(fut.0);
        std::future::poll_fn(move |cx| {
            match panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
                Ok(Poll::Pending) => Poll::Pending,
                Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
                Err(payload) => Poll::Ready(Err(payload)),
            }
        })
        .await
    }

    #[tokio::test]
    async fn options_inside_an_open_transaction_return_already_in_transaction_without_running() {
        let (mut conn, url) = file_db().await;
        let log = Log::new();
        conn.transaction(async |conn| -> QueryResult<()> {
            let r = immediate_order(conn, &url, &log, 1).await;
            assert!(matches!(r, Err(Error::AlreadyInTransaction)), "{r:?}");
            Ok(())
        })
        .await
        .unwrap();
        assert!(log.get().is_empty(), "the body did not run");
    }

    #[tokio::test]
    async fn options_inside_a_test_transaction_run_in_a_savepoint_without_them() {
        let mut conn = async_sqlite().await;
        conn.batch_execute(SCHEMA).await.unwrap();
        conn.begin_test_transaction().await.unwrap();
        let log = Log::new();
        // ":memory:" has no other connection: `other_can_write` is not used.
        #[atomic(immediate)]
        async fn order(conn: &mut DbConn, log: &Log) -> QueryResult<()> {
            insert(conn, 3).await?;
            conn.on_commit(log.hook("committed"));
            Ok(())
        }
        order(&mut conn, &log).await.unwrap();
        assert_eq!(log.get(), ["committed"], "the savepoint's release fires");
    }

    fn serialization_failure() -> Error {
        Error::DatabaseError(
            DatabaseErrorKind::SerializationFailure,
            Box::new(String::from("could not serialize access (simulated)")),
        )
    }

    #[cfg(feature = "tokio")]
    #[atomic(retry = 3)]
    async fn flaky_order(
        conn: &mut DbConn,
        attempts: &Cell<u32>,
        fail: u32,
        log: &Log,
    ) -> QueryResult<u32> {
        let n = attempts.get() + 1;
        attempts.set(n);
        insert(conn, n as i32).await?;
        let l = log.clone();
        conn.on_commit(move || l.push(format!("commit {n}")));
        let l = log.clone();
        conn.on_rollback_async(async move { l.push(format!("rollback {n}")) });
        if n <= fail {
            return Err(serialization_failure());
        }
        Ok(n)
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn retry_reruns_the_body_and_fires_only_the_committed_attempt() {
        let mut conn = async_sqlite().await;
        conn.batch_execute(SCHEMA).await.unwrap();
        let (attempts, log) = (Cell::new(0), Log::new());
        assert_eq!(flaky_order(&mut conn, &attempts, 2, &log).await.unwrap(), 3);
        assert_eq!(log.get(), ["rollback 1", "rollback 2", "commit 3"]);
        assert_eq!(
            ids(&mut conn).await,
            [3],
            "failed attempts were rolled back"
        );
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn retry_gives_up_after_n_attempts_and_returns_the_last_error() {
        let mut conn = async_sqlite().await;
        conn.batch_execute(SCHEMA).await.unwrap();
        let (attempts, log) = (Cell::new(0), Log::new());
        let r = flaky_order(&mut conn, &attempts, 10, &log).await;
        assert!(
            matches!(
                r,
                Err(Error::DatabaseError(
                    DatabaseErrorKind::SerializationFailure,
                    _
                ))
            ),
            "{r:?}"
        );
        assert_eq!(attempts.get(), 3);
        assert_eq!(log.get(), ["rollback 1", "rollback 2", "rollback 3"]);
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn retry_inside_an_open_transaction_runs_once_and_returns_the_error_unchanged() {
        let mut conn = async_sqlite().await;
        conn.batch_execute(SCHEMA).await.unwrap();
        let (attempts, log) = (Cell::new(0), Log::new());
        conn.transaction(async |conn| -> QueryResult<()> {
            let r = flaky_order(conn, &attempts, 10, &log).await;
            assert!(r.is_err());
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(attempts.get(), 1, "a savepoint is never retried");
        assert_eq!(log.get(), ["rollback 1"]);
    }

    #[cfg(feature = "tokio")]
    #[atomic(durable, immediate, retry = RetryPolicy::attempts(4).backoff(Duration::from_millis(1), Duration::from_millis(2)))]
    async fn durable_immediate_flaky(conn: &mut DbConn, attempts: &Cell<u32>) -> QueryResult<u32> {
        attempts.set(attempts.get() + 1);
        if attempts.get() < 3 {
            return Err(serialization_failure());
        }
        insert(conn, 1).await?;
        Ok(attempts.get())
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn durable_immediate_with_a_retry_policy() {
        let (mut conn, _url) = file_db().await;
        let attempts = Cell::new(0);
        assert_eq!(
            durable_immediate_flaky(&mut conn, &attempts).await.unwrap(),
            3
        );
        let attempts = Cell::new(0);
        conn.transaction(async |conn| -> QueryResult<()> {
            let r = durable_immediate_flaky(conn, &attempts).await;
            assert!(matches!(r, Err(Error::AlreadyInTransaction)), "{r:?}");
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(attempts.get(), 0, "durable refused before running");
    }

    /// A retrying `#[atomic]` future is `Send` when its body's is: it can be
    /// spawned (the `retry_loop!` comment in options/async_builder.rs).
    /// Its parameters besides the connection must be owned (`String`,
    /// `Arc<T>`, `Copy` values): with a reference parameter (`&Log`, even a
    /// `&'static str`, or `&self`) rustc rejects the spawned future as not
    /// `Send` ("implementation of `Send` is not general enough"; README,
    /// Known limits).
    #[cfg(feature = "tokio")]
    #[atomic(immediate, retry = 2)]
    async fn sendable(conn: &mut DbConn, id: i32, customer: String) -> QueryResult<i32> {
        diesel::insert_into(orders::table)
            .values((orders::id.eq(id), orders::customer.eq(customer.clone())))
            .execute(conn)
            .await?;
        Ok(id)
    }

    #[cfg(feature = "tokio")]
    #[atomic(retry = 2)]
    async fn sendable_shared(conn: &mut DbConn, id: i32, log: Arc<Log>) -> QueryResult<i32> {
        conn.on_commit(log.hook("shared"));
        insert(conn, id).await?;
        Ok(id)
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn retrying_futures_with_options_are_send() {
        let (mut conn, _url) = file_db().await;
        let shared = Log::new();
        let log = Arc::new(shared.clone());
        let id = tokio::spawn(async move {
            let fut = sendable(&mut conn, 5, "ada".into());
            assert_send(&fut);
            let id = fut.await?;
            let fut = sendable_shared(&mut conn, 6, log);
            assert_send(&fut);
            Ok::<_, Error>(id + fut.await?)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(id, 11);
        assert_eq!(shared.get(), ["shared"]);
    }
}
