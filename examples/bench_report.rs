//! The cost of hooks, side by side with raw Diesel and a hand-rolled queue,
//! as ratios (see BENCHMARKS.md for how to read the output).
//!
//! ```text
//! cargo run --release --example bench_report                 # timed, interleaved
//! cargo run --release --features postgres --example bench_report   # + the PostgreSQL row
//! benches/callgrind.sh                                        # instruction counts (judged)
//! ```
//!
//! Modes:
//!
//! * (default) timed: for each scenario the three variants run in one
//!   process, interleaved (every round runs each variant for one batch, in
//!   a rotating order), many rounds; per-round ratios, median and spread.
//!   Also allocations per transaction (counting allocator) and the per-hook
//!   cost from 100 to 100 000 hooks.
//! * `--callgrind`: runs this program under `valgrind --tool=callgrind`
//!   once per scenario, variant and length (two lengths), and prints
//!   instructions per transaction, `(Ir(long) - Ir(short)) / (long - short)`,
//!   so set-up and warm-up cancel out.
//! * `--callgrind-one <scenario> <variant> <iterations>`: what `--callgrind`
//!   runs under valgrind: set up, warm up, then `iterations` transactions.
//!
//! Options: `--rounds N` (timed rounds per scenario, default 151),
//! `--batch-ms MS` (time per batch, default 1), `--keep DIR` (keep the
//! callgrind output files in DIR, for `callgrind_annotate`), `--strict`
//! (exit 1 when a judged target is missed).

#[path = "../benches/common/mod.rs"]
mod common;
#[path = "../benches/common/report.rs"]
mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{ok, raw_nest, sqlite_fixture, Fixture, InsertOne, Scenario, Variant};
use diesel::connection::Connection;
use diesel_on_commit::HookedConnection;
use report::{allocations, callgrind_instructions, fmt_ns, summary, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---------------------------------------------------------------------------
// Targets (BENCHMARKS.md).

/// The judged ratio of a scenario: wrapper / raw Diesel for hookless ones,
/// wrapper / (raw Diesel + hand-rolled queue) where hooks are involved.
fn target(s: Scenario) -> Option<f64> {
    match s {
        Scenario::Empty => Some(1.05),
        Scenario::Insert => Some(1.03),
        Scenario::Hooks(1) => Some(1.10),
        Scenario::Hooks(10) => Some(1.20),
        Scenario::Hooks(100) => Some(1.30),
        Scenario::Savepoints => Some(1.05),
        Scenario::Hooks(_) => None,
    }
}

/// PostgreSQL, one INSERT (timed only).
#[cfg(feature = "postgres")]
const PG_TARGET: f64 = 1.01;
/// Per-hook cost at N hooks, relative to N = 100.
const FLAT: (f64, f64) = (0.8, 1.2);
const SCALE: [usize; 4] = [100, 1_000, 10_000, 100_000];

fn describe(s: Scenario) -> String {
    match s {
        Scenario::Empty => "empty transaction".into(),
        Scenario::Insert => "one INSERT".into(),
        Scenario::Hooks(1) => "1 hook".into(),
        Scenario::Hooks(n) => format!("{n} hooks"),
        Scenario::Savepoints => format!(
            "{} nested savepoints, hook per level, innermost rolled back",
            common::SAVEPOINTS
        ),
    }
}

fn judged_base(s: Scenario) -> Variant {
    if s.has_hooks() {
        Variant::Queue
    } else {
        Variant::Raw
    }
}

const MAIN: [Scenario; 6] = [
    Scenario::Empty,
    Scenario::Insert,
    Scenario::Hooks(1),
    Scenario::Hooks(10),
    Scenario::Hooks(100),
    Scenario::Savepoints,
];

// ---------------------------------------------------------------------------
// Verdicts.

fn verdict(ratio: f64, target: f64) -> &'static str {
    if ratio <= target {
        "met"
    } else {
        "MISSED"
    }
}

// ---------------------------------------------------------------------------
// Timed, interleaved rounds.

struct Opts {
    rounds: usize,
    batch: Duration,
    keep: Option<PathBuf>,
    strict: bool,
}

/// Runs each job (`scenario`, `variant`) for one batch per round, in a
/// rotating order, for `rounds` rounds. Returns, per job, the time of one
/// transaction in each round (ns).
fn interleave<C>(fx: &mut Fixture<C>, jobs: &[(Scenario, Variant)], opts: &Opts) -> Vec<Vec<f64>>
where
    C: Connection + InsertOne,
    HookedConnection<C>: InsertOne,
{
    // Warm up and size each job's batch to about `opts.batch`.
    let batches: Vec<usize> = jobs
        .iter()
        .map(|&(s, v)| {
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
            // Rotate, and reverse every other round, so no job always
            // follows the same one.
            let mut j = (k + round) % jobs.len();
            if round % 2 == 1 {
                j = jobs.len() - 1 - j;
            }
            let (s, v) = jobs[j];
            let n = batches[j];
            let t = Instant::now();
            for _ in 0..n {
                fx.run(s, v);
            }
            samples[j].push(t.elapsed().as_nanos() as f64 / n as f64);
        }
    }
    samples
}

struct Row {
    name: String,
    desc: String,
    ns: [f64; 3],
    ratio: (f64, f64, f64),
    vs_raw: f64,
    base: Variant,
    target: Option<f64>,
}

fn timed_rows<C>(fx: &mut Fixture<C>, scenarios: &[Scenario], opts: &Opts, rows: &mut Vec<Row>)
where
    C: Connection + InsertOne,
    HookedConnection<C>: InsertOne,
{
    for &s in scenarios {
        let jobs: Vec<_> = Variant::ALL.iter().map(|&v| (s, v)).collect();
        let samples = interleave(fx, &jobs, opts);
        let base = judged_base(s);
        let b = base as usize;
        let h = Variant::Hooked as usize;
        let ratios: Vec<f64> = (0..opts.rounds)
            .map(|r| samples[h][r] / samples[b][r])
            .collect();
        let vs_raw: Vec<f64> = (0..opts.rounds)
            .map(|r| samples[h][r] / samples[Variant::Raw as usize][r])
            .collect();
        rows.push(Row {
            name: s.name(),
            desc: describe(s),
            ns: [0, 1, 2].map(|i| summary(&samples[i]).0),
            ratio: summary(&ratios),
            vs_raw: summary(&vs_raw).0,
            base,
            target: target(s),
        });
    }
}

fn print_timed(rows: &[Row]) {
    println!(
        "| scenario | raw Diesel | raw + Vec queue | HookedConnection | ratio | p10–p90 | judged against | target | timed verdict | wrapper / raw |"
    );
    println!("|---|---:|---:|---:|---:|---|---|---:|---|---:|");
    for r in rows {
        let t = r.target.map_or("—".into(), |t| format!("≤ {t:.2}"));
        let v = r.target.map_or("—", |t| verdict(r.ratio.0, t));
        println!(
            "| {} ({}) | {} | {} | {} | **{:.3}** | {:.3}–{:.3} | {} | {} | {} | {:.3} |",
            r.desc,
            r.name,
            fmt_ns(r.ns[0]),
            fmt_ns(r.ns[1]),
            fmt_ns(r.ns[2]),
            r.ratio.0,
            r.ratio.1,
            r.ratio.2,
            if r.base == Variant::Raw {
                "raw"
            } else {
                "raw + queue"
            },
            t,
            v,
            r.vs_raw,
        );
    }
}

/// Per-hook cost from 100 to 100 000 hooks: (t(N hooks) − t(empty)) / N,
/// each from the same round, for the queue and the wrapper.
fn timed_scaling(opts: &Opts) -> bool {
    let mut fx = sqlite_fixture();
    let mut jobs = vec![
        (Scenario::Empty, Variant::Queue),
        (Scenario::Empty, Variant::Hooked),
    ];
    for n in SCALE {
        jobs.push((Scenario::Hooks(n), Variant::Queue));
        jobs.push((Scenario::Hooks(n), Variant::Hooked));
    }
    let rounds = (opts.rounds / 3).max(15);
    let samples = interleave(
        &mut fx,
        &jobs,
        &Opts {
            rounds,
            batch: opts.batch * 3,
            keep: None,
            strict: false,
        },
    );
    let per_hook = |job: usize, empty: usize, n: usize| -> f64 {
        let v: Vec<f64> = (0..rounds)
            .map(|r| (samples[job][r] - samples[empty][r]) / n as f64)
            .collect();
        summary(&v).0
    };
    let base_q = per_hook(2, 0, SCALE[0]);
    let base_h = per_hook(3, 1, SCALE[0]);
    println!("| hooks in one transaction | queue: ns per hook | × at 100 | wrapper: ns per hook | × at 100 | wrapper / queue |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut all_flat = true;
    for (i, n) in SCALE.into_iter().enumerate() {
        let q = per_hook(2 + 2 * i, 0, n);
        let h = per_hook(3 + 2 * i, 1, n);
        let rel = h / base_h;
        all_flat &= (FLAT.0..=FLAT.1).contains(&rel);
        println!(
            "| {n} | {q:.1} | {:.2} | {h:.1} | **{rel:.2}** | {:.2} |",
            q / base_q,
            h / q
        );
    }
    println!(
        "\nTimed per-hook cost of the wrapper flat within ±20% from 100 to 100 000 hooks: {}",
        if all_flat { "yes" } else { "NO" }
    );
    all_flat
}

/// A hookless workload, written for raw Diesel and for the wrapper.
type AllocCase = (
    &'static str,
    &'static dyn Fn(&mut diesel::SqliteConnection),
    &'static dyn Fn(&mut HookedConnection<diesel::SqliteConnection>),
);

fn alloc_table() -> bool {
    let mut fx = sqlite_fixture();
    // Warm the statement caches and the queues.
    for s in MAIN {
        for v in Variant::ALL {
            for _ in 0..3 {
                fx.run(s, v);
            }
        }
    }
    const N: u64 = 1000;
    let mut all_zero = true;
    println!("| hookless transaction | raw Diesel: allocations per transaction | HookedConnection | wrapper − raw |");
    println!("|---|---:|---:|---:|");
    let cases: [AllocCase; 3] = [
        ("empty", &|c| c.transaction(ok).unwrap(), &|c| {
            c.transaction(ok).unwrap()
        }),
        (
            "one INSERT",
            &|c| c.transaction(|c| c.insert_one(7).map(drop)).unwrap(),
            &|c| c.transaction(|c| c.insert_one(7).map(drop)).unwrap(),
        ),
        (
            "10 nested savepoints, innermost rolled back",
            &|c| raw_nest(c, 1),
            &|c| raw_nest(c, 1),
        ),
    ];
    for (name, raw, hooked) in cases {
        let (ra, _) = allocations(|| {
            for _ in 0..N {
                raw(&mut fx.raw)
            }
        });
        let (ha, _) = allocations(|| {
            for _ in 0..N {
                hooked(&mut fx.hooked)
            }
        });
        let (ra, ha) = (ra as f64 / N as f64, ha as f64 / N as f64);
        all_zero &= ha <= ra;
        println!("| {name} | {ra:.2} | {ha:.2} | **{:+.2}** |", ha - ra);
    }
    println!("\n| with hooks (8-byte capture each) | raw + queue: allocations per hook | HookedConnection |");
    println!("|---|---:|---:|");
    for n in [1usize, 10, 100] {
        let s = Scenario::Hooks(n);
        let per = |fx: &mut Fixture<_>, v| {
            let (a, _) = allocations(|| {
                for _ in 0..N {
                    fx.run(s, v)
                }
            });
            let (e, _) = allocations(|| {
                for _ in 0..N {
                    fx.run(Scenario::Empty, v)
                }
            });
            (a as f64 - e as f64) / (N as f64 * n as f64)
        };
        let q = per(&mut fx, Variant::Queue);
        let h = per(&mut fx, Variant::Hooked);
        println!("| {n} hooks | {q:.2} | {h:.2} |");
    }
    println!(
        "\nAllocations per hookless transaction: wrapper adds {}",
        if all_zero {
            "none (target met)"
        } else {
            "SOME (target MISSED)"
        }
    );
    all_zero
}

#[cfg(feature = "postgres")]
fn pg_rows(opts: &Opts, rows: &mut Vec<Row>) -> Option<bool> {
    let url = std::env::var("POSTGRES_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut fx = match common::pg_fixture(&url) {
        Ok(fx) => fx,
        Err(e) => {
            println!("\nPostgreSQL row skipped: cannot connect to {url}: {e}");
            return None;
        }
    };
    // A COMMIT waits for the WAL flush: long batches, to average the disk's noise.
    let popts = Opts {
        rounds: opts.rounds.min(101),
        batch: opts.batch.max(Duration::from_millis(10)),
        keep: None,
        strict: false,
    };
    let mut pg = Vec::new();
    timed_rows(&mut fx, &[Scenario::Insert], &popts, &mut pg);
    use diesel::RunQueryDsl;
    let _ = diesel::sql_query("DROP TABLE IF EXISTS bench_items").execute(&mut fx.raw);
    let mut row = pg.pop()?;
    row.desc = "one INSERT, PostgreSQL on 127.0.0.1 (timed only)".into();
    row.name = "pg-insert".into();
    row.target = Some(PG_TARGET);
    let met = row.ratio.0 <= PG_TARGET;
    rows.push(row);
    Some(met)
}

#[cfg(not(feature = "postgres"))]
fn pg_rows(_: &Opts, _: &mut Vec<Row>) -> Option<bool> {
    println!(
        "\nPostgreSQL row skipped: built without the `postgres` feature \
         (run `cargo run --release --features postgres --example bench_report`)."
    );
    None
}

fn timed(opts: &Opts) -> bool {
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
         ratio = median of per-round ratios (wrapper / judged base), p10–p90 of those.\n",
        opts.rounds,
        opts.batch.as_millis()
    );
    let mut rows = Vec::new();
    let mut fx = sqlite_fixture();
    timed_rows(&mut fx, &MAIN, opts, &mut rows);
    let pg = pg_rows(opts, &mut rows);
    println!();
    print_timed(&rows);
    println!("\n## Allocations (counting allocator)\n");
    let allocs = alloc_table();
    println!("\n## Per-hook cost, 100 → 100 000 hooks in one transaction (timed)\n");
    let _flat = timed_scaling(opts);
    // Judged here: only what callgrind cannot judge.
    allocs && pg.unwrap_or(true)
}

// ---------------------------------------------------------------------------
// Instruction counts.

/// The two run lengths (transactions) for a scenario: enough work in the
/// difference to dwarf noise, short enough for valgrind.
fn lengths(s: Scenario) -> (u64, u64) {
    match s {
        Scenario::Hooks(n) if n >= 100_000 => (1, 3),
        Scenario::Hooks(n) if n >= 10_000 => (2, 12),
        Scenario::Hooks(n) if n >= 1_000 => (10, 60),
        Scenario::Hooks(n) if n >= 100 => (50, 300),
        Scenario::Savepoints => (50, 300),
        _ => (200, 1200),
    }
}

fn callgrind_one(s: Scenario, v: Variant, iterations: u64) {
    let mut fx = sqlite_fixture();
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

fn callgrind(opts: &Opts) -> bool {
    let exe = std::env::current_exe().expect("own path");
    let dir = opts.keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("bench-callgrind-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).expect("callgrind output dir");
    let mut per_iter = std::collections::BTreeMap::new();
    let mut scenarios: Vec<Scenario> = MAIN.to_vec();
    scenarios.extend(SCALE[1..].iter().map(|&n| Scenario::Hooks(n)));
    for &s in &scenarios {
        for v in Variant::ALL {
            if v == Variant::Raw && matches!(s, Scenario::Hooks(_)) {
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
        let s = if v == Variant::Raw && matches!(s, Scenario::Hooks(_)) {
            Scenario::Empty
        } else {
            s
        };
        per_iter[&(s.name(), v.name())]
    };
    println!("Instructions per transaction (valgrind --tool=callgrind, difference of two run lengths).\n");
    println!("| scenario | raw Diesel | raw + Vec queue | HookedConnection | ratio | judged against | target | verdict | wrapper − base |");
    println!("|---|---:|---:|---:|---:|---|---:|---|---:|");
    let mut all_met = true;
    for s in MAIN {
        let base = judged_base(s);
        let [r, q, h] = Variant::ALL.map(|v| get(s, v));
        let b = get(s, base);
        let ratio = h / b;
        let t = target(s).expect("main scenarios have targets");
        all_met &= ratio <= t;
        println!(
            "| {} ({}) | {r:.0} | {q:.0} | {h:.0} | **{ratio:.3}** | {} | ≤ {t:.2} | {} | {:+.0} |",
            describe(s),
            s.name(),
            if base == Variant::Raw {
                "raw"
            } else {
                "raw + queue"
            },
            verdict(ratio, t),
            h - b,
        );
    }
    println!("\n| hooks in one transaction | queue: instructions per hook | × at 100 | wrapper: instructions per hook | × at 100 | wrapper / queue |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let per_hook = |n: usize, v| (get(Scenario::Hooks(n), v) - get(Scenario::Empty, v)) / n as f64;
    let (q100, h100) = (
        per_hook(100, Variant::Queue),
        per_hook(100, Variant::Hooked),
    );
    let mut flat = true;
    for n in SCALE {
        let (q, h) = (per_hook(n, Variant::Queue), per_hook(n, Variant::Hooked));
        let rel = h / h100;
        flat &= (FLAT.0..=FLAT.1).contains(&rel);
        println!(
            "| {n} | {q:.1} | {:.2} | {h:.1} | **{rel:.2}** | {:.2} |",
            q / q100,
            h / q
        );
    }
    println!(
        "\nPer-hook cost of the wrapper flat within ±20% from 100 to 100 000 hooks: {}",
        if flat {
            "yes (target met)"
        } else {
            "NO (target MISSED)"
        }
    );
    if opts.keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("\ncallgrind output kept in {}", dir.display());
    }
    all_met && flat
}

// ---------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--callgrind-one") {
        let usage =
            "--callgrind-one <empty|insert|hooksN|savepoints> <raw|queue|hooked> <iterations>";
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
        strict: false,
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
            "--strict" => opts.strict = true,
            "--help" | "-h" => {
                println!("see the top of examples/bench_report.rs or BENCHMARKS.md");
                return;
            }
            other => panic!("unknown argument {other:?}; see BENCHMARKS.md"),
        }
    }
    let met = if mode_callgrind {
        callgrind(&opts)
    } else {
        timed(&opts)
    };
    if opts.strict && !met {
        std::process::exit(1);
    }
}
