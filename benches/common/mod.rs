//! The workloads measured by `benches/transactions.rs` (criterion) and
//! `examples/bench_report.rs` (interleaved ratios, callgrind): one
//! transaction per call, run three ways.
//!
//! * [`Variant::Raw`]: raw Diesel, no hooks at all.
//! * [`Variant::Queue`]: raw Diesel plus the practical floor for hooks, a
//!   hand-rolled `Vec<Box<dyn FnOnce() + Send>>` filled inside the
//!   transaction and run after `transaction()` returned `Ok` (for savepoints
//!   the hooks of the rolled-back savepoint are dropped by hand). The `Vec`
//!   lives beside the connection and keeps its capacity between
//!   transactions, as the wrapper's queue does: the strictest floor.
//! * [`Variant::Hooked`]: `HookedConnection<C>` with `on_commit`.
//!
//! Every hook is the same closure on all sides: it captures one `u64` (so
//! its box allocates, as a real hook that captures an id does) and adds it
//! to an atomic, so nothing can be optimized away.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use diesel::prelude::*;
use diesel::result::Error;
use diesel_on_commit::HookedConnection;

diesel::table! {
    bench_items (id) {
        id -> BigInt,
        v -> BigInt,
    }
}

/// What the hooks add to, so that they have an effect.
pub static SINK: AtomicU64 = AtomicU64::new(0);

/// The hand-rolled queue of [`Variant::Queue`].
pub type Queue = Vec<Box<dyn FnOnce() + Send>>;

/// One hook: captures a `u64` (one 8-byte box, on every side).
#[inline(always)]
pub fn hook(x: u64) -> impl FnOnce() + Send + 'static {
    move || {
        SINK.fetch_add(x, Ordering::Relaxed);
    }
}

/// Savepoint scenario: the outermost transaction plus this many nested
/// savepoints, a hook at each of the 11 levels, the innermost rolled back.
pub const SAVEPOINTS: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// `BEGIN; COMMIT`.
    Empty,
    /// `BEGIN; INSERT; COMMIT`.
    Insert,
    /// `BEGIN; COMMIT` with `n` hooks registered inside, run after COMMIT.
    Hooks(usize),
    /// The outermost transaction and [`SAVEPOINTS`] nested savepoints, one
    /// hook per level; the innermost savepoint rolls back (its hook is
    /// dropped), the others are released and the outermost commits.
    Savepoints,
}

impl Scenario {
    pub fn name(self) -> String {
        match self {
            Scenario::Empty => "empty".into(),
            Scenario::Insert => "insert".into(),
            Scenario::Hooks(n) => format!("hooks{n}"),
            Scenario::Savepoints => "savepoints".into(),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "empty" => Some(Scenario::Empty),
            "insert" => Some(Scenario::Insert),
            "savepoints" => Some(Scenario::Savepoints),
            _ => s.strip_prefix("hooks")?.parse().ok().map(Scenario::Hooks),
        }
    }

    /// Whether the wrapper is judged against the hand-rolled queue (hooks
    /// involved) rather than against raw Diesel.
    pub fn has_hooks(self) -> bool {
        matches!(self, Scenario::Hooks(_) | Scenario::Savepoints)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Raw,
    Queue,
    Hooked,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Raw, Variant::Queue, Variant::Hooked];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Raw => "raw",
            Variant::Queue => "queue",
            Variant::Hooked => "hooked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == s)
    }
}

/// The one INSERT of [`Scenario::Insert`], for each connection type (the
/// DSL statement is prepared once and cached by Diesel on every side).
pub trait InsertOne {
    fn insert_one(&mut self, v: i64) -> QueryResult<usize>;
}

macro_rules! insert_one {
    ($($conn:ty),*) => {$(
        impl InsertOne for $conn {
            #[inline]
            fn insert_one(&mut self, v: i64) -> QueryResult<usize> {
                diesel::insert_into(bench_items::table)
                    .values(bench_items::v.eq(v))
                    .execute(self)
            }
        }
    )*};
}

insert_one!(SqliteConnection, HookedConnection<SqliteConnection>);
#[cfg(feature = "postgres")]
insert_one!(diesel::PgConnection, HookedConnection<diesel::PgConnection>);

/// The three sides of one comparison, each on its own connection to its own
/// database (SQLite) or session (PostgreSQL).
pub struct Fixture<C: Connection> {
    pub raw: C,
    pub queued: C,
    pub queue: Queue,
    pub hooked: HookedConnection<C>,
    next: i64,
}

/// A fresh in-memory SQLite database with the benchmark table.
pub fn sqlite() -> SqliteConnection {
    let mut conn = SqliteConnection::establish(":memory:").expect("in-memory SQLite");
    diesel::sql_query("CREATE TABLE bench_items (id INTEGER PRIMARY KEY, v BIGINT NOT NULL)")
        .execute(&mut conn)
        .expect("create bench_items");
    conn
}

pub fn sqlite_fixture() -> Fixture<SqliteConnection> {
    Fixture::new(sqlite(), sqlite(), HookedConnection::new(sqlite()))
}

/// Three sessions to the PostgreSQL at `url`, sharing one table
/// (`bench_items`, created if missing).
#[cfg(feature = "postgres")]
pub fn pg_fixture(url: &str) -> ConnectionResult<Fixture<diesel::PgConnection>> {
    use diesel::PgConnection;
    let mut raw = PgConnection::establish(url)?;
    diesel::sql_query(
        "CREATE TABLE IF NOT EXISTS bench_items (id BIGSERIAL PRIMARY KEY, v BIGINT NOT NULL)",
    )
    .execute(&mut raw)
    .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
    Ok(Fixture::new(
        raw,
        PgConnection::establish(url)?,
        HookedConnection::new(PgConnection::establish(url)?),
    ))
}

/// An empty transaction body.
pub fn ok(_: &mut impl Sized) -> Result<(), Error> {
    Ok(())
}

impl<C> Fixture<C>
where
    C: Connection + InsertOne,
    HookedConnection<C>: InsertOne,
{
    pub fn new(raw: C, queued: C, hooked: HookedConnection<C>) -> Self {
        Self {
            raw,
            queued,
            queue: Vec::new(),
            hooked,
            next: 0,
        }
    }

    /// One transaction of `scenario`, the `variant` way.
    #[inline(never)]
    pub fn run(&mut self, scenario: Scenario, variant: Variant) {
        self.next += 1;
        let v = self.next;
        match (variant, scenario) {
            (Variant::Raw, Scenario::Empty | Scenario::Hooks(_)) => {
                self.raw.transaction(ok).unwrap();
            }
            (Variant::Raw, Scenario::Insert) => {
                self.raw.transaction(|c| c.insert_one(v).map(drop)).unwrap();
            }
            (Variant::Raw, Scenario::Savepoints) => raw_nest(&mut self.raw, 1),
            (Variant::Queue, _) => {
                let (conn, queue) = (&mut self.queued, &mut self.queue);
                match scenario {
                    Scenario::Empty => conn.transaction(ok).unwrap(),
                    Scenario::Insert => conn.transaction(|c| c.insert_one(v).map(drop)).unwrap(),
                    Scenario::Hooks(n) => conn
                        .transaction(|_| -> Result<(), Error> {
                            for i in 0..n as u64 {
                                queue.push(Box::new(hook(i)));
                            }
                            Ok(())
                        })
                        .unwrap(),
                    Scenario::Savepoints => queue_nest(conn, queue, 1).unwrap(),
                }
                // Committed: run the queue.
                for h in queue.drain(..) {
                    h();
                }
            }
            (Variant::Hooked, _) => {
                let conn = &mut self.hooked;
                match scenario {
                    Scenario::Empty => conn.transaction(ok).unwrap(),
                    Scenario::Insert => conn.transaction(|c| c.insert_one(v).map(drop)).unwrap(),
                    Scenario::Hooks(n) => conn
                        .transaction(|c| -> Result<(), Error> {
                            for i in 0..n as u64 {
                                c.on_commit(hook(i));
                            }
                            Ok(())
                        })
                        .unwrap(),
                    Scenario::Savepoints => hooked_nest(conn, 1).unwrap(),
                }
            }
        }
    }
}

/// The savepoint nest without hooks (generic: also runs on the wrapper).
pub fn raw_nest<C: Connection>(conn: &mut C, level: u32) {
    let r = conn.transaction(|c| -> Result<(), Error> {
        if level <= SAVEPOINTS {
            raw_nest(c, level + 1);
            Ok(())
        } else {
            Err(Error::RollbackTransaction)
        }
    });
    assert_eq!(r.is_ok(), level <= SAVEPOINTS);
}

fn queue_nest<C: Connection>(conn: &mut C, queue: &mut Queue, level: u32) -> Result<(), Error> {
    conn.transaction(|c| {
        queue.push(Box::new(hook(u64::from(level))));
        if level <= SAVEPOINTS {
            let mark = queue.len();
            if queue_nest(c, queue, level + 1).is_err() {
                queue.truncate(mark); // the savepoint rolled back: drop its hooks
            }
            Ok(())
        } else {
            Err(Error::RollbackTransaction)
        }
    })
}

fn hooked_nest<C: Connection>(conn: &mut HookedConnection<C>, level: u32) -> Result<(), Error> {
    conn.transaction(|c| {
        c.on_commit(hook(u64::from(level)));
        if level <= SAVEPOINTS {
            let _ = hooked_nest(c, level + 1);
            Ok(())
        } else {
            Err(Error::RollbackTransaction)
        }
    })
}
