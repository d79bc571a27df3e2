//! diesel-async's pools (bb8, deadpool, mobc) of `AsyncHookedConnection`s,
//! through `AsyncDieselConnectionManager<AsyncHookedConnection<C>>`, on
//! PostgreSQL and MySQL:
//!
//! * hooks fire on a pooled connection, reached through the guard's
//!   `DerefMut` (`let conn: &mut AsyncHookedConnection<_> = &mut pooled;`);
//! * a connection whose transaction future was dropped mid-body is reported
//!   broken and never handed out again (the next checkout is a fresh
//!   connection, in no transaction); its `on_rollback` hooks ran on a
//!   spawned task and its `on_commit` hooks never;
//! * the concurrency run: 64 tasks × `ASYNC_POOL_TX_PER_TASK` transactions
//!   (default 200) on a multi-thread runtime through a pool of 12
//!   connections, each transaction randomly (seeded) committed, rolled back,
//!   committed with a savepoint rolled back, or cancelled mid-body; then
//!   every id is cross-checked against the table.
#![cfg(all(
    feature = "async",
    feature = "tokio",
    any(feature = "postgres", feature = "mysql")
))]
// The backend trait's methods spell out `+ Send` futures, as diesel-async's do.
#![allow(clippy::manual_async_fn)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::ops::DerefMut;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use common::async_conn::{later, wait_for};
use common::Log;
use diesel::prelude::*;
use diesel::result::Error;
use diesel_async::pooled_connection::PoolableConnection;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_on_commit::AsyncHookedConnection;

type Conn<C> = AsyncHookedConnection<C>;

/// A checked-out connection, whatever the pool.
type Guard<C> = Box<dyn DerefMut<Target = Conn<C>> + Send>;
/// How to check a connection out of the pool under test.
type Checkout<C> = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Guard<C>> + Send>> + Send + Sync>;

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// What the tests need of a backend.
trait Backend: AsyncConnection + PoolableConnection + Send + 'static {
    /// A statement that takes a while (to drop its future in flight).
    const SLEEP: &'static str;
    /// The database session's id.
    fn session(conn: &mut Conn<Self>) -> impl Future<Output = QueryResult<i64>> + Send;
    fn insert(conn: &mut Conn<Self>, id: i64) -> impl Future<Output = QueryResult<()>> + Send;
    fn ids(conn: &mut Conn<Self>) -> impl Future<Output = QueryResult<BTreeSet<i64>>> + Send;
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

#[cfg(feature = "postgres")]
impl Backend for diesel_async::AsyncPgConnection {
    const SLEEP: &'static str = "SELECT pg_sleep(0.05)";

    fn session(conn: &mut Conn<Self>) -> impl Future<Output = QueryResult<i64>> + Send {
        async move {
            diesel::sql_query("SELECT pg_backend_pid()::int8 AS n")
                .get_result::<N>(conn)
                .await
                .map(|r| r.n)
        }
    }

    fn insert(conn: &mut Conn<Self>, id: i64) -> impl Future<Output = QueryResult<()>> + Send {
        async move {
            diesel::sql_query("INSERT INTO orders (id) VALUES ($1)")
                .bind::<diesel::sql_types::BigInt, _>(id)
                .execute(conn)
                .await
                .map(drop)
        }
    }

    fn ids(conn: &mut Conn<Self>) -> impl Future<Output = QueryResult<BTreeSet<i64>>> + Send {
        async move {
            let rows: Vec<Id> = diesel::sql_query("SELECT id FROM orders")
                .load(conn)
                .await?;
            Ok(rows.into_iter().map(|r| r.id).collect())
        }
    }
}

#[cfg(feature = "mysql")]
impl Backend for diesel_async::AsyncMysqlConnection {
    const SLEEP: &'static str = "DO SLEEP(0.05)";

    fn session(conn: &mut Conn<Self>) -> impl Future<Output = QueryResult<i64>> + Send {
        async move {
            diesel::sql_query("SELECT CAST(CONNECTION_ID() AS SIGNED) AS n")
                .get_result::<N>(conn)
                .await
                .map(|r| r.n)
        }
    }

    fn insert(conn: &mut Conn<Self>, id: i64) -> impl Future<Output = QueryResult<()>> + Send {
        async move {
            diesel::sql_query("INSERT INTO orders (id) VALUES (?)")
                .bind::<diesel::sql_types::BigInt, _>(id)
                .execute(conn)
                .await
                .map(drop)
        }
    }

    fn ids(conn: &mut Conn<Self>) -> impl Future<Output = QueryResult<BTreeSet<i64>>> + Send {
        async move {
            let rows: Vec<Id> = diesel::sql_query("SELECT id FROM orders")
                .load(conn)
                .await?;
            Ok(rows.into_iter().map(|r| r.id).collect())
        }
    }
}

fn is_broken<C: Backend>(conn: &mut Conn<C>) -> bool {
    PoolableConnection::is_broken(conn)
}

// ---------------------------------------------------------------------------
// Hooks on pooled connections; a cancelled transaction's connection.
// ---------------------------------------------------------------------------

/// Checks out a connection, asserts it is clean (in no transaction, sees
/// only the committed rows `expected`, carries no hook), and returns its
/// session id.
async fn next_checkout_is_clean<C: Backend>(
    label: &str,
    checkout: &Checkout<C>,
    expected: &BTreeSet<i64>,
    log: &Log,
) -> i64 {
    let mut pooled = checkout().await;
    let conn: &mut Conn<C> = &mut pooled;
    assert!(
        !conn.in_transaction(),
        "{label}: the next checkout is inside a transaction"
    );
    assert!(
        !is_broken(conn),
        "{label}: the pool handed out a broken connection"
    );
    assert_eq!(
        &C::ids(conn).await.unwrap(),
        expected,
        "{label}: the next checkout sees uncommitted rows: it is inside an abandoned transaction"
    );
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |c| {
        c.on_commit(l.hook("next checkout committed"));
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{label}: a transaction on the next checkout: {e}"));
    assert_eq!(
        log.take(),
        ["next checkout committed"],
        "{label}: a hook was carried into the next checkout"
    );
    C::session(conn).await.unwrap()
}

/// The pool scenario: `checkout` comes from a pool of at most one
/// connection, on a database with an empty `orders` table. `reuses_clean`:
/// whether the pool hands a healthy connection out again.
async fn pool_scenario<C: Backend>(label: &str, checkout: Checkout<C>, reuses_clean: bool) {
    let log = Log::new();
    let mut committed = BTreeSet::new();

    // 1. Hooks fire on a pooled connection, through the guard's DerefMut.
    let first = {
        let mut pooled = checkout().await;
        let conn: &mut Conn<C> = &mut pooled;
        let l = log.clone();
        conn.transaction::<_, Error, _>(async |c| {
            C::insert(c, 1).await?;
            c.on_commit(l.hook("sync"));
            c.on_commit_async(later(&l, "async"));
            let l2 = l.clone();
            c.on_commit_with(async move |c: &mut Conn<C>| -> QueryResult<()> {
                let seen = C::ids(c).await?;
                l2.push(format!("with sees {seen:?}"));
                Ok(())
            });
            let l2 = l.clone();
            c.transaction::<_, Error, _>(async move |c| {
                c.on_commit_async(later(&l2, "released savepoint"));
                Ok(())
            })
            .await?;
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(
            log.take(),
            ["sync", "async", "with sees {1}", "released savepoint"],
            "{label}"
        );
        committed.insert(1);
        let l = log.clone();
        let rolled_back = conn
            .transaction::<(), Error, _>(async |c| {
                C::insert(c, 2).await?;
                c.on_commit(l.hook("never"));
                c.on_rollback_async(later(&l, "rolled back"));
                Err(Error::RollbackTransaction)
            })
            .await;
        assert!(rolled_back.is_err());
        assert_eq!(log.take(), ["rolled back"], "{label}");
        assert!(!is_broken(conn), "{label}: a rollback breaks no connection");
        C::session(conn).await.unwrap()
    };
    let second = next_checkout_is_clean(
        &format!("{label}, after a commit"),
        &checkout,
        &committed,
        &log,
    )
    .await;
    if reuses_clean {
        assert_eq!(second, first, "{label}: a clean connection is reused");
    }

    // 2. The transaction future dropped mid-body.
    let cancelled = {
        let mut pooled = checkout().await;
        let conn: &mut Conn<C> = &mut pooled;
        let session = C::session(conn).await.unwrap();
        let l = log.clone();
        let timed_out = tokio::time::timeout(
            Duration::from_millis(300),
            conn.transaction::<(), Error, _>(async |c| {
                C::insert(c, 3).await?;
                c.on_commit(l.hook("never: sync"));
                c.on_commit_async(later(&l, "never: async"));
                c.on_rollback(l.hook("rolled back"));
                c.on_rollback_async(later(&l, "rolled back async"));
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            }),
        )
        .await;
        assert!(timed_out.is_err(), "{label}: the transaction finished");
        assert!(log.get().is_empty(), "{label}: a hook ran inside Drop");
        assert!(
            is_broken(conn),
            "{label}: an abandoned transaction's connection must be reported broken"
        );
        session
    }; // the guard goes back to the pool here
    assert_eq!(
        wait_for(&log, 2).await,
        ["rolled back", "rolled back async"],
        "{label}: the on_rollback hooks run on a spawned task"
    );
    log.take();
    let fresh = next_checkout_is_clean(
        &format!("{label}, after a cancelled transaction"),
        &checkout,
        &committed,
        &log,
    )
    .await;
    assert_ne!(
        fresh, cancelled,
        "{label}: the connection of an abandoned transaction was handed out again"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        log.get().is_empty(),
        "{label}: a hook ran late: {:?}",
        log.get()
    );
    let mut pooled = checkout().await;
    assert_eq!(C::ids(&mut pooled).await.unwrap(), committed, "{label}");
}

#[cfg(feature = "postgres")]
mod pg {
    use super::*;
    use common::PgSchema;
    use diesel_async::pooled_connection::AsyncDieselConnectionManager;
    use diesel_async::AsyncPgConnection;

    type PgConn = Conn<AsyncPgConnection>;

    pub(super) async fn schema() -> PgSchema {
        let db = PgSchema::new();
        common::async_conn::async_pg_in(&db)
            .await
            .batch_execute("CREATE TABLE orders (id BIGINT PRIMARY KEY)")
            .await
            .unwrap();
        db
    }

    pub(super) async fn bb8(db: &PgSchema, size: u32) -> Checkout<AsyncPgConnection> {
        use diesel_async::pooled_connection::bb8::Pool;
        let manager = AsyncDieselConnectionManager::<PgConn>::new(db.url());
        let pool = Pool::<PgConn>::builder()
            .max_size(size)
            .connection_timeout(Duration::from_secs(60))
            .build(manager)
            .await
            .expect("bb8 pool");
        Arc::new(move || {
            let pool = pool.clone();
            Box::pin(async move {
                Box::new(pool.get_owned().await.expect("bb8 checkout")) as Guard<AsyncPgConnection>
            })
        })
    }

    pub(super) fn deadpool(db: &PgSchema, size: usize) -> Checkout<AsyncPgConnection> {
        use diesel_async::pooled_connection::deadpool::Pool;
        let manager = AsyncDieselConnectionManager::<PgConn>::new(db.url());
        let pool = Pool::<PgConn>::builder(manager)
            .max_size(size)
            .build()
            .expect("deadpool pool");
        Arc::new(move || {
            let pool = pool.clone();
            Box::pin(async move {
                Box::new(pool.get().await.expect("deadpool checkout")) as Guard<AsyncPgConnection>
            })
        })
    }

    pub(super) fn mobc(db: &PgSchema, size: u64) -> Checkout<AsyncPgConnection> {
        use diesel_async::pooled_connection::mobc::Pool;
        let manager = AsyncDieselConnectionManager::<PgConn>::new(db.url());
        let pool = Pool::<PgConn>::builder().max_open(size).build(manager);
        Arc::new(move || {
            let pool = pool.clone();
            Box::pin(async move {
                Box::new(pool.get().await.expect("mobc checkout")) as Guard<AsyncPgConnection>
            })
        })
    }

    #[tokio::test]
    async fn pg_bb8_pool_fires_hooks_and_never_hands_out_an_abandoned_transaction() {
        let db = schema().await;
        pool_scenario("bb8/postgres", bb8(&db, 1).await, true).await;
    }

    #[tokio::test]
    async fn pg_deadpool_pool_fires_hooks_and_never_hands_out_an_abandoned_transaction() {
        let db = schema().await;
        pool_scenario("deadpool/postgres", deadpool(&db, 1), true).await;
    }

    #[tokio::test]
    async fn pg_mobc_pool_fires_hooks_and_never_hands_out_an_abandoned_transaction() {
        let db = schema().await;
        // diesel-async 0.9.2's mobc manager hands `is_broken()` to mobc's
        // `validate` (true = keep), so mobc drops every healthy connection
        // at check-in: no reuse to assert.
        pool_scenario("mobc/postgres", mobc(&db, 1), false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn pg_bb8_concurrency_run_cross_checks_every_hook_against_the_table() {
        let db = schema().await;
        let checkout = bb8(&db, POOL_SIZE as u32).await;
        let read = async || {
            let mut conn = common::async_conn::async_pg_in(&db).await;
            AsyncPgConnection::ids(&mut conn).await.unwrap()
        };
        concurrency_run("bb8/postgres", checkout, read).await;
    }
}

#[cfg(feature = "mysql")]
mod my {
    use super::*;
    use common::MysqlDb;
    use diesel_async::pooled_connection::AsyncDieselConnectionManager;
    use diesel_async::AsyncMysqlConnection;

    type MyConn = Conn<AsyncMysqlConnection>;

    async fn database() -> MysqlDb {
        let db = MysqlDb::new();
        common::async_conn::async_mysql_in(&db)
            .await
            .batch_execute("CREATE TABLE orders (id BIGINT PRIMARY KEY) ENGINE=InnoDB")
            .await
            .unwrap();
        db
    }

    async fn bb8(db: &MysqlDb, size: u32) -> Checkout<AsyncMysqlConnection> {
        use diesel_async::pooled_connection::bb8::Pool;
        let manager = AsyncDieselConnectionManager::<MyConn>::new(db.url());
        let pool = Pool::<MyConn>::builder()
            .max_size(size)
            .connection_timeout(Duration::from_secs(60))
            .build(manager)
            .await
            .expect("bb8 pool");
        Arc::new(move || {
            let pool = pool.clone();
            Box::pin(async move {
                Box::new(pool.get_owned().await.expect("bb8 checkout"))
                    as Guard<AsyncMysqlConnection>
            })
        })
    }

    fn deadpool(db: &MysqlDb, size: usize) -> Checkout<AsyncMysqlConnection> {
        use diesel_async::pooled_connection::deadpool::Pool;
        let manager = AsyncDieselConnectionManager::<MyConn>::new(db.url());
        let pool = Pool::<MyConn>::builder(manager)
            .max_size(size)
            .build()
            .expect("deadpool pool");
        Arc::new(move || {
            let pool = pool.clone();
            Box::pin(async move {
                Box::new(pool.get().await.expect("deadpool checkout"))
                    as Guard<AsyncMysqlConnection>
            })
        })
    }

    #[tokio::test]
    async fn mysql_bb8_pool_fires_hooks_and_never_hands_out_an_abandoned_transaction() {
        let db = database().await;
        pool_scenario("bb8/mysql", bb8(&db, 1).await, true).await;
    }

    #[tokio::test]
    async fn mysql_deadpool_pool_fires_hooks_and_never_hands_out_an_abandoned_transaction() {
        let db = database().await;
        pool_scenario("deadpool/mysql", deadpool(&db, 1), true).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn mysql_deadpool_concurrency_run_cross_checks_every_hook_against_the_table() {
        let db = database().await;
        let checkout = deadpool(&db, POOL_SIZE);
        let read = async || {
            let mut conn = common::async_conn::async_mysql_in(&db).await;
            AsyncMysqlConnection::ids(&mut conn).await.unwrap()
        };
        concurrency_run("deadpool/mysql", checkout, read).await;
    }
}

// ---------------------------------------------------------------------------
// The concurrency run.
// ---------------------------------------------------------------------------

const POOL_SIZE: usize = 12;
const TASKS: i64 = 64;

fn per_task() -> i64 {
    std::env::var("ASYNC_POOL_TX_PER_TASK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// A tiny seeded xorshift64: deterministic per task, no new crates.
struct Xorshift(u64);

impl Xorshift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Commit,
    /// The body returns `Err`.
    Rollback,
    /// The order commits; a savepoint inside it (order `id + 1`) rolls back.
    SavepointRollback,
    /// The transaction future is dropped mid-body (after its hooks were
    /// registered): while the body sleeps, or while a statement is in flight.
    Cancel,
}

fn pick(rng: &mut Xorshift) -> Action {
    match rng.next() % 20 {
        0..=8 => Action::Commit,
        9..=12 => Action::Rollback,
        13..=16 => Action::SavepointRollback,
        _ => Action::Cancel,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Commit,
    Rollback,
}

#[derive(Default)]
struct Events {
    counts: BTreeMap<(i64, Kind), u32>,
    /// Ids whose hook ran on a task spawned by the wrapper.
    spawned: BTreeMap<(i64, Kind), u32>,
    /// Hooks that ran inside another worker task than their transaction's.
    strays: Vec<String>,
    /// What each order did.
    plan: BTreeMap<i64, Action>,
}

type Shared = Arc<Mutex<Events>>;

tokio::task_local! {
    /// The worker task a hook runs in (unset on a task the wrapper spawned).
    static WORKER: i64;
}

fn record(events: &Shared, id: i64, kind: Kind, worker: i64) {
    let mut ev = events.lock().unwrap();
    *ev.counts.entry((id, kind)).or_default() += 1;
    match WORKER.try_with(|w| *w) {
        Err(_) => *ev.spawned.entry((id, kind)).or_default() += 1,
        Ok(w) if w != worker => ev.strays.push(format!(
            "{kind:?} hook of order {id} (worker {worker}) ran in worker {w}"
        )),
        Ok(_) => {}
    }
}

/// Registers order `id`'s on_commit and on_rollback hooks, sync or async.
fn register<C: Backend>(
    c: &mut Conn<C>,
    id: i64,
    rng: &mut Xorshift,
    events: &Shared,
    worker: i64,
) {
    let e = events.clone();
    if rng.coin() {
        c.on_commit(move || record(&e, id, Kind::Commit, worker));
    } else {
        c.on_commit_async(async move {
            tokio::task::yield_now().await;
            record(&e, id, Kind::Commit, worker)
        });
    }
    let e = events.clone();
    if rng.coin() {
        c.on_rollback(move || record(&e, id, Kind::Rollback, worker));
    } else {
        c.on_rollback_async(async move {
            tokio::task::yield_now().await;
            record(&e, id, Kind::Rollback, worker)
        });
    }
}

/// One order's transaction on a checked-out connection.
async fn order<C: Backend>(
    conn: &mut Conn<C>,
    id: i64,
    action: Action,
    rng: &mut Xorshift,
    events: &Shared,
    worker: i64,
) {
    let in_flight = rng.coin();
    let (ready, mut registered) = tokio::sync::oneshot::channel::<()>();
    let mut ready = Some(ready);
    let transaction = conn.transaction::<(), Error, _>(async |c| {
        C::insert(c, id).await?;
        register(c, id, rng, events, worker);
        match action {
            Action::Commit => Ok(()),
            Action::Rollback => Err(Error::RollbackTransaction),
            Action::SavepointRollback => {
                let sub = id + 1;
                let inner = c
                    .transaction::<(), Error, _>(async |c| {
                        C::insert(c, sub).await?;
                        register(c, sub, rng, events, worker);
                        Err(Error::RollbackTransaction)
                    })
                    .await;
                assert!(
                    matches!(inner, Err(Error::RollbackTransaction)),
                    "order {sub}: {inner:?}"
                );
                Ok(())
            }
            Action::Cancel => {
                let _ = ready.take().expect("once").send(());
                if in_flight {
                    c.batch_execute(C::SLEEP).await?;
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
                unreachable!("order {id}: a cancelled transaction was not dropped")
            }
        }
    });
    let mut transaction = std::pin::pin!(transaction);
    if action == Action::Cancel {
        // Poll the transaction until its hooks are registered, then drop it.
        let finished = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = transaction.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            Pin::new(&mut registered).poll(cx).map(|_| None)
        })
        .await;
        assert!(
            finished.is_none(),
            "order {id}: cancelled transaction finished: {finished:?}"
        );
        return; // the transaction future is dropped here, mid-body
    }
    let result = transaction.await;
    match (action, &result) {
        (Action::Commit | Action::SavepointRollback, Ok(())) => {}
        (Action::Rollback, Err(Error::RollbackTransaction)) => {}
        (a, r) => panic!("order {id} ({a:?}): unexpected result {r:?}"),
    }
}

/// The run; `read` returns the committed ids at the end.
async fn concurrency_run<C: Backend>(
    label: &str,
    checkout: Checkout<C>,
    read: impl AsyncFnOnce() -> BTreeSet<i64>,
) {
    let n = per_task();
    let events: Shared = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let checkout = checkout.clone();
        let events = events.clone();
        tasks.push(tokio::spawn(WORKER.scope(t, async move {
            let mut rng = Xorshift::new(t as u64 + 1);
            for i in 0..n {
                let id = t * 1_000_000 + i * 2;
                let action = pick(&mut rng);
                events.lock().unwrap().plan.insert(id, action);
                let mut pooled = checkout().await;
                let conn: &mut Conn<C> = &mut pooled;
                order(conn, id, action, &mut rng, &events, t).await;
                if action == Action::Cancel {
                    assert!(
                        is_broken(conn),
                        "order {id}: a cancelled transaction's connection is not broken"
                    );
                } else {
                    assert!(!conn.in_transaction(), "order {id} left a transaction open");
                    assert!(
                        !is_broken(conn),
                        "order {id} ({action:?}) broke its connection"
                    );
                }
            }
        })));
    }
    for task in tasks {
        task.await.expect("a worker task failed");
    }
    let elapsed = started.elapsed();

    // Wait until the hooks handed to spawned tasks have run.
    let cancels = events
        .lock()
        .unwrap()
        .plan
        .values()
        .filter(|a| **a == Action::Cancel)
        .count();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spawned: u32 = events.lock().unwrap().spawned.values().sum();
        if spawned as usize >= cancels || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(checkout); // the pool closes once its tasks let go of it
    let table = read().await;

    // The cross-check.
    let ev = events.lock().unwrap();
    assert!(ev.strays.is_empty(), "{label}: {:?}", ev.strays);
    let count = |id, kind| ev.counts.get(&(id, kind)).copied().unwrap_or(0);
    let spawned = |id, kind| ev.spawned.get(&(id, kind)).copied().unwrap_or(0);
    let mut expected = BTreeSet::new();
    let mut tally = BTreeMap::<&str, usize>::new();
    for (&id, &action) in &ev.plan {
        let mut check = |id: i64, commits: bool, what: &'static str| {
            *tally.entry(what).or_default() += 1;
            assert_eq!(
                table.contains(&id),
                commits,
                "{label}: order {id} ({action:?}) in the table"
            );
            let (c, r) = (count(id, Kind::Commit), count(id, Kind::Rollback));
            if commits {
                expected.insert(id);
                assert_eq!(
                    (c, r),
                    (1, 0),
                    "{label}: committed order {id}: (on_commit, on_rollback) runs"
                );
            } else {
                assert_eq!(
                    (c, r),
                    (0, 1),
                    "{label}: order {id} ({what}): (on_commit, on_rollback) runs"
                );
            }
            let on_task = spawned(id, Kind::Commit) + spawned(id, Kind::Rollback);
            let expect_on_task = u32::from(what == "cancelled");
            assert_eq!(
                on_task, expect_on_task,
                "{label}: order {id} ({what}): hooks run on a spawned task"
            );
        };
        match action {
            Action::Commit => check(id, true, "committed"),
            Action::Rollback => check(id, false, "rolled back"),
            Action::SavepointRollback => {
                check(id, true, "committed");
                check(id + 1, false, "savepoint rolled back");
            }
            Action::Cancel => check(id, false, "cancelled"),
        }
    }
    assert_eq!(table, expected, "{label}: rows no transaction committed");
    assert_eq!(ev.plan.len() as i64, TASKS * n);
    let hooks: u32 = ev.counts.values().sum();
    let on_tasks: u32 = ev.spawned.values().sum();
    eprintln!(
        "{label}: {TASKS} tasks x {n} transactions through a pool of {POOL_SIZE} in {:.1}s: \
         {} committed ({} of them with a savepoint rolled back), {} rolled back, {} savepoints \
         rolled back, {} cancelled mid-body; {hooks} hooks ran, {on_tasks} of them on spawned tasks",
        elapsed.as_secs_f64(),
        tally.get("committed").copied().unwrap_or(0),
        tally.get("savepoint rolled back").copied().unwrap_or(0),
        tally.get("rolled back").copied().unwrap_or(0),
        tally.get("savepoint rolled back").copied().unwrap_or(0),
        tally.get("cancelled").copied().unwrap_or(0),
    );
}
