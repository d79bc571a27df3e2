#!/usr/bin/env bash
# Instruction counts for every scenario and variant of examples/bench_report.rs,
# counted by `valgrind --tool=callgrind` (the figure the cost targets are judged
# on; see BENCHMARKS.md).
#
# Each scenario/variant runs twice, for a short and a long number of
# transactions; instructions per transaction = (Ir(long) - Ir(short)) /
# (long - short), so process start, connection set-up and warm-up cancel out.
#
#   benches/callgrind.sh                 # the ratio table
#   benches/callgrind.sh --keep DIR      # also keep callgrind.out files, then e.g.
#   callgrind_annotate --inclusive=yes DIR/callgrind.hooks100.hooked.300.out | head -60
#   benches/callgrind.sh --strict        # exit 1 when a target is missed
#
# The async wrapper has its own report (BENCHMARKS.md, "Async wrapper"):
#   cargo build --release --example async_bench_report --features async &&
#   "${CARGO_TARGET_DIR:-target}"/release/examples/async_bench_report --callgrind
#
# Builds into $CARGO_TARGET_DIR (default target/) with the release profile.
# For file:line in callgrind_annotate, also export
# CARGO_PROFILE_RELEASE_DEBUG=line-tables-only (same code, but a full rebuild).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
cargo build --release --example bench_report >&2
exe="${CARGO_TARGET_DIR:-target}/release/examples/bench_report"
exec "$exe" --callgrind "$@"
