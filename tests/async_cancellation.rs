//! The async wrapper's cancellation rules, on SQLite: a transaction's future
//! is dropped after its k-th suspension, for every k until it completes,
//! once inside the tokio runtime (hooks still due run on a spawned task) and
//! once outside any runtime (each is logged at ERROR with its label). At
//! every k, every hook ran at most once, an `on_commit` hook ran only for
//! committed work, and every hook that was due either ran or was reported.
#![cfg(all(feature = "async", feature = "tokio"))]

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use common::async_conn::AsyncSqlite;
use common::{capture_logs, unique, Log};
use diesel::result::Error;
use diesel::{QueryableByName, SqliteConnection};
use diesel_async::{AsyncConnection, RunQueryDsl};
use diesel_on_commit::AsyncHookedConnection;

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

async fn insert(conn: &mut Conn, id: i32) -> Result<usize, Error> {
    diesel::sql_query(format!("INSERT INTO orders (id) VALUES ({id})"))
        .execute(conn)
        .await
}

/// An async hook with a suspension point of its own.
fn step(log: &Log, name: &'static str) -> impl Future<Output = ()> + Send + 'static {
    let log = log.clone();
    async move {
        tokio::task::yield_now().await;
        log.push(name);
    }
}

const COMMIT_HOOKS: [&str; 4] = ["c1", "c2", "c3", "c4"];
const ROLLBACK_HOOKS: [&str; 2] = ["r1", "r2"];

/// The transaction under test: sync and async hooks of every kind, with
/// suspension points in the body, in a `before_commit` hook and in the
/// hooks. Each registration records its line on the same line.
#[rustfmt::skip]
async fn scenario(conn: &mut Conn, log: Log, reg: Registry) -> Result<(), Error> {
    conn.transaction::<_, Error, _>(async move |conn| {
        insert(conn, 1).await?;
        conn.on_commit(log.hook("c1")); reg.at("c1", line!());
        conn.on_rollback(log.hook("r1")); reg.at("r1", line!());
        conn.on_commit_async(step(&log, "c2")); reg.at("c2", line!());
        conn.on_rollback_async(step(&log, "r2")); reg.at("r2", line!());
        tokio::task::yield_now().await;
        let l = log.clone();
        conn.on_commit_with(async move |conn: &mut Conn| { tokio::task::yield_now().await; let _ = insert(conn, 3).await; l.push("c3"); }); reg.at("c3", line!());
        conn.on_commit_async(step(&log, "c4")); reg.at("c4", line!());
        let l = log.clone();
        conn.before_commit(async move |conn: &mut Conn| { insert(conn, 2).await?; tokio::task::yield_now().await; l.push("b"); Ok(()) }); reg.at("b", line!());
        Ok(())
    })
    .await
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
    completed: usize,
    dropped_before_hooks: usize,
    rolled_back: usize,
    commit_in_flight: usize,
    dropped_while_commit_hooks_ran: usize,
    commit_hooks_ran: usize,
    reported: usize,
}

/// One run: drop after `limit` suspensions, inside the runtime or outside.
/// Returns whether the future completed.
fn run_once(limit: usize, drop_inside_runtime: bool, tally: &mut Tally) -> bool {
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
    let reg = Registry::default();
    // Multi-threaded: SyncConnectionWrapper waits for its blocking task
    // when an unfinished operation is dropped (`block_in_place`).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (completed, logs) = capture_logs(|| {
        let mut conn = runtime.block_on(Conn::establish(&path)).unwrap();
        let completed = {
            let future = Box::pin(scenario(&mut conn, log.clone(), reg.clone()));
            let polled = runtime.block_on(async {
                let outcome = PollLimit {
                    future: Some(future),
                    pending: 0,
                    limit,
                }
                .await;
                match outcome {
                    Ok(result) => Some(Ok(result)),
                    Err(unfinished) if drop_inside_runtime => {
                        drop(unfinished);
                        None
                    }
                    Err(unfinished) => Some(Err(unfinished)),
                }
            });
            match polled {
                Some(Err(unfinished)) => {
                    // Outside the runtime: no task can be spawned.
                    let before_drop = log.get();
                    drop(unfinished);
                    assert_eq!(log.get(), before_drop, "no hook runs inside Drop");
                    None
                }
                Some(Ok(result)) => Some(result),
                None => None,
            }
        };
        if drop_inside_runtime {
            // Let the spawned task (if any) finish.
            runtime.block_on(async { tokio::time::sleep(Duration::from_millis(30)).await });
        }
        drop(conn);
        runtime.block_on(async { tokio::time::sleep(Duration::from_millis(5)).await });
        completed
    });
    let ran = log.get();
    let committed = rows(&path);
    let _ = std::fs::remove_file(&path);
    let context = format!(
        "limit {limit}, dropped {} the runtime: ran {ran:?}, rows {committed:?}\n{logs}",
        if drop_inside_runtime {
            "inside"
        } else {
            "outside"
        }
    );

    let file = "tests/async_cancellation.rs";
    let reported = |name: &str| {
        reg.line(name).is_some_and(|line| {
            let label = format!("{file}:{line}:");
            logs.lines().any(|l| {
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
    let commit_ran = COMMIT_HOOKS.iter().any(|h| count(h) == 1);
    let commit_due = COMMIT_HOOKS.iter().any(|h| count(h) == 1 || reported(h));
    let rollback_ran = ROLLBACK_HOOKS.iter().any(|h| count(h) == 1);
    if commit_ran {
        assert!(
            committed.contains(&1) && committed.contains(&2),
            "on_commit ran for uncommitted work: {context}"
        );
    }
    match completed {
        Some(result) => {
            result.unwrap_or_else(|e| panic!("the transaction failed: {e}: {context}"));
            assert_eq!(ran, ["b", "c1", "c2", "c3", "c4"], "{context}");
            assert_eq!(committed, [1, 2, 3], "{context}");
            tally.completed += 1;
            true
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
            tally.commit_hooks_ran += COMMIT_HOOKS.iter().filter(|h| count(h) == 1).count();
            tally.reported += COMMIT_HOOKS.iter().filter(|h| reported(h)).count();
            false
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
                        || logs.contains("dropped while it ran"),
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
            false
        }
    }
}

fn matrix(drop_inside_runtime: bool) -> Tally {
    let mut tally = Tally::default();
    for limit in 0..500 {
        if run_once(limit, drop_inside_runtime, &mut tally) {
            eprintln!(
                "drop {} the runtime, every suspension point: {tally:?}",
                if drop_inside_runtime {
                    "inside"
                } else {
                    "outside"
                }
            );
            return tally;
        }
    }
    panic!("the transaction never completed within 500 suspensions");
}

#[test]
fn dropped_at_every_await_inside_the_runtime_each_hook_runs_once_or_is_reported() {
    let tally = matrix(true);
    assert!(
        tally.rolled_back > 0 && tally.dropped_while_commit_hooks_ran > 0,
        "{tally:?}"
    );
    assert!(
        tally.commit_hooks_ran > 0,
        "hooks still due ran on the spawned task: {tally:?}"
    );
}

#[test]
fn dropped_at_every_await_outside_a_runtime_each_due_hook_is_logged() {
    let tally = matrix(false);
    assert!(
        tally.rolled_back > 0 && tally.dropped_while_commit_hooks_ran > 0,
        "{tally:?}"
    );
    assert!(
        tally.reported > 0,
        "hooks still due were reported: {tally:?}"
    );
}
