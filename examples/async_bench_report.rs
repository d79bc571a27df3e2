//! What the async wrapper, `AsyncHookedConnection`, adds over raw
//! diesel-async, side by side, as ratios (see "Async wrapper" in
//! BENCHMARKS.md for how to read the output).
//!
//! ```text
//! cargo build --release --example async_bench_report --features async
//! target/release/examples/async_bench_report               # timed, interleaved
//! target/release/examples/async_bench_report --callgrind   # instruction counts (needs valgrind)
//! ```
//!
//! Deterministic by construction: the connection is diesel-async's
//! `SyncConnectionWrapper<SqliteConnection, Inline>` on an in-memory SQLite
//! database, where [`Inline`] runs each "blocking" task at once and returns
//! a ready future: no tokio, no thread. Every future is driven by a
//! [`block_on`] with a no-op waker, and is ready on its first poll.
//!
//! Variants, each on its own connection:
//!
//! * `raw`: diesel-async's `AsyncConnection::transaction`, no hooks;
//! * `queue`: the same plus a hand-rolled queue, what a user would write by
//!   hand: `Vec<Box<dyn FnOnce() + Send>>` for sync hooks, run after the
//!   transaction committed, or `Vec<Pin<Box<dyn Future<Output = ()> +
//!   Send>>>` for async ones, awaited after it; for savepoints the hooks of
//!   the rolled-back savepoint are truncated away by hand. Both `Vec`s keep
//!   their capacity between transactions;
//! * `hooked`: `AsyncHookedConnection::transaction` with `on_commit` /
//!   `on_commit_async`.
//!
//! Every sync hook is the same zero-sized closure on both sides (it adds 1
//! to a static counter: no capture, so no box allocates); every async hook
//! is the same capture-less `async` block doing the same.
//!
//! Modes:
//!
//! * (default) timed: for each scenario the three variants run in one
//!   process, interleaved (every round runs each variant for one batch, in
//!   a rotating order), many rounds; per-round ratios, median and spread.
//!   Then allocations per transaction (counting allocator).
//! * `--callgrind`: runs this program under `valgrind --tool=callgrind`
//!   once per scenario, variant and length (two lengths), and prints
//!   instructions per transaction, `(Ir(long) - Ir(short)) / (long - short)`,
//!   so set-up and warm-up cancel out.
//! * `--callgrind-one <scenario> <variant> <iterations>`: what `--callgrind`
//!   runs under valgrind: set up, warm up, then `iterations` transactions
//!   (scenarios `empty`, `insert`, `hooksN`, `asyncN`, `savepoints`;
//!   variants `raw`, `queue`, `hooked`).
//!
//! Options: `--rounds N` (timed rounds per scenario, default 151),
//! `--batch-ms MS` (time per batch, default 1), `--keep DIR` (keep the
//! callgrind output files in DIR, for `callgrind_annotate`).

// The 11 nested transaction futures of the savepoint scenario, written out
// (not boxed), are deeper than the default limit allows for their layout.
#![recursion_limit = "256"]

use std::error::Error as StdError;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::result::Error;
use diesel::{Connection as _, ExpressionMethods, SqliteConnection};
use diesel_async::sync_connection_wrapper::{SpawnBlocking, SyncConnectionWrapper};
use diesel_async::AsyncConnection;
use diesel_on_commit::AsyncHookedConnection;
use report::{callgrind_instructions, fmt_ns, summary, Counting};

#[path = "../benches/common/report.rs"]
mod report;

/// Allocations made by `f`.
fn allocations(f: impl FnOnce()) -> u64 {
    report::allocations(f).0
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---------------------------------------------------------------------------
// No runtime: tasks run at once, futures are ready at once.

/// diesel-async's `SpawnBlocking` without a thread: the task runs inside
/// `spawn_blocking`, and the future returned is already ready.
struct Inline;

impl SpawnBlocking for Inline {
    fn spawn_blocking<'a, R>(
        &mut self,
        task: impl FnOnce() -> R + Send + 'static,
    ) -> Pin<
        Box<dyn Future<Output = Result<R, Box<dyn StdError + Send + Sync + 'static>>> + Send + 'a>,
    >
    where
        R: Send + 'static,
    {
        Box::pin(std::future::ready(Ok(task())))
    }

    fn get_runtime() -> Self {
        Inline
    }
}

/// Polls `future` with a no-op waker until it is ready (here: at once).
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
}

type Raw = SyncConnectionWrapper<SqliteConnection, Inline>;
type Hooked = AsyncHookedConnection<Raw>;
type Queue = Vec<Box<dyn FnOnce() + Send>>;
type AsyncQueue = Vec<Pin<Box<dyn Future<Output = ()> + Send>>>;

diesel::table! {
    bench_items (id) {
        id -> BigInt,
        v -> BigInt,
    }
}

/// How many hooks ran (checked once before measuring).
static RAN: AtomicU64 = AtomicU64::new(0);

/// A sync hook: zero-sized (captures nothing), so boxing it allocates
/// nothing on either side.
#[inline(always)]
fn hook() -> impl FnOnce() + Send + 'static {
    || {
        RAN.fetch_add(1, Relaxed);
    }
}

/// An async hook: the `async` block of an `async fn` without parameters,
/// so it captures nothing (its future is one byte: one box on each side).
async fn async_hook() {
    RAN.fetch_add(1, Relaxed);
}

/// A fresh in-memory SQLite database with the benchmark table.
fn sqlite() -> SqliteConnection {
    let mut conn = SqliteConnection::establish(":memory:").expect("in-memory SQLite");
    conn.batch_execute("CREATE TABLE bench_items (id INTEGER PRIMARY KEY, v BIGINT NOT NULL)")
        .expect("create bench_items");
    conn
}

fn raw() -> Raw {
    SyncConnectionWrapper::<SqliteConnection, Inline>::new(sqlite())
}

// ---------------------------------------------------------------------------
// Scenarios.

/// Savepoints: the outermost transaction plus this many nested savepoints.
const SAVEPOINTS: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// `BEGIN; COMMIT`.
    Empty,
    /// `BEGIN; INSERT; COMMIT`.
    Insert,
    /// `n` sync `on_commit` hooks in an otherwise empty transaction.
    Hooks(usize),
    /// `n` `on_commit_async` hooks in an otherwise empty transaction.
    Async(usize),
    /// The outermost transaction and [`SAVEPOINTS`] nested savepoints, one
    /// sync hook per level; the innermost savepoint rolls back (its hook is
    /// dropped), the others are released and the outermost commits.
    Savepoints,
}

impl Scenario {
    fn name(self) -> String {
        match self {
            Scenario::Empty => "empty".into(),
            Scenario::Insert => "insert".into(),
            Scenario::Hooks(n) => format!("hooks{n}"),
            Scenario::Async(n) => format!("async{n}"),
            Scenario::Savepoints => "savepoints".into(),
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "empty" => Some(Scenario::Empty),
            "insert" => Some(Scenario::Insert),
            "savepoints" => Some(Scenario::Savepoints),
            _ => {
                if let Some(n) = s.strip_prefix("hooks") {
                    n.parse().ok().map(Scenario::Hooks)
                } else {
                    s.strip_prefix("async")?.parse().ok().map(Scenario::Async)
                }
            }
        }
    }

    fn describe(self) -> String {
        match self {
            Scenario::Empty => "empty transaction".into(),
            Scenario::Insert => "one INSERT".into(),
            Scenario::Hooks(1) => "1 sync hook".into(),
            Scenario::Hooks(n) => format!("{n} sync hooks"),
            Scenario::Async(n) => format!("{n} async hooks"),
            Scenario::Savepoints => {
                format!("{SAVEPOINTS} nested savepoints, hook per level, innermost rolled back")
            }
        }
    }

    /// Whether the wrapper is judged against the hand-rolled queue (hooks
    /// involved) rather than against raw diesel-async.
    fn has_hooks(self) -> bool {
        !matches!(self, Scenario::Empty | Scenario::Insert)
    }

    /// Whether the raw variant of this scenario is the empty transaction.
    fn raw_is_empty(self) -> bool {
        matches!(self, Scenario::Hooks(_) | Scenario::Async(_))
    }

    /// Hooks that run per transaction with the queue or the wrapper.
    fn hooks_run(self) -> u64 {
        match self {
            Scenario::Empty | Scenario::Insert => 0,
            Scenario::Hooks(n) | Scenario::Async(n) => n as u64,
            Scenario::Savepoints => SAVEPOINTS,
        }
    }

    /// Hooks registered per transaction (the innermost savepoint's is
    /// dropped).
    fn registered(self) -> u64 {
        match self {
            Scenario::Savepoints => SAVEPOINTS + 1,
            s => s.hooks_run(),
        }
    }

    fn base(self) -> Variant {
        if self.has_hooks() {
            Variant::Queue
        } else {
            Variant::Raw
        }
    }
}

const MAIN: [Scenario; 7] = [
    Scenario::Empty,
    Scenario::Insert,
    Scenario::Hooks(1),
    Scenario::Hooks(10),
    Scenario::Hooks(100),
    Scenario::Async(10),
    Scenario::Savepoints,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Raw,
    Queue,
    Hooked,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Raw, Variant::Queue, Variant::Hooked];

    fn name(self) -> &'static str {
        match self {
            Variant::Raw => "raw",
            Variant::Queue => "queue",
            Variant::Hooked => "hooked",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == s)
    }
}

/// The one INSERT (the DSL statement, cached by SQLite's statement cache on
/// every side), on a raw or a wrapped connection.
macro_rules! insert_one {
    ($c:expr, $v:expr) => {
        diesel_async::RunQueryDsl::execute(
            diesel::insert_into(bench_items::table).values(bench_items::v.eq($v)),
            $c,
        )
        .await
        .map(drop)
    };
}

/// The savepoint nest without hooks: one level per token after `;`, plus
/// the innermost, which rolls back. On a raw or a wrapped connection.
/// Written out by a macro, not by recursion: a recursive `async fn` would
/// need a boxed future per level.
macro_rules! raw_nest {
    ($c:expr;) => {
        $c.transaction::<(), Error, _>(async |_| Err(Error::RollbackTransaction))
            .await
    };
    ($c:expr; $_level:tt $($rest:tt)*) => {
        $c.transaction::<(), Error, _>(async |c| {
            let _ = raw_nest!(c; $($rest)*);
            Ok(())
        })
        .await
    };
}

/// The nest with a hand-rolled queue `$q` (a `&mut Queue`): a hook pushed
/// per level; when a savepoint rolls back, its hooks are truncated away.
macro_rules! queue_nest {
    ($c:expr, $q:ident;) => {
        $c.transaction::<(), Error, _>(async |_| {
            $q.push(Box::new(hook()));
            Err(Error::RollbackTransaction)
        })
        .await
    };
    ($c:expr, $q:ident; $_level:tt $($rest:tt)*) => {
        $c.transaction::<(), Error, _>(async |c| {
            $q.push(Box::new(hook()));
            let mark = $q.len();
            if queue_nest!(c, $q; $($rest)*).is_err() {
                $q.truncate(mark); // the savepoint rolled back: drop its hooks
            }
            Ok(())
        })
        .await
    };
}

/// The nest on the wrapper: `on_commit` per level.
macro_rules! hooked_nest {
    ($c:expr;) => {
        $c.transaction::<(), Error, _>(async |c| {
            c.on_commit(hook());
            Err(Error::RollbackTransaction)
        })
        .await
    };
    ($c:expr; $_level:tt $($rest:tt)*) => {
        $c.transaction::<(), Error, _>(async |c| {
            c.on_commit(hook());
            let _ = hooked_nest!(c; $($rest)*);
            Ok(())
        })
        .await
    };
}

/// One transaction of raw diesel-async (hook scenarios: the empty one).
async fn raw_tx(conn: &mut Raw, s: Scenario, v: i64) {
    match s {
        Scenario::Empty | Scenario::Hooks(_) | Scenario::Async(_) => conn
            .transaction::<(), Error, _>(async |_| Ok(()))
            .await
            .unwrap(),
        Scenario::Insert => conn
            .transaction::<(), Error, _>(async move |c| insert_one!(c, v))
            .await
            .unwrap(),
        Scenario::Savepoints => raw_nest!(conn; 1 2 3 4 5 6 7 8 9 10).unwrap(),
    }
}

/// One transaction of raw diesel-async plus the hand-rolled queues, run
/// (awaited) once the transaction committed.
async fn queue_tx(conn: &mut Raw, q: &mut Queue, aq: &mut AsyncQueue, s: Scenario, v: i64) {
    match s {
        Scenario::Empty => conn
            .transaction::<(), Error, _>(async |_| Ok(()))
            .await
            .unwrap(),
        Scenario::Insert => conn
            .transaction::<(), Error, _>(async move |c| insert_one!(c, v))
            .await
            .unwrap(),
        Scenario::Hooks(n) => conn
            .transaction::<(), Error, _>(async |_| {
                for _ in 0..n {
                    q.push(Box::new(hook()));
                }
                Ok(())
            })
            .await
            .unwrap(),
        Scenario::Async(n) => conn
            .transaction::<(), Error, _>(async |_| {
                for _ in 0..n {
                    aq.push(Box::pin(async_hook()));
                }
                Ok(())
            })
            .await
            .unwrap(),
        Scenario::Savepoints => queue_nest!(conn, q; 1 2 3 4 5 6 7 8 9 10).unwrap(),
    }
    // Committed: run the queues.
    for h in q.drain(..) {
        h();
    }
    for f in aq.drain(..) {
        f.await;
    }
}

/// One transaction on the wrapper.
async fn hooked_tx(conn: &mut Hooked, s: Scenario, v: i64) {
    match s {
        Scenario::Empty => conn
            .transaction::<(), Error, _>(async |_| Ok(()))
            .await
            .unwrap(),
        Scenario::Insert => conn
            .transaction::<(), Error, _>(async move |c| insert_one!(c, v))
            .await
            .unwrap(),
        Scenario::Hooks(n) => conn
            .transaction::<(), Error, _>(async move |c| {
                for _ in 0..n {
                    c.on_commit(hook());
                }
                Ok(())
            })
            .await
            .unwrap(),
        Scenario::Async(n) => conn
            .transaction::<(), Error, _>(async move |c| {
                for _ in 0..n {
                    c.on_commit_async(async_hook());
                }
                Ok(())
            })
            .await
            .unwrap(),
        Scenario::Savepoints => hooked_nest!(conn; 1 2 3 4 5 6 7 8 9 10).unwrap(),
    }
}

/// The three sides, each on its own in-memory database.
struct Fixture {
    raw: Raw,
    queued: Raw,
    queue: Queue,
    async_queue: AsyncQueue,
    hooked: Hooked,
    next: i64,
}

impl Fixture {
    fn new() -> Self {
        Self {
            raw: raw(),
            queued: raw(),
            queue: Vec::new(),
            async_queue: Vec::new(),
            hooked: AsyncHookedConnection::new(raw()),
            next: 0,
        }
    }

    /// One transaction of `s`, the `v` way.
    #[inline(never)]
    fn run(&mut self, s: Scenario, v: Variant) {
        self.next += 1;
        let n = self.next;
        match v {
            Variant::Raw => block_on(raw_tx(&mut self.raw, s, n)),
            Variant::Queue => block_on(queue_tx(
                &mut self.queued,
                &mut self.queue,
                &mut self.async_queue,
                s,
                n,
            )),
            Variant::Hooked => block_on(hooked_tx(&mut self.hooked, s, n)),
        }
    }
}

/// Every scenario and variant runs its hooks: as many as expected, none
/// for raw diesel-async.
fn self_check() {
    let mut fx = Fixture::new();
    for s in MAIN {
        for v in Variant::ALL {
            RAN.store(0, Relaxed);
            fx.run(s, v);
            let expected = if v == Variant::Raw { 0 } else { s.hooks_run() };
            assert_eq!(
                RAN.load(Relaxed),
                expected,
                "{} {}: hooks run",
                s.name(),
                v.name()
            );
        }
    }
}

fn base_name(s: Scenario) -> &'static str {
    if s.has_hooks() {
        "raw + queue"
    } else {
        "raw"
    }
}

// ---------------------------------------------------------------------------
// Timed, interleaved rounds.

struct Opts {
    rounds: usize,
    batch: Duration,
    keep: Option<PathBuf>,
}

/// Runs each variant of `s` for one batch per round, in a rotating order
/// (reversed every other round), for `rounds` rounds. Returns, per variant,
/// the time of one transaction in each round (ns).
fn interleave(fx: &mut Fixture, s: Scenario, opts: &Opts) -> Vec<Vec<f64>> {
    let jobs = Variant::ALL;
    // Warm up and size each job's batch to about `opts.batch`.
    let batches: Vec<usize> = jobs
        .iter()
        .map(|&v| {
            let mut n = 1usize;
            loop {
                let t = Instant::now();
                for _ in 0..n {
                    fx.run(s, v);
                }
                if t.elapsed() >= opts.batch || n >= 1 << 20 {
                    break n;
                }
                n *= 2;
            }
        })
        .collect();
    let mut samples = vec![Vec::with_capacity(opts.rounds); jobs.len()];
    for round in 0..opts.rounds {
        for k in 0..jobs.len() {
            let mut j = (k + round) % jobs.len();
            if round % 2 == 1 {
                j = jobs.len() - 1 - j;
            }
            let n = batches[j];
            let t = Instant::now();
            for _ in 0..n {
                fx.run(s, jobs[j]);
            }
            samples[j].push(t.elapsed().as_nanos() as f64 / n as f64);
        }
    }
    samples
}

fn timed(opts: &Opts) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    println!("Machine: {cpus} CPUs, load average {load} at start.");
    println!(
        "Timed, interleaved: {} rounds per scenario, ~{} ms per batch; time = median per transaction; \
         ratio = median of per-round ratios (wrapper / base), p10–p90 of those.\n",
        opts.rounds,
        opts.batch.as_millis()
    );
    let mut fx = Fixture::new();
    println!("| scenario | raw diesel-async | raw + Vec queue | AsyncHookedConnection | ratio | p10–p90 | against | wrapper / raw |");
    println!("|---|---:|---:|---:|---:|---|---|---:|");
    for s in MAIN {
        let samples = interleave(&mut fx, s, opts);
        let (b, h, r) = (
            s.base() as usize,
            Variant::Hooked as usize,
            Variant::Raw as usize,
        );
        let ratios: Vec<f64> = (0..opts.rounds)
            .map(|i| samples[h][i] / samples[b][i])
            .collect();
        let vs_raw: Vec<f64> = (0..opts.rounds)
            .map(|i| samples[h][i] / samples[r][i])
            .collect();
        let ns = [0, 1, 2].map(|i| summary(&samples[i]).0);
        let (m, p10, p90) = summary(&ratios);
        println!(
            "| {} ({}) | {} | {} | {} | **{m:.3}** | {p10:.3}–{p90:.3} | {} | {:.3} |",
            s.describe(),
            s.name(),
            fmt_ns(ns[0]),
            fmt_ns(ns[1]),
            fmt_ns(ns[2]),
            base_name(s),
            summary(&vs_raw).0,
        );
    }
    println!("\n## Allocations (counting allocator)\n");
    alloc_table();
}

/// A hookless workload, written for raw diesel-async and for the wrapper.
type AllocCase = (&'static str, fn(&mut Raw), fn(&mut Hooked));

fn alloc_table() {
    let mut fx = Fixture::new();
    // Warm the statement caches and the queues.
    for s in MAIN {
        for v in Variant::ALL {
            for _ in 0..3 {
                fx.run(s, v);
            }
        }
    }
    const N: u64 = 1000;
    println!("| hookless transaction | raw diesel-async: allocations per transaction | AsyncHookedConnection | wrapper − raw |");
    println!("|---|---:|---:|---:|");
    let cases: [AllocCase; 3] = [
        (
            "empty",
            |c| block_on(raw_tx(c, Scenario::Empty, 0)),
            |c| block_on(hooked_tx(c, Scenario::Empty, 0)),
        ),
        (
            "one INSERT",
            |c| block_on(raw_tx(c, Scenario::Insert, 7)),
            |c| block_on(hooked_tx(c, Scenario::Insert, 7)),
        ),
        (
            "10 nested savepoints, innermost rolled back",
            |c| block_on(async { raw_nest!(c; 1 2 3 4 5 6 7 8 9 10).unwrap() }),
            |c| block_on(async { raw_nest!(c; 1 2 3 4 5 6 7 8 9 10).unwrap() }),
        ),
    ];
    let mut all_zero = true;
    for (name, raw, hooked) in cases {
        let ra = allocations(|| {
            for _ in 0..N {
                raw(&mut fx.raw)
            }
        });
        let ha = allocations(|| {
            for _ in 0..N {
                hooked(&mut fx.hooked)
            }
        });
        let (ra, ha) = (ra as f64 / N as f64, ha as f64 / N as f64);
        all_zero &= ha <= ra;
        println!("| {name} | {ra:.2} | {ha:.2} | **{:+.2}** |", ha - ra);
    }
    println!(
        "\nAllocations per hookless transaction: the wrapper adds {}",
        if all_zero { "none" } else { "SOME" }
    );
    println!(
        "\n| with hooks | raw + queue: allocations per hook registered | AsyncHookedConnection |"
    );
    println!("|---|---:|---:|");
    let hookless_nest = |fx: &mut Fixture, v: Variant| match v {
        Variant::Hooked => {
            let c = &mut fx.hooked;
            block_on(async { raw_nest!(c; 1 2 3 4 5 6 7 8 9 10).unwrap() })
        }
        _ => {
            let c = &mut fx.queued;
            block_on(async { raw_nest!(c; 1 2 3 4 5 6 7 8 9 10).unwrap() })
        }
    };
    for s in [
        Scenario::Hooks(10),
        Scenario::Async(10),
        Scenario::Savepoints,
    ] {
        // (allocations with the hooks − the same transaction without) / hooks
        let per = |fx: &mut Fixture, v: Variant| {
            let with = allocations(|| {
                for _ in 0..N {
                    fx.run(s, v)
                }
            });
            let without = allocations(|| {
                for _ in 0..N {
                    match s {
                        Scenario::Savepoints => hookless_nest(fx, v),
                        _ => fx.run(Scenario::Empty, v),
                    }
                }
            });
            (with as f64 - without as f64) / (N * s.registered()) as f64
        };
        let q = per(&mut fx, Variant::Queue);
        let h = per(&mut fx, Variant::Hooked);
        println!("| {} | {q:.2} | {h:.2} |", s.describe());
    }
}

// ---------------------------------------------------------------------------
// Instruction counts.

/// The two run lengths (transactions) for a scenario.
fn lengths(s: Scenario) -> (u64, u64) {
    match s {
        Scenario::Hooks(n) | Scenario::Async(n) if n >= 100 => (50, 300),
        Scenario::Savepoints => (50, 300),
        _ => (200, 1200),
    }
}

fn callgrind_one(s: Scenario, v: Variant, iterations: u64) {
    let mut fx = Fixture::new();
    let warm = lengths(s).0.min(20);
    for _ in 0..warm {
        fx.run(s, v);
    }
    for _ in 0..iterations {
        fx.run(s, v);
    }
}

fn run_callgrind(exe: &Path, dir: &Path, s: Scenario, v: Variant, n: u64) -> u64 {
    callgrind_instructions(exe, dir, &s.name(), v.name(), n)
}

fn callgrind(opts: &Opts) {
    let exe = std::env::current_exe().expect("own path");
    let dir = opts.keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("async-bench-callgrind-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).expect("callgrind output dir");
    let mut per_iter = std::collections::BTreeMap::new();
    for s in MAIN {
        for v in Variant::ALL {
            if v == Variant::Raw && s.raw_is_empty() {
                continue; // the same as raw "empty"
            }
            let (a, b) = lengths(s);
            let ia = run_callgrind(&exe, &dir, s, v, a);
            let ib = run_callgrind(&exe, &dir, s, v, b);
            let x = (ib as f64 - ia as f64) / (b - a) as f64;
            eprintln!(
                "  {:>12} {:>6}: {x:.0} instructions per transaction",
                s.name(),
                v.name()
            );
            per_iter.insert((s.name(), v.name()), x);
        }
    }
    let get = |s: Scenario, v: Variant| -> f64 {
        let s = if v == Variant::Raw && s.raw_is_empty() {
            Scenario::Empty
        } else {
            s
        };
        per_iter[&(s.name(), v.name())]
    };
    println!("Instructions per transaction (valgrind --tool=callgrind, difference of two run lengths).\n");
    println!("| scenario | raw diesel-async | raw + Vec queue | AsyncHookedConnection | ratio | against | wrapper − base |");
    println!("|---|---:|---:|---:|---:|---|---:|");
    for s in MAIN {
        let [r, q, h] = Variant::ALL.map(|v| get(s, v));
        let b = get(s, s.base());
        println!(
            "| {} ({}) | {r:.0} | {q:.0} | {h:.0} | **{:.3}** | {} | {:+.0} |",
            s.describe(),
            s.name(),
            h / b,
            base_name(s),
            h - b,
        );
    }
    println!("\n| per hook | raw + Vec queue: instructions per hook | AsyncHookedConnection | wrapper / queue |");
    println!("|---|---:|---:|---:|");
    for s in [Scenario::Hooks(100), Scenario::Async(10)] {
        let n = s.hooks_run() as f64;
        let q = (get(s, Variant::Queue) - get(Scenario::Empty, Variant::Queue)) / n;
        let h = (get(s, Variant::Hooked) - get(Scenario::Empty, Variant::Hooked)) / n;
        println!("| {} | {q:.1} | {h:.1} | {:.2} |", s.describe(), h / q);
    }
    if opts.keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("\ncallgrind output kept in {}", dir.display());
    }
}

// ---------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--callgrind-one") {
        let usage = "--callgrind-one <empty|insert|hooksN|asyncN|savepoints> <raw|queue|hooked> <iterations>";
        let s = args.get(1).and_then(|s| Scenario::parse(s)).expect(usage);
        let v = args.get(2).and_then(|v| Variant::parse(v)).expect(usage);
        let n = args.get(3).and_then(|n| n.parse().ok()).expect(usage);
        callgrind_one(s, v, n);
        return;
    }
    let mut opts = Opts {
        rounds: 151,
        batch: Duration::from_millis(1),
        keep: None,
    };
    let mut mode_callgrind = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--callgrind" => mode_callgrind = true,
            "--rounds" => opts.rounds = it.next().and_then(|n| n.parse().ok()).expect("--rounds N"),
            "--batch-ms" => {
                opts.batch = Duration::from_millis(
                    it.next()
                        .and_then(|n| n.parse().ok())
                        .expect("--batch-ms MS"),
                )
            }
            "--keep" => opts.keep = Some(it.next().expect("--keep DIR").into()),
            "--help" | "-h" => {
                println!("see the top of examples/async_bench_report.rs or BENCHMARKS.md");
                return;
            }
            other => panic!("unknown argument {other:?}; see BENCHMARKS.md"),
        }
    }
    self_check();
    if mode_callgrind {
        callgrind(&opts);
    } else {
        timed(&opts);
    }
}
