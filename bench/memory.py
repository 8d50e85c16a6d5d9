"""Reflection-memory benchmark: retrieval latency with 100,000 stored embeddings, SQLite and PostgreSQL.

    .venv/bin/python bench/memory.py                        # 100,000 rows, 300 queries, both backends
    .venv/bin/python bench/memory.py --rows 20000 --no-pg
    .venv/bin/python bench/memory.py --embedder             # also time MiniLM embedding one problem text

The vectors are random unit vectors of MiniLM's dimension (384), not embeddings of real problems: latency
depends on the number and size of the vectors, not on what they mean, and embedding 100,000 texts on 2
shared cores would take most of an hour. Each row hangs off a real episode row (the foreign key), over
50,000 tasks (two failures each), in one task-set scope; each query excludes one task, as a loop does.

Both stores are built first; then every query runs on SQLite and on PostgreSQL back to back, in alternating
order, so the shared machine's noise falls on both alike. What is timed, per backend:
  - insert: `ReflectionMemory.add` of all rows (1,000 per transaction), rows/s;
  - cold: the first search in a fresh process cache (reads every vector of the scope);
  - query: `search_vector(k)` end to end (freshness probe, numpy scoring, top-k, reading k texts), p50/p95;
    and its parts: the freshness probe (the scope's highest seq) and the numpy scoring + top-k;
  - recount: counting the scope's rows, which a search does every `recount_s` (30 s) to notice deletions and
    rows committed out of order;
  - refresh: the first search after 100 more rows arrive (the incremental read);
  - embed (with --embedder): MiniLM encoding one problem text, which `search(text)` adds to a query.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from strop.memory import Store
from strop.memory.records import RunRecord, utcnow
from strop.memory.reflections import ReflectionItem, ReflectionMemory, _top_distinct
from strop.memory.schema import Episode

PG_ADMIN = os.environ.get("STROP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
DIM = 384
SCOPE = "arithmetic[word_problems=True]"
MODEL = "bench-random-unit"


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill(store: Store, rows: int, tasks: int, seed: int) -> tuple[ReflectionMemory, float]:
    """`rows` failures (with their episodes) in one scope; returns the memory and the add rate (rows/s)."""
    run = store.create_run(RunRecord(loop="best_of_n"))
    now = utcnow()
    episodes = [
        {
            "id": f"ep{i}",
            "run_id": run.id,
            "task_id": f"arithmetic/train/{i % tasks}",
            "loop": "best_of_n",
            "status": "finished",
            "reward": 0.0,
            "outcome": {},
            "created_at": now,
        }
        for i in range(rows)
    ]
    with store.db.write() as conn:
        for start in range(0, rows, 5000):
            conn.execute(Episode.__table__.insert(), episodes[start : start + 5000])
    items = [
        ReflectionItem(
            e["id"],
            e["task_id"],
            f"Ana has {i % 97} coins. Then {i % 89} more coins arrive. How many coins are there now?",
            f"Step 1: wrong\n#### {i}",
            f"expected {i + 1}, got {i}",
        )
        for i, e in enumerate(episodes)
    ]
    mem = ReflectionMemory(store, model=MODEL)
    started = time.perf_counter()
    assert mem.add(SCOPE, items, unit_rows(np.random.default_rng(seed), rows)) == rows
    return mem, rows / (time.perf_counter() - started)


def pg_url() -> tuple[str, str]:
    import psycopg

    schema = f"strop_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return (
        f"{PG_ADMIN.replace('postgresql://', 'postgresql+psycopg://', 1)}?options=-csearch_path%3D{schema}",
        schema,
    )


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def ms(seconds: list[float], q: float) -> float:
    return 1000 * float(np.quantile(seconds, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("-k", type=int, default=3)
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--embedder", action="store_true", help="also time MiniLM embedding one problem text")
    args = ap.parse_args()
    tasks = max(1, args.rows // 2)
    tmp = tempfile.mkdtemp(prefix="strop-bench-memory-")
    backends: dict[str, tuple[Store, ReflectionMemory]] = {}
    inserted: dict[str, float] = {}
    schema = None
    try:
        urls = {"SQLite": f"sqlite:///{tmp}/memory.db"}
        if not args.no_pg:
            urls["PostgreSQL"], schema = pg_url()
        for name, url in urls.items():
            store = Store(url)
            mem, rate = fill(store, args.rows, tasks, seed=1)
            backends[name], inserted[name] = (store, mem), rate
            print(f"{name}: {args.rows:,} rows added at {rate:,.0f} rows/s", flush=True)
        rng = np.random.default_rng(2)
        queries = unit_rows(rng, args.queries)
        excluded = [f"arithmetic/train/{int(t)}" for t in rng.integers(0, tasks, args.queries)]
        timings: dict[str, dict[str, list[float]]] = {
            n: {"query": [], "check": [], "score": []} for n in backends
        }
        cold: dict[str, float] = {}
        for name, (_, mem) in backends.items():
            started = time.perf_counter()
            mem.search_vector(SCOPE, queries[0], args.k)
            cold[name] = time.perf_counter() - started
        names = list(backends)
        for i in range(args.queries):
            for name in names if i % 2 == 0 else names[::-1]:
                mem = backends[name][1]
                t0 = time.perf_counter()
                hits = mem.search_vector(SCOPE, queries[i], args.k, exclude_task_ids=[excluded[i]])
                t1 = time.perf_counter()
                mem._top(SCOPE)
                t2 = time.perf_counter()
                m = mem._cache[SCOPE]
                scores = m.vectors @ queries[i]
                _top_distinct(scores, m.tasks, args.k)
                t3 = time.perf_counter()
                assert len(hits) == args.k and excluded[i] not in {h.task_id for h in hits}
                timings[name]["query"].append(t1 - t0)
                timings[name]["check"].append(t2 - t1)
                timings[name]["score"].append(t3 - t2)
        recount: dict[str, float] = {}
        for name, (_, mem) in backends.items():
            samples = []
            for _ in range(5):
                t0 = time.perf_counter()
                mem.count(SCOPE)
                samples.append(time.perf_counter() - t0)
            recount[name] = statistics.median(samples)
        refresh: dict[str, float] = {}
        for name, (store, mem) in backends.items():
            more = ReflectionMemory(store, model=MODEL)  # another process's memory adds 100 failures
            run_id = store.list_runs()[0].id
            more_eps = [
                {
                    "id": f"new{j}",
                    "run_id": run_id,
                    "task_id": f"arithmetic/train/new{j}",
                    "loop": "best_of_n",
                    "status": "finished",
                    "reward": 0.0,
                    "outcome": {},
                    "created_at": utcnow(),
                }
                for j in range(100)
            ]
            with store.db.write() as conn:
                conn.execute(Episode.__table__.insert(), more_eps)
            more.add(
                SCOPE,
                [ReflectionItem(e["id"], e["task_id"], "p", "a", "c") for e in more_eps],
                unit_rows(rng, 100),
            )
            started = time.perf_counter()
            mem.search_vector(SCOPE, queries[0], args.k)
            refresh[name] = time.perf_counter() - started
            assert mem._cache[SCOPE].count == args.rows + 100
        embed = None
        if args.embedder:
            from strop.memory.embeddings import Embedder

            e = Embedder()
            e.encode(["warm up"])
            texts = [
                f"Ana has {i} coins. Then {i + 7} more coins arrive. How many coins are there now?"
                for i in range(50)
            ]
            samples = []
            for t in texts:
                t0 = time.perf_counter()
                e.encode([t])
                samples.append(time.perf_counter() - t0)
            embed = samples
        report(args, backends, inserted, cold, timings, recount, refresh, embed)
    finally:
        for store, _ in backends.values():
            store.close()
        if schema is not None:
            drop_schema(schema)


def report(
    args: Any,
    backends: dict[str, Any],
    inserted: dict[str, float],
    cold: dict[str, float],
    timings: dict[str, dict[str, list[float]]],
    recount: dict[str, float],
    refresh: dict[str, float],
    embed: list[float] | None,
) -> None:
    print(
        f"\n{args.rows:,} rows of {DIM} float32 ({args.rows * DIM * 4 / 2**20:.0f} MiB of vectors), "
        f"{args.queries} queries, k={args.k}, load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| | " + " | ".join(backends) + (" | PostgreSQL / SQLite |" if len(backends) == 2 else " |"))
    print("|---|" + "---:|" * (len(backends) + (len(backends) == 2)))

    def row(label: str, values: dict[str, float], fmt: str) -> None:
        ratio = f" | {values['PostgreSQL'] / values['SQLite']:.2f}x" if len(values) == 2 else ""
        print(f"| {label} | " + " | ".join(format(v, fmt) for v in values.values()) + ratio + " |")

    row("add, rows/s", inserted, ",.0f")
    row("cold first search (reads every vector), ms", {n: 1000 * v for n, v in cold.items()}, ",.0f")
    for part, label in (
        ("query", "search_vector end to end"),
        ("check", "freshness probe (highest seq)"),
        ("score", "numpy scoring + top-k"),
    ):
        row(f"{label}, p50 ms", {n: ms(t[part], 0.5) for n, t in timings.items()}, ".2f")
        row(f"{label}, p95 ms", {n: ms(t[part], 0.95) for n, t in timings.items()}, ".2f")
    row("recount of the scope (every 30 s), median ms", {n: 1000 * v for n, v in recount.items()}, ".1f")
    row("first search after 100 new rows, ms", {n: 1000 * v for n, v in refresh.items()}, ".1f")
    if embed:
        print(
            f"\nMiniLM embedding of one problem text: p50 {ms(embed, 0.5):.1f} ms, p95 {ms(embed, 0.95):.1f} ms "
            f"(median of {len(embed)}: {1000 * statistics.median(embed):.1f} ms)"
        )


if __name__ == "__main__":
    main()
