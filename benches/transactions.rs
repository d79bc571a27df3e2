//! `cargo bench`: criterion's view of the workloads in `benches/common`,
//! one group per scenario with the three variants side by side (SQLite in
//! memory). For the ratios the targets are judged on (interleaved rounds,
//! callgrind instruction counts) run `cargo run --release --example
//! bench_report` and `benches/callgrind.sh`; see BENCHMARKS.md.

mod common;

use std::time::Duration;

use common::{sqlite_fixture, Scenario, Variant};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn transactions(c: &mut Criterion) {
    let scenarios = [
        Scenario::Empty,
        Scenario::Insert,
        Scenario::Hooks(1),
        Scenario::Hooks(10),
        Scenario::Hooks(100),
        Scenario::Savepoints,
    ];
    for scenario in scenarios {
        let mut group = c.benchmark_group(scenario.name());
        let mut fixture = sqlite_fixture();
        for variant in Variant::ALL {
            group.bench_function(BenchmarkId::from_parameter(variant.name()), |b| {
                b.iter(|| fixture.run(scenario, variant))
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = transactions
}
criterion_main!(benches);
