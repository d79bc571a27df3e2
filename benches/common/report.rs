//! What both benchmark reports (`examples/bench_report.rs` for the sync
//! wrapper, `examples/async_bench_report.rs` for the async one) need besides
//! their workloads: a counting allocator, the statistics of interleaved
//! rounds, and one callgrind run's instruction total.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

// ---------------------------------------------------------------------------
// A counting allocator that costs one relaxed load when not counting, so the
// timed and callgrind figures are not inflated by bookkeeping (the
// `allocation-counter` crate counts every allocation of the process through
// thread-local `RefCell`s, which would sit inside every measured one).

pub struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

#[inline(always)]
fn count(size: usize) {
    if COUNTING.load(Relaxed) {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(size as u64, Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size); // a reallocation counts as an allocation
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations (count, bytes) made by `f` (single-threaded program; the
/// report declares `#[global_allocator] static GLOBAL: Counting = Counting;`).
pub fn allocations(f: impl FnOnce()) -> (u64, u64) {
    ALLOCS.store(0, Relaxed);
    BYTES.store(0, Relaxed);
    COUNTING.store(true, Relaxed);
    f();
    COUNTING.store(false, Relaxed);
    (ALLOCS.load(Relaxed), BYTES.load(Relaxed))
}

// ---------------------------------------------------------------------------
// Statistics.

pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// (median, p10, p90)
pub fn summary(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    (quantile(&v, 0.5), quantile(&v, 0.1), quantile(&v, 0.9))
}

pub fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

// ---------------------------------------------------------------------------
// Callgrind.

/// Runs `exe --callgrind-one <scenario> <variant> <n>` under
/// `valgrind --tool=callgrind` with its output in `dir`, and returns the
/// instructions it counted.
pub fn callgrind_instructions(
    exe: &Path,
    dir: &Path,
    scenario: &str,
    variant: &str,
    n: u64,
) -> u64 {
    let out = dir.join(format!("callgrind.{scenario}.{variant}.{n}.out"));
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--quiet")
        .arg(exe)
        .args(["--callgrind-one", scenario, variant, &n.to_string()])
        .status()
        .expect("run valgrind (apt-get install valgrind)");
    assert!(
        status.success(),
        "valgrind failed on {scenario} {variant} {n}"
    );
    let text = std::fs::read_to_string(&out).expect("read callgrind output");
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .expect("callgrind totals line")
}
