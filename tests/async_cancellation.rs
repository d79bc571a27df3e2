//! The async wrapper's cancellation rules, on SQLite, through every entry
//! point that opens a transaction (`ENTRY_POINTS`): a transaction's future
//! is dropped after its k-th suspension, for every k until it completes,
//! once inside the tokio runtime (hooks still due run on a spawned task) and
//! once outside any runtime (each is logged at ERROR with its label). At
//! every k, every hook ran at most once, an `on_commit` hook ran only for
//! committed work, and every hook that was due either ran or was reported,
//! promptly: before the connection is touched again or dropped (the test
//! waits up to 2 s on a channel the hooks send to, then drops it).
#![cfg(all(feature = "async", feature = "tokio"))]

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::ops::DerefMut;
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::async_conn::AsyncSqlite;
use common::{capture_logs, unique, Log};
use diesel::result::{DatabaseErrorKind, Error};
use diesel::{QueryableByName, SqliteConnection};
use diesel_async::{AsyncConnection, RunQueryDsl};
use diesel_on_commit::{atomic, AsyncHookedConnection, RetryPolicy};

type Conn = AsyncHookedConnection<AsyncSqlite>;

/// Where each hook was registered (its label's line), by name.
#[derive(Clone, Default)]
struct Registry(Arc<Mutex<HashMap<&'static str, u32>>>);

impl Registry {
    fn at(&self, name: &'static str, line: u32) {
        self.0.lock().unwrap().insert(name, line);
    }
    fn line(&self, name: &str) -> Option<u32> {
        self.0.lock().unwrap().get(name).copied()
    }
}

/// What the hooks did: a log, and a channel each hook also sends its name
/// to, so the test can wait for the hooks a dropped future left due.
#[derive(Clone)]
struct Ran {
    log: Log,
    tx: mpsc::Sender<&'static str>,
}

impl Ran {
    fn push(&self, name: &'static str) {
        self.log.push(name);
        let _ = self.tx.send(name);
    }

    fn hook(&self, name: &'static str) -> impl FnOnce() + Send + 'static {
        let ran = self.clone();
        move || ran.push(name)
    }

    /// An async hook with a suspension point of its own.
    fn step(&self, name: &'static str) -> impl Future<Output = ()> + Send + 'static {
        let ran = self.clone();
        async move {
            tokio::task::yield_now().await;
            ran.push(name);
        }
    }
}

async fn insert(conn: &mut Conn, id: i32) -> Result<usize, Error> {
    diesel::sql_query(format!("INSERT INTO orders (id) VALUES ({id})"))
        .execute(conn)
        .await
}

const COMMIT_HOOKS: [&str; 4] = ["c1", "c2", "c3", "c4"];
/// `c3` is an `on_commit_with` hook: it cannot run without the connection,
/// so a dropped future leaves it reported, never run on the task.
const NEEDS_CONNECTION: &str = "c3";
const ROLLBACK_HOOKS: [&str; 2] = ["r1", "r2"];

/// The body of the transaction under test: sync and async hooks of every
/// kind, with suspension points in the body, in a `before_commit` hook and
/// in the hooks. Each registration records its line on the same line.
#[rustfmt::skip]
async fn body(conn: &mut Conn, ran: Ran, reg: Registry) -> Result<(), Error> {
    insert(conn, 1).await?;
    conn.on_commit(ran.hook("c1")); reg.at("c1", line!());
    conn.on_rollback(ran.hook("r1")); reg.at("r1", line!());
    conn.on_commit_async(ran.step("c2")); reg.at("c2", line!());
    conn.on_rollback_async(ran.step("r2")); reg.at("r2", line!());
    tokio::task::yield_now().await;
    let r = ran.clone();
    conn.on_commit_with(async move |conn: &mut Conn| { tokio::task::yield_now().await; let _ = insert(conn, 3).await; r.push("c3"); }); reg.at("c3", line!());
    conn.on_commit_async(ran.step("c4")); reg.at("c4", line!());
    let r = ran.clone();
    conn.before_commit(async move |conn: &mut Conn| { insert(conn, 2).await?; tokio::task::yield_now().await; r.push("b"); Ok(()) }); reg.at("b", line!());
    Ok(())
}

// ---------------------------------------------------------------------------
// The entry points

type TxFuture<'c> = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'c>>;

/// One way to run `body` in a transaction.
struct EntryPoint {
    name: &'static str,
    run: for<'c> fn(&'c mut Conn, Ran, Registry) -> TxFuture<'c>,
    /// Where the connection comes from.
    source: Source,
}

#[derive(Clone, Copy, PartialEq)]
enum Source {
    /// `AsyncHookedConnection::establish`, held by the test.
    Plain,
    /// A bb8 pool of one; the test holds the guard and passes
    /// `let conn: &mut Conn = &mut pooled;`.
    #[cfg_attr(not(feature = "bb8"), allow(dead_code))]
    Bb8,
}

#[atomic]
async fn atomic_body(conn: &mut Conn, ran: Ran, reg: Registry) -> Result<(), Error> {
    body(conn, ran, reg).await
}

/// Generic user code: `#[atomic]` on an `async fn` generic over the
/// connection, instantiated with the wrapper.
#[atomic]
async fn atomic_generic<C: AsyncConnection>(
    conn: &mut C,
    body: impl for<'c> FnOnce(&'c mut C) -> TxFuture<'c> + Send,
) -> Result<(), Error> {
    body(conn).await
}

/// `#[atomic]` with options on an `async fn`: `BEGIN IMMEDIATE` through the
/// async builder, in the retry loop.
#[atomic(immediate, retry = 3)]
async fn atomic_immediate_retry(conn: &mut Conn, ran: Ran, reg: Registry) -> Result<(), Error> {
    body(conn, ran.clone(), reg.clone()).await
}

/// A retry policy with a short backoff (an attempt here fails only with a
/// non-retryable error, so it never waits).
fn policy() -> RetryPolicy {
    RetryPolicy::attempts(3).backoff(Duration::from_millis(1), Duration::from_millis(2))
}

/// Every entry point that opens a transaction on the async wrapper: the
/// plain transaction, `#[atomic]`, the transaction builders (SQLite's
/// `build_transaction`, `immediate_transaction`, `exclusive_transaction`)
/// and the retry loop (`transaction_with_retry`, `.retry(..)`,
/// `#[atomic(retry)]`).
fn entry_points() -> Vec<EntryPoint> {
    let mut all = vec![
        EntryPoint {
            name: "conn.transaction",
            run: |conn, ran, reg| {
                Box::pin(conn.transaction::<_, Error, _>(async move |c| body(c, ran, reg).await))
            },
            source: Source::Plain,
        },
        EntryPoint {
            name: "AsyncConnection::transaction (generic)",
            run: |conn, ran, reg| {
                Box::pin(AsyncConnection::transaction::<_, Error, _>(
                    conn,
                    async move |c| body(c, ran, reg).await,
                ))
            },
            source: Source::Plain,
        },
        EntryPoint {
            name: "#[atomic] async fn",
            run: |conn, ran, reg| Box::pin(atomic_body(conn, ran, reg)),
            source: Source::Plain,
        },
        EntryPoint {
            name: "#[atomic] async fn generic over C: AsyncConnection",
            run: |conn, ran, reg| {
                Box::pin(atomic_generic(conn, move |c: &mut Conn| -> TxFuture<'_> {
                    Box::pin(body(c, ran, reg))
                }))
            },
            source: Source::Plain,
        },
        EntryPoint {
            name: "#[atomic] async fn nested in conn.transaction",
            run: |conn, ran, reg| {
                Box::pin(conn.transaction::<_, Error, _>(async move |c| {
                    atomic_body(c, ran, reg).await?;
                    // A suspension between RELEASE SAVEPOINT and COMMIT.
                    tokio::task::yield_now().await;
                    Ok(())
                }))
            },
            source: Source::Plain,
        },
        EntryPoint {
            name: "conn.build_transaction().run",
            run: |conn, ran, reg| {
                Box::pin(
                    conn.build_transaction()
                        .run(async move |c| body(c, ran, reg).await),
                )
            },
            source: Source::Plain,
        },
        EntryPoint {
            name: "conn.build_transaction().immediate().run",
            run: |conn, ran, reg| {
                Box::pin(
                    conn.build_transaction()
                        .immediate()
                        .run(async move |c| body(c, ran, reg).await),
                )
            },
            source: Source::Plain,
        },
        EntryPoint {
            name: "conn.immediate_transaction",
            run: |conn, ran, reg| {
                Box::pin(conn.immediate_transaction(async move |c| body(c, ran, reg).await))
            },
            source: Source::Plain,
        },
        EntryPoint {
            name: "conn.exclusive_transaction",
            run: |conn, ran, reg| {
                Box::pin(conn.exclusive_transaction(async move |c| body(c, ran, reg).await))
            },
            source: Source::Plain,
        },
        EntryPoint {
            name: "conn.transaction_with_retry",
            run: |conn, ran, reg| {
                Box::pin(async move {
                    conn.transaction_with_retry(&policy(), async move |c| {
                        body(c, ran.clone(), reg.clone()).await
                    })
                    .await
                })
            },
            source: Source::Plain,
        },
        EntryPoint {
            // The first attempt writes, then fails with a retryable error:
            // the matrix also drops the future during that attempt, its
            // rollback, the backoff and the second attempt.
            name: "conn.transaction_with_retry, the first attempt failing",
            run: |conn, ran, reg| {
                Box::pin(async move {
                    let mut first = true;
                    conn.transaction_with_retry(&policy(), async move |c| {
                        if std::mem::take(&mut first) {
                            insert(c, 1).await?;
                            tokio::task::yield_now().await;
                            return Err(Error::DatabaseError(
                                DatabaseErrorKind::SerializationFailure,
                                Box::new("forced serialization failure".to_string()),
                            ));
                        }
                        body(c, ran.clone(), reg.clone()).await
                    })
                    .await
                })
            },
            source: Source::Plain,
        },
        EntryPoint {
            name: "conn.build_transaction().immediate().retry(..).run",
            run: |conn, ran, reg| {
                Box::pin(
                    conn.build_transaction()
                        .immediate()
                        .retry(policy())
                        .run(async move |c| body(c, ran.clone(), reg.clone()).await),
                )
            },
            source: Source::Plain,
        },
        EntryPoint {
            name: "#[atomic(immediate, retry = 3)] async fn",
            run: |conn, ran, reg| Box::pin(atomic_immediate_retry(conn, ran, reg)),
            source: Source::Plain,
        },
    ];
    #[cfg(feature = "bb8")]
    all.push(EntryPoint {
        name: "#[atomic] async fn on a bb8 pool guard",
        run: |conn, ran, reg| Box::pin(atomic_body(conn, ran, reg)),
        source: Source::Bb8,
    });
    all
}

/// Polls `future` until it completes or has returned `Pending` `limit`
/// times; hands it back unfinished in the second case.
struct PollLimit<F> {
    future: Option<Pin<Box<F>>>,
    pending: usize,
    limit: usize,
}

impl<F: Future> Future for PollLimit<F> {
    type Output = Result<F::Output, Pin<Box<F>>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let future = this.future.as_mut().expect("polled after completion");
        match future.as_mut().poll(cx) {
            Poll::Ready(value) => Poll::Ready(Ok(value)),
            Poll::Pending if this.pending >= this.limit => {
                Poll::Ready(Err(this.future.take().expect("present")))
            }
            Poll::Pending => {
                this.pending += 1;
                Poll::Pending
            }
        }
    }
}

fn rows(path: &str) -> Vec<i32> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        id: i32,
    }
    let mut plain = <SqliteConnection as diesel::Connection>::establish(path).unwrap();
    diesel::RunQueryDsl::load::<Row>(
        diesel::sql_query("SELECT id FROM orders ORDER BY id"),
        &mut plain,
    )
    .unwrap()
    .into_iter()
    .map(|r| r.id)
    .collect()
}

#[derive(Debug, Default)]
struct Tally {
    /// Suspension points dropped at (the k of the run that completed is
    /// not counted).
    dropped: usize,
    dropped_before_hooks: usize,
    rolled_back: usize,
    commit_in_flight: usize,
    dropped_while_commit_hooks_ran: usize,
    /// Hooks that ran after the future was dropped, before the connection
    /// was touched again or dropped: on the spawned task.
    ran_on_task: usize,
    /// Hooks reported at ERROR with their label (before the connection was
    /// dropped).
    reported: usize,
}

/// The connection under test, however it is held.
type Held = Box<dyn DerefMut<Target = Conn> + Send>;

/// Checks out the connection `source` says, on the database at `path`;
/// the second value keeps the pool alive.
async fn hold(source: Source, path: &str) -> (Held, Box<dyn std::any::Any + Send>) {
    match source {
        Source::Plain => (
            Box::new(Box::new(Conn::establish(path).await.unwrap())),
            Box::new(()),
        ),
        #[cfg(feature = "bb8")]
        Source::Bb8 => {
            use diesel_async::pooled_connection::bb8::Pool;
            use diesel_async::pooled_connection::AsyncDieselConnectionManager;
            let manager = AsyncDieselConnectionManager::<Conn>::new(path);
            let pool = Pool::<Conn>::builder()
                .max_size(1)
                .build(manager)
                .await
                .expect("bb8 pool");
            let pooled = pool.get_owned().await.expect("bb8 checkout");
            (Box::new(pooled), Box::new(pool))
        }
        #[cfg(not(feature = "bb8"))]
        Source::Bb8 => unreachable!("the bb8 entry point needs the `bb8` feature"),
    }
}

/// Written to the log just before the test drops the connection: what is
/// logged after it does not count as prompt.
const CONNECTION_DROPPED: &str = "TEST: the connection is dropped now";

/// How many of `hooks` were registered and have not run (`seen`), leaving
/// out the one that needs the connection.
fn still_due(hooks: &[&str], reg: &Registry, seen: &[String]) -> usize {
    hooks
        .iter()
        .filter(|h| **h != NEEDS_CONNECTION && reg.line(h).is_some())
        .filter(|h| !seen.iter().any(|s| s == **h))
        .count()
}

/// One run: drop after `limit` suspensions, inside the runtime or outside.
/// Returns whether the future completed.
fn run_once(
    entry: &EntryPoint,
    limit: usize,
    drop_inside_runtime: bool,
    tally: &mut Tally,
) -> bool {
    let path = std::env::temp_dir()
        .join(format!("{}.db", unique("cancel")))
        .to_string_lossy()
        .into_owned();
    {
        let mut plain = <SqliteConnection as diesel::Connection>::establish(&path).unwrap();
        let create = diesel::sql_query("CREATE TABLE orders (id INTEGER PRIMARY KEY)");
        diesel::RunQueryDsl::execute(create, &mut plain).unwrap();
    }
    let log = Log::new();
    let (tx, rx) = mpsc::channel();
    let ran_to = Ran {
        log: log.clone(),
        tx,
    };
    let reg = Registry::default();
    // Multi-threaded: SyncConnectionWrapper waits for its blocking task
    // when an unfinished operation is dropped (`block_in_place`); the
    // spawned task runs on the worker while this thread waits.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ((completed, before_drop, promptly), logs) = capture_logs(|| {
        let (mut held, pool) = runtime.block_on(hold(entry.source, &path));
        let conn: &mut Conn = &mut held;
        let mut before_drop = Vec::new();
        let completed = {
            let future = (entry.run)(conn, ran_to.clone(), reg.clone());
            let polled = runtime.block_on(async {
                let outcome = PollLimit {
                    future: Some(Box::pin(future)),
                    pending: 0,
                    limit,
                }
                .await;
                match outcome {
                    Ok(result) => Some(Ok(result)),
                    Err(unfinished) if drop_inside_runtime => {
                        before_drop = log.get();
                        drop(unfinished);
                        None
                    }
                    Err(unfinished) => Some(Err(unfinished)),
                }
            });
            match polled {
                Some(Err(unfinished)) => {
                    // Outside the runtime: no task can be spawned.
                    before_drop = log.get();
                    drop(unfinished);
                    assert_eq!(log.get(), before_drop, "no hook runs inside Drop");
                    None
                }
                Some(Ok(result)) => Some(result),
                None => None,
            }
        };
        if completed.is_none() && drop_inside_runtime {
            // Wait (2 s at most) on the channel, without touching the
            // connection, until the hooks due in either outcome ran: the
            // registered on_rollback hooks (not committed), or the
            // on_commit hooks that can run without the connection (dropped
            // while they ran). Which one applies is checked below.
            let mut seen = before_drop.clone();
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                let due_rollback = still_due(&ROLLBACK_HOOKS, &reg, &seen);
                let due_commit = still_due(&COMMIT_HOOKS, &reg, &seen);
                if due_rollback == 0 || due_commit == 0 {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(name) => seen.push(name.to_string()),
                    Err(_) => break,
                }
            }
        }
        let promptly = log.get();
        tracing::info!("{CONNECTION_DROPPED}");
        runtime.block_on(async move {
            drop(held);
            drop(pool);
            tokio::time::sleep(Duration::from_millis(5)).await;
        });
        (completed, before_drop, promptly)
    });
    let ran = log.get();
    let committed = rows(&path);
    let _ = std::fs::remove_file(&path);
    let context = format!(
        "{}, limit {limit}, dropped {} the runtime: ran {ran:?} ({before_drop:?} before the \
         drop, {promptly:?} before the connection went), rows {committed:?}\n{logs}",
        entry.name,
        if drop_inside_runtime {
            "inside"
        } else {
            "outside"
        }
    );

    let file = "tests/async_cancellation.rs";
    let prompt_logs = logs.split(CONNECTION_DROPPED).next().unwrap_or_default();
    let reported = |name: &str| {
        reg.line(name).is_some_and(|line| {
            let label = format!("{file}:{line}:");
            prompt_logs.lines().any(|l| {
                l.contains("ERROR")
                    && l.contains(&label)
                    && (l.contains("did not run") || l.contains("cancelled while it ran"))
            })
        })
    };
    let count = |name: &str| ran.iter().filter(|r| *r == name).count();
    for name in COMMIT_HOOKS.iter().chain(&ROLLBACK_HOOKS).chain(&["b"]) {
        assert!(count(name) <= 1, "{name} ran twice: {context}");
    }
    // Promptly: every hook that ran, ran before the connection was dropped.
    assert_eq!(
        ran, promptly,
        "hooks ran only when the connection was dropped: {context}"
    );
    let commit_ran = COMMIT_HOOKS.iter().any(|h| count(h) == 1);
    let commit_due = COMMIT_HOOKS.iter().any(|h| count(h) == 1 || reported(h));
    let rollback_ran = ROLLBACK_HOOKS.iter().any(|h| count(h) == 1);
    if commit_ran {
        assert!(
            committed.contains(&1) && committed.contains(&2),
            "on_commit ran for uncommitted work: {context}"
        );
    }
    let on_task = ran.len() - before_drop.len();
    match completed {
        Some(result) => {
            result.unwrap_or_else(|e| panic!("the transaction failed: {e}: {context}"));
            assert_eq!(ran, ["b", "c1", "c2", "c3", "c4"], "{context}");
            assert_eq!(committed, [1, 2, 3], "{context}");
            return true;
        }
        None if commit_due => {
            // Dropped after COMMIT succeeded: every on_commit hook ran once
            // (before the drop or on the spawned task) or was reported.
            for h in COMMIT_HOOKS {
                assert!(
                    count(h) == 1 || reported(h),
                    "{h} was due, neither ran nor was reported: {context}"
                );
            }
            assert!(
                !rollback_ran,
                "on_rollback ran for committed work: {context}"
            );
            assert!(
                committed.contains(&1) && committed.contains(&2),
                "{context}"
            );
            tally.dropped_while_commit_hooks_ran += 1;
            tally.reported += COMMIT_HOOKS.iter().filter(|h| reported(h)).count();
        }
        None => {
            // Dropped before COMMIT succeeded: no on_commit hook ran; every
            // registered on_rollback hook ran once or was reported.
            assert!(!commit_ran, "{context}");
            for h in ROLLBACK_HOOKS {
                if reg.line(h).is_some() {
                    assert!(
                        count(h) == 1 || reported(h),
                        "{h} was due, neither ran nor was reported: {context}"
                    );
                }
            }
            if reg.line("r1").is_none() {
                tally.dropped_before_hooks += 1;
            } else if committed.is_empty() {
                assert!(
                    logs.contains("dropped before it finished")
                        || logs.contains("dropped while it ran")
                        || logs.contains("dropped inside its transaction")
                        || logs.contains("dropped during its COMMIT or ROLLBACK"),
                    "the abandoned transaction is logged: {context}"
                );
                tally.rolled_back += 1;
            } else {
                // Rule C3: the COMMIT was in flight; its outcome is treated
                // as failed although the database committed it.
                assert!(
                    logs.contains("COMMIT was dropped while it ran"),
                    "{context}"
                );
                tally.commit_in_flight += 1;
            }
            tally.reported += ROLLBACK_HOOKS.iter().filter(|h| reported(h)).count();
        }
    }
    tally.dropped += 1;
    tally.ran_on_task += on_task;
    if !drop_inside_runtime {
        assert_eq!(on_task, 0, "no task without a runtime: {context}");
    }
    false
}

fn matrix(entry: &EntryPoint, drop_inside_runtime: bool) -> Tally {
    let mut tally = Tally::default();
    for limit in 0..500 {
        if run_once(entry, limit, drop_inside_runtime, &mut tally) {
            eprintln!(
                "{}: dropped {} the runtime at each of {limit} suspension points: {tally:?}",
                entry.name,
                if drop_inside_runtime {
                    "inside"
                } else {
                    "outside"
                }
            );
            return tally;
        }
    }
    panic!(
        "{}: the transaction never completed within 500 suspensions",
        entry.name
    );
}

#[test]
fn dropped_at_every_await_inside_the_runtime_each_hook_runs_once_promptly_or_is_reported() {
    for entry in entry_points() {
        let tally = matrix(&entry, true);
        assert!(
            tally.rolled_back > 0 && tally.dropped_while_commit_hooks_ran > 0,
            "{}: {tally:?}",
            entry.name
        );
        assert!(
            tally.ran_on_task > 0,
            "{}: hooks still due ran on the spawned task: {tally:?}",
            entry.name
        );
    }
}

#[test]
fn dropped_at_every_await_outside_a_runtime_each_due_hook_is_logged() {
    for entry in entry_points() {
        let tally = matrix(&entry, false);
        assert!(
            tally.rolled_back > 0 && tally.dropped_while_commit_hooks_ran > 0,
            "{}: {tally:?}",
            entry.name
        );
        assert!(
            tally.reported > 0,
            "{}: hooks still due were reported: {tally:?}",
            entry.name
        );
    }
}
