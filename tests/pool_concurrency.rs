//! Pools under concurrency (RELIABILITY.md): r2d2 and
//! deadpool-diesel pools of 8 wrapped connections, 16 threads (tasks) ×
//! `POOL_TX_PER_THREAD` transactions each (default 50; CI sets 500), on
//! PostgreSQL and MySQL, with random commits, rollbacks, inner savepoint
//! rollbacks and panics. Cross-checked at the end against the database:
//! every committed order's on_commit hook ran exactly once and its
//! on_rollback hook never; every order that was not committed had no
//! on_commit hook and exactly one on_rollback hook; every hook ran on the
//! thread and the database session of the transaction that registered it.
#![cfg(any(feature = "postgres", feature = "mysql"))]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use diesel::connection::{Connection, SimpleConnection};
use diesel::prelude::*;
use diesel::result::Error;
use diesel_on_commit::HookedConnection;

const POOL_SIZE: u32 = 8;
const THREADS: i64 = 16;

fn per_thread() -> i64 {
    std::env::var("POOL_TX_PER_THREAD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

/// What happens to order `id`; deterministic, so the check knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Commit,
    /// The body returns `Err`.
    Rollback,
    /// The order commits; a savepoint inside it (order `id + 1`) rolls back.
    SavepointRollback,
    /// The body panics (caught by the worker).
    Panic,
}

fn action(id: i64) -> Action {
    let h = (id as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(17)
        % 10;
    match h {
        0..=4 => Action::Commit,
        5..=6 => Action::Rollback,
        7..=8 => Action::SavepointRollback,
        _ => Action::Panic,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Commit,
    Rollback,
}

#[derive(Default)]
struct Events {
    counts: HashMap<(i64, Kind), u32>,
    /// Hooks that ran on another thread or session than their transaction's.
    strays: Vec<String>,
}

type Shared = Arc<Mutex<Events>>;

fn record(events: &Shared, id: i64, kind: Kind) {
    *events.lock().unwrap().counts.entry((id, kind)).or_default() += 1;
}

/// The current database session's id.
trait Session: Connection + 'static {
    fn session(conn: &mut HookedConnection<Self>) -> QueryResult<i64>;
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[cfg(feature = "postgres")]
impl Session for diesel::pg::PgConnection {
    fn session(conn: &mut HookedConnection<Self>) -> QueryResult<i64> {
        diesel::sql_query("SELECT pg_backend_pid()::int8 AS n")
            .get_result::<N>(conn)
            .map(|r| r.n)
    }
}

#[cfg(feature = "mysql")]
impl Session for diesel::mysql::MysqlConnection {
    fn session(conn: &mut HookedConnection<Self>) -> QueryResult<i64> {
        diesel::sql_query("SELECT CAST(CONNECTION_ID() AS SIGNED) AS n")
            .get_result::<N>(conn)
            .map(|r| r.n)
    }
}

/// One order's transaction on a checked-out connection. Panics for
/// `Action::Panic` (after registering its hooks).
fn order<C: Session>(conn: &mut HookedConnection<C>, id: i64, events: &Shared) -> QueryResult<()> {
    let session = C::session(conn)?;
    let thread = std::thread::current().id();
    let act = action(id);
    conn.transaction(|c| -> QueryResult<()> {
        c.batch_execute(&format!("INSERT INTO orders (id) VALUES ({id})"))?;
        let e = events.clone();
        c.on_commit_with(move |c: &mut HookedConnection<C>| -> QueryResult<()> {
            record(&e, id, Kind::Commit);
            let now = C::session(c)?;
            if now != session || std::thread::current().id() != thread {
                e.lock().unwrap().strays.push(format!(
                    "order {id}: registered on session {session} {thread:?}, ran on {now} {:?}",
                    std::thread::current().id()
                ));
            }
            Ok(())
        });
        let e = events.clone();
        c.on_rollback(move || {
            if std::thread::current().id() != thread {
                e.lock()
                    .unwrap()
                    .strays
                    .push(format!("order {id}: on_rollback on another thread"));
            }
            record(&e, id, Kind::Rollback)
        });
        if act == Action::SavepointRollback {
            let sub = id + 1;
            let r = c.transaction(|c| -> QueryResult<()> {
                c.batch_execute(&format!("INSERT INTO orders (id) VALUES ({sub})"))?;
                let e = events.clone();
                c.on_commit(move || record(&e, sub, Kind::Commit));
                let e = events.clone();
                c.on_rollback(move || record(&e, sub, Kind::Rollback));
                Err(Error::RollbackTransaction)
            });
            assert!(r.is_err());
        }
        match act {
            Action::Commit | Action::SavepointRollback => Ok(()),
            Action::Rollback => Err(Error::RollbackTransaction),
            Action::Panic => panic!("order {id} panics"),
        }
    })
}

/// Runs one order, catching the panic it may raise.
fn order_caught<C: Session>(conn: &mut HookedConnection<C>, id: i64, events: &Shared) {
    let r = catch_unwind(AssertUnwindSafe(|| order(conn, id, events)));
    match (action(id), r) {
        (Action::Panic, Err(_)) => {}
        (Action::Commit | Action::SavepointRollback, Ok(Ok(()))) => {}
        (Action::Rollback, Ok(Err(Error::RollbackTransaction))) => {}
        (a, Ok(r)) => panic!("order {id} ({a:?}): unexpected result {r:?}"),
        (a, Err(p)) => panic!(
            "order {id} ({a:?}): unexpected panic {}",
            common::panic_text(&*p)
        ),
    }
    assert!(!conn.in_transaction(), "order {id} left a transaction open");
}

/// Every order id used: thread `t`'s `i`-th order is `t * 1_000_000 + i * 2`
/// (`+ 1` for its savepoint).
fn ids() -> impl Iterator<Item = i64> {
    let n = per_thread();
    (0..THREADS).flat_map(move |t| (0..n).map(move |i| t * 1_000_000 + i * 2))
}

/// The cross-check; returns the number of transactions checked.
fn cross_check(label: &str, committed: BTreeSet<i64>, events: &Shared) -> usize {
    let ev = events.lock().unwrap();
    assert!(
        ev.strays.is_empty(),
        "{label}: hooks ran on another connection: {:?}",
        ev.strays
    );
    let count = |id, kind| ev.counts.get(&(id, kind)).copied().unwrap_or(0);
    let mut checked = 0;
    let mut expected_committed = BTreeSet::new();
    for id in ids() {
        let mut check = |id: i64, commits: bool| {
            checked += 1;
            assert_eq!(
                committed.contains(&id),
                commits,
                "{label}: order {id} ({:?})",
                action(id & !1)
            );
            if commits {
                expected_committed.insert(id);
                assert_eq!(
                    count(id, Kind::Commit),
                    1,
                    "{label}: committed order {id}: on_commit hooks"
                );
                assert_eq!(
                    count(id, Kind::Rollback),
                    0,
                    "{label}: committed order {id}: on_rollback hooks"
                );
            } else {
                assert_eq!(
                    count(id, Kind::Commit),
                    0,
                    "{label}: rolled-back order {id}: on_commit hooks"
                );
                assert_eq!(
                    count(id, Kind::Rollback),
                    1,
                    "{label}: rolled-back order {id}: on_rollback hooks"
                );
            }
        };
        match action(id) {
            Action::Commit => check(id, true),
            Action::Rollback | Action::Panic => check(id, false),
            Action::SavepointRollback => {
                check(id, true);
                check(id + 1, false);
            }
        }
    }
    assert_eq!(
        committed, expected_committed,
        "{label}: rows no transaction committed"
    );
    let hooks: u32 = ev.counts.values().sum();
    eprintln!(
        "{label}: {checked} transactions checked, {hooks} hooks ran, {} orders committed",
        committed.len()
    );
    checked
}

fn committed_ids<C: Connection<Backend = B> + 'static, B>(conn: &mut C) -> BTreeSet<i64>
where
    B: diesel::backend::Backend,
    diesel::query_builder::SqlQuery: diesel::query_dsl::methods::LoadQuery<'static, C, Id>,
{
    let rows: Vec<Id> = diesel::sql_query("SELECT id FROM orders")
        .load(conn)
        .unwrap();
    rows.into_iter().map(|r| r.id).collect()
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

/// Quiet the panics the orders raise on purpose.
fn quiet() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !common::panic_text(info.payload()).ends_with(" panics") {
                default(info);
            }
        }));
    });
}

// ------------------------------------------------------------------- r2d2

#[cfg(feature = "r2d2")]
fn with_r2d2<C>(url: &str, label: &str, read: impl FnOnce() -> BTreeSet<i64>) -> usize
where
    C: Session + diesel::r2d2::R2D2Connection,
{
    use diesel::r2d2::{ConnectionManager, Pool};
    quiet();
    let pool = Pool::builder()
        .max_size(POOL_SIZE)
        .connection_timeout(std::time::Duration::from_secs(60))
        .build(ConnectionManager::<HookedConnection<C>>::new(url))
        .unwrap();
    let events: Shared = Arc::default();
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let pool = pool.clone();
            let events = events.clone();
            s.spawn(move || {
                for i in 0..per_thread() {
                    let id = t * 1_000_000 + i * 2;
                    let mut pooled = pool.get().expect("checkout");
                    // Through the guard, as the docs tell (rule 7).
                    let conn: &mut HookedConnection<C> = &mut pooled;
                    order_caught(conn, id, &events);
                }
            });
        }
    });
    eprintln!("{label}: {:.1}s", started.elapsed().as_secs_f64());
    drop(pool);
    cross_check(label, read(), &events)
}

// --------------------------------------------------------------- deadpool

fn with_deadpool<C>(url: &str, label: &str, read: impl FnOnce() -> BTreeSet<i64>) -> usize
where
    C: Session + Send,
    diesel::helper_types::select<diesel::dsl::AsExprOf<i32, diesel::sql_types::Integer>>:
        diesel::query_builder::QueryFragment<C::Backend>,
    diesel::query_builder::SqlQuery: diesel::query_builder::QueryFragment<C::Backend>,
{
    quiet();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let events: Shared = Arc::default();
    let started = std::time::Instant::now();
    runtime.block_on(async {
        let manager = deadpool_diesel::Manager::<HookedConnection<C>>::new(
            url,
            deadpool_diesel::Runtime::Tokio1,
        );
        let pool: deadpool_diesel::Pool<deadpool_diesel::Manager<HookedConnection<C>>> =
            deadpool_diesel::Pool::builder(manager)
                .max_size(POOL_SIZE as usize)
                .build()
                .unwrap();
        let mut tasks = Vec::new();
        for t in 0..THREADS {
            let pool = pool.clone();
            let events = events.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..per_thread() {
                    let id = t * 1_000_000 + i * 2;
                    let obj = pool.get().await.expect("checkout");
                    let events = events.clone();
                    obj.interact(move |conn: &mut HookedConnection<C>| {
                        order_caught(conn, id, &events)
                    })
                    .await
                    .unwrap_or_else(|e| panic!("order {id}: {e:?}"));
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        pool.close();
    });
    eprintln!("{label}: {:.1}s", started.elapsed().as_secs_f64());
    cross_check(label, read(), &events)
}

// ---------------------------------------------------------------- backends

#[cfg(feature = "postgres")]
mod pg {
    use super::*;
    use common::PgSchema;
    use diesel::pg::PgConnection;

    fn schema() -> PgSchema {
        let db = PgSchema::new();
        db.plain()
            .batch_execute("CREATE TABLE orders (id BIGINT PRIMARY KEY)")
            .unwrap();
        db
    }

    #[cfg(feature = "r2d2")]
    #[test]
    fn r2d2_pool_on_postgres() {
        let db = schema();
        with_r2d2::<PgConnection>(db.url(), "r2d2/postgres", || committed_ids(&mut db.plain()));
    }

    #[test]
    fn deadpool_on_postgres() {
        let db = schema();
        with_deadpool::<PgConnection>(db.url(), "deadpool/postgres", || {
            committed_ids(&mut db.plain())
        });
    }
}

#[cfg(feature = "mysql")]
mod my {
    use super::*;
    use common::MysqlDb;
    use diesel::mysql::MysqlConnection;

    fn database() -> MysqlDb {
        let db = MysqlDb::new();
        db.plain()
            .batch_execute("CREATE TABLE orders (id BIGINT PRIMARY KEY) ENGINE=InnoDB")
            .unwrap();
        db
    }

    #[cfg(feature = "r2d2")]
    #[test]
    fn r2d2_pool_on_mysql() {
        let db = database();
        with_r2d2::<MysqlConnection>(db.url(), "r2d2/mysql", || committed_ids(&mut db.plain()));
    }

    #[test]
    fn deadpool_on_mysql() {
        let db = database();
        with_deadpool::<MysqlConnection>(db.url(), "deadpool/mysql", || {
            committed_ids(&mut db.plain())
        });
    }
}
