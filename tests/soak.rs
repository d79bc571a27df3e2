//! Soak (RELIABILITY.md): one million transactions with hooks on
//! one SQLite wrapper; memory must stay flat. Ignored by default (not run
//! in CI):
//!
//! ```text
//! cargo test --release --test soak -- --ignored --nocapture
//! SOAK_TRANSACTIONS=100000 cargo test --test soak -- --ignored --nocapture
//! ```
#![cfg(feature = "sqlite")]

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::result::Error;
use diesel_on_commit::prelude::*;

/// Resident set size in bytes, from /proc/self/statm.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[test]
#[ignore = "soak: one million transactions; run by hand (RELIABILITY.md)"]
fn a_million_transactions_with_hooks_keep_memory_flat() {
    let total: u64 = std::env::var("SOAK_TRANSACTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    std::panic::set_hook(Box::new(|_| {})); // the planned panics
    let mut conn = common::sqlite();
    conn.set_hook_panics(HookPanics::Log);
    conn.batch_execute(
        "CREATE TABLE counter (n INTEGER NOT NULL); INSERT INTO counter VALUES (0);",
    )
    .unwrap();
    let committed_hooks = Arc::new(AtomicU64::new(0));
    let rollback_hooks = Arc::new(AtomicU64::new(0));
    let (mut commits, mut rollbacks) = (0u64, 0u64);
    let started = std::time::Instant::now();
    let mut samples = Vec::new();
    let warmup = (total / 100).max(1);
    for i in 0..total {
        if i == warmup || (i > warmup && i % (total / 4).max(1) == 0) {
            samples.push((i, rss()));
        }
        let c = committed_hooks.clone();
        let r = rollback_hooks.clone();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            conn.transaction(|conn| -> Result<(), Error> {
                conn.batch_execute("UPDATE counter SET n = n + 1")?;
                let c2 = c.clone();
                conn.on_commit(move || {
                    c2.fetch_add(1, Ordering::Relaxed);
                });
                let r2 = r.clone();
                conn.on_rollback(move || {
                    r2.fetch_add(1, Ordering::Relaxed);
                });
                if i % 3 == 0 {
                    conn.before_commit(|_| Ok(()));
                }
                if i % 10 == 0 {
                    // A savepoint that rolls back with hooks of its own.
                    let c3 = c.clone();
                    let _ = conn.transaction(|conn| -> Result<(), Error> {
                        conn.on_commit(move || {
                            c3.fetch_add(1_000_000_000, Ordering::Relaxed); // must never run
                        });
                        conn.on_rollback(|| ());
                        Err(Error::RollbackTransaction)
                    });
                }
                if i % 1000 == 999 {
                    // A burst of hooks (rule 14: capacity is not kept forever).
                    for _ in 0..2000 {
                        conn.on_commit(|| ());
                    }
                }
                match i % 101 {
                    7 => Err(Error::RollbackTransaction),
                    50 => panic!("planned panic"),
                    _ => Ok(()),
                }
            })
        }));
        match outcome {
            Ok(Ok(())) => commits += 1,
            _ => rollbacks += 1,
        }
    }
    let elapsed = started.elapsed();
    samples.push((total, rss()));
    let _ = std::panic::take_hook();
    assert_eq!(
        committed_hooks.load(Ordering::Relaxed),
        commits,
        "one on_commit per commit, none for rollbacks"
    );
    assert_eq!(
        rollback_hooks.load(Ordering::Relaxed),
        rollbacks,
        "one on_rollback per rollback"
    );
    let n: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "(SELECT n FROM counter)",
    ))
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(n as u64, commits);
    let (first, last) = (samples[0].1, samples.last().unwrap().1);
    eprintln!(
        "soak: {total} transactions ({commits} committed, {rollbacks} rolled back) in {:.1}s ({:.0}/s)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    for (i, bytes) in &samples {
        eprintln!(
            "soak: RSS after {i:>8} transactions: {:.1} MiB",
            mib(*bytes)
        );
    }
    assert!(
        last <= first + 8 * 1024 * 1024,
        "RSS grew from {:.1} MiB to {:.1} MiB",
        mib(first),
        mib(last)
    );
}
