#!/usr/bin/env python3
"""The workloads of examples/bench_report.rs in Django (SQLite in memory), for
context: what `transaction.on_commit` costs in the system this crate copies.

    pip install django && python3 benches/django_compare.py

Same three variants as the Rust report, interleaved the same way:
  raw     `transaction.atomic()` without hooks
  queue   atomic() plus a hand-rolled list of callables run after it exits
  django  atomic() plus `transaction.on_commit`
Ratio = django / queue where hooks are involved, django / raw otherwise.
Timed only (no instruction counts for CPython); median of per-round ratios.
"""
import statistics
import sys
import time

import django
from django.conf import settings

settings.configure(
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    INSTALLED_APPS=[],
    USE_TZ=True,
)
django.setup()

from django.db import connection, transaction  # noqa: E402

SINK = [0]
SAVEPOINTS = 10


class Rollback(Exception):
    pass


def hook(x):
    def run():
        SINK[0] += x
    return run


def cursor_insert(v):
    with connection.cursor() as c:
        c.execute("INSERT INTO bench_items (v) VALUES (%s)", [v])


def run(scenario, variant, i):
    kind, n = scenario
    if kind == "savepoints":
        return nest(variant, [], 1)
    queue = []
    with transaction.atomic():
        if kind == "insert":
            cursor_insert(i)
        for k in range(n):
            if variant == "queue":
                queue.append(hook(k))
            elif variant == "django":
                transaction.on_commit(hook(k))
    for h in queue:
        h()


def nest(variant, queue, level):
    def body():
        if variant == "queue":
            queue.append(hook(level))
        elif variant == "django":
            transaction.on_commit(hook(level))
        if level <= SAVEPOINTS:
            mark = len(queue)
            try:
                nest(variant, queue, level + 1)
            except Rollback:
                del queue[mark:]
        else:
            raise Rollback()

    with transaction.atomic():
        body()
    if level == 1:
        for h in queue:
            h()


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 51
    with connection.cursor() as c:
        c.execute("CREATE TABLE bench_items (id INTEGER PRIMARY KEY, v BIGINT NOT NULL)")
    scenarios = [("empty", 0), ("insert", 0), ("hooks", 1), ("hooks", 10), ("hooks", 100),
                 ("savepoints", 0)]
    variants = ["raw", "queue", "django"]
    print(f"Django {django.get_version()}, SQLite in memory, {rounds} interleaved rounds\n")
    print("| scenario | raw atomic() | atomic() + list | atomic() + on_commit | ratio | p10–p90 |")
    print("|---|---:|---:|---:|---:|---|")
    for sc in scenarios:
        # batch size for ~2 ms
        batch, i = 1, 0
        while True:
            t = time.perf_counter()
            for _ in range(batch):
                run(sc, "django", i)
            if time.perf_counter() - t > 0.002:
                break
            batch *= 2
        samples = {v: [] for v in variants}
        for r in range(rounds):
            order = variants[r % 3:] + variants[:r % 3]
            if r % 2:
                order.reverse()
            for v in order:
                t = time.perf_counter()
                for _ in range(batch):
                    i += 1
                    run(sc, v, i)
                samples[v].append((time.perf_counter() - t) / batch * 1e9)
        base = "raw" if sc[0] in ("empty", "insert") else "queue"
        ratios = sorted(d / b for d, b in zip(samples["django"], samples[base]))
        q = statistics.quantiles(ratios, n=10)
        med = {v: statistics.median(samples[v]) for v in variants}
        name = f"{sc[1]} hooks" if sc[0] == "hooks" else sc[0]
        print(f"| {name} | {med['raw'] / 1e3:.2f} µs | {med['queue'] / 1e3:.2f} µs | "
              f"{med['django'] / 1e3:.2f} µs | **{statistics.median(ratios):.3f}** | "
              f"{q[0]:.3f}–{q[-1]:.3f} |")


if __name__ == "__main__":
    main()
