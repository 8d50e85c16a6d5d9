"""Store benchmark: how fast trajectories land in the store, against the JSON-lines file most RL
frameworks append to, and how well PostgreSQL takes many writers.

    .venv/bin/python bench/store.py                       # 10,000 episodes, SQLite + PostgreSQL
    .venv/bin/python bench/store.py --episodes 2000 --no-pg
    .venv/bin/python bench/store.py --keep bench-store.db  # keep the SQLite store (for `strop db stats`)

Every episode has 4 steps of 100 token ids and 100 log-probs, one critique and one SFT example; every
variant writes the same records. Figures are rates measured side by side in one run (the machine is
shared), and every run ends by counting rows: none lost, none duplicated.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from strop.memory.records import (
    CritiqueRecord,
    EpisodeRecord,
    ExampleKind,
    ExampleRecord,
    RunRecord,
    StepRecord,
    TrainingJobRecord,
)

PG_ADMIN = os.environ.get("STROP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def make_episodes(run_id: str, n: int, seed: int) -> list[EpisodeRecord]:
    rng = random.Random(seed)
    eps = []
    for e in range(n):
        steps = [
            StepRecord(
                index=i,
                model_version="m0",
                text=f"Step {i + 1}: {rng.randint(10, 99)} + {rng.randint(10, 99)} = {rng.randint(20, 198)}",
                token_ids=[rng.randrange(49_152) for _ in range(100)],
                logprobs=[-rng.random() * 4 for _ in range(100)],
                reward=float(i == 3),
            )
            for i in range(4)
        ]
        eps.append(
            EpisodeRecord(
                run_id=run_id,
                task_id=f"arith-{seed}-{e}",
                loop="best_of_n",
                reward=1.0,
                outcome={"correct": 1, "n": 4},
                steps=steps,
                critiques=[CritiqueRecord(critic_version="verifier", verdict="correct", text="#### matches")],
                examples=[
                    ExampleRecord(
                        kind=ExampleKind.SFT,
                        payload={
                            "prompt": [{"role": "user", "content": f"What is {e} + {seed}?"}],
                            "completion": [
                                {"role": "assistant", "content": "\n".join(s.text for s in steps)}
                            ],
                        },
                    )
                ],
            )
        )
    return eps


def bench_jsonl(eps: list[EpisodeRecord], path: Path) -> float:
    """The baseline: one JSON line per finished episode, appended to an open file (no fsync, like most
    frameworks; SQLite in WAL mode with synchronous=NORMAL does not fsync per commit either)."""
    start = time.perf_counter()
    with path.open("a", encoding="utf-8") as fh:
        for ep in eps:
            fh.write(ep.model_dump_json())
            fh.write("\n")
            fh.flush()
    elapsed = time.perf_counter() - start
    assert sum(1 for _ in path.open()) == len(eps)
    return elapsed


def bench_jsonl_stdlib(eps: list[EpisodeRecord], path: Path) -> float:
    """The same with the standard json module on plain dicts, as frameworks that keep rollouts as dicts do.
    (model_dump is done before the clock starts: only the encoding and the write are timed.)"""
    dicts = [ep.model_dump(mode="json") for ep in eps]
    start = time.perf_counter()
    with path.open("a", encoding="utf-8") as fh:
        for d in dicts:
            fh.write(json.dumps(d))
            fh.write("\n")
            fh.flush()
    return time.perf_counter() - start


def bench_store(url: str, eps: list[EpisodeRecord], run: RunRecord, mode: str, batch: int = 100) -> float:
    """mode: 'one' (write_episode per episode), 'batch' (write_episodes), 'async' (awrite_episode from
    `batch` concurrent coroutines, as a runner driving that many episodes does)."""
    import asyncio

    from strop.memory import Store

    with Store(url) as store:
        store.create_run(run)
        start = time.perf_counter()
        if mode == "one":
            for ep in eps:
                store.write_episode(ep)
        elif mode == "batch":
            for i in range(0, len(eps), batch):
                store.write_episodes(eps[i : i + batch])
        else:

            async def drive() -> None:
                pending = iter(eps)

                async def worker() -> None:
                    for ep in pending:
                        await store.awrite_episode(ep)

                await asyncio.gather(*(worker() for _ in range(batch)))

            asyncio.run(drive())
        return time.perf_counter() - start


def check_counts(url: str, n_episodes: int, run_ids: list[str] | None = None) -> dict[str, int]:
    """Count what landed: every episode once, 4 steps each, one example each."""
    from strop.memory import Store

    with Store(url) as store:
        counts = store.counts()
    expected = {
        "episodes": n_episodes,
        "steps": 4 * n_episodes,
        "critiques": n_episodes,
        "examples": n_episodes,
    }
    for table, want in expected.items():
        if counts[table] != want:
            raise SystemExit(f"LOST OR DUPLICATED ROWS in {url}: {table}={counts[table]}, expected {want}")
    return counts


def bench_dataset(url: str) -> tuple[float, int]:
    """A training job's view: claim every unconsumed SFT example and build the TRL dataset."""
    from strop.memory import Store, to_dataset

    with Store(url) as store:
        start = time.perf_counter()
        job = store.start_job(TrainingJobRecord(algorithm="sft", model_in="m0"))
        examples = store.claim_examples(job.id, role="policy", kind="sft")
        dataset = to_dataset(examples, "sft")
        elapsed = time.perf_counter() - start
        store.finish_job(job.id)
    assert dataset.column_names == ["prompt", "completion"]
    return elapsed, len(dataset)


def _pg_worker(url: str, n: int, seed: int, ready: Any, go: Any, out: Any) -> None:
    from strop.memory import Store

    store = Store(url)
    # Each worker is its own run, as rollout workers on different hosts are.
    run = store.create_run(RunRecord(loop="best_of_n", host=f"worker-{seed}"))
    eps = make_episodes(run.id, n, seed)
    with store.engine.connect() as conn:  # the pool hands this same connection to every write below
        backend = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    ready.release()
    go.wait()
    start, cpu, server = time.perf_counter(), time.process_time(), _proc_cpu(backend)
    for ep in eps:
        store.write_episode(ep)
    out.put((start, time.perf_counter(), time.process_time() - cpu, _proc_cpu(backend) - server))
    store.close()


def _proc_cpu(pid: Any) -> float:
    """CPU seconds of a local process (the PostgreSQL backend serving a writer); 0 if not readable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_pg_writers(url: str, n_total: int, writers: int) -> float:
    """`writers` processes each write n_total/writers episodes at the same time; wall time of the whole."""
    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    per = n_total // writers
    procs = [
        ctx.Process(target=_pg_worker, args=(url, per, 1000 + w, ready, go, out)) for w in range(writers)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    go.set()
    spans = [out.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a PostgreSQL writer failed (exit {p.exitcode})")
    wall = max(s[1] for s in spans) - min(s[0] for s in spans)
    client, server = sum(s[2] for s in spans), sum(s[3] for s in spans)
    # How much CPU the writers and their server processes got: if it does not grow with the number of
    # writers, the machine's free CPU, not the store, is the limit.
    print(
        f"  {writers} writer(s): CPU per episode {1000 * (client + server) / n_total:.2f} ms "
        f"(client {1000 * client / n_total:.2f}, server {1000 * server / n_total:.2f}); "
        f"cores obtained {(client + server) / wall:.2f}; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return wall


def pg_schema_url() -> tuple[str, str]:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=100, help="episodes per transaction for write_episodes")
    ap.add_argument("--concurrency", type=int, default=64, help="coroutines calling awrite_episode")
    ap.add_argument(
        "--rounds", type=int, default=3, help="alternate JSONL and SQLite this many times (median)"
    )
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--keep", type=Path, help="copy the filled SQLite store here (for `strop db stats`)")
    args = ap.parse_args()
    n = args.episodes
    tmp = Path(tempfile.mkdtemp(prefix="strop-bench-"))
    run = RunRecord(loop="best_of_n", config={"bench": "store"})
    eps = make_episodes(run.id, n, seed=0)
    rows: list[tuple[str, float]] = []

    # Interleave JSONL and SQLite so both see the same machine load.
    variants = {
        "jsonl": lambda r: bench_jsonl(eps, tmp / f"episodes-{r}.jsonl"),
        "jsonl_stdlib": lambda r: bench_jsonl_stdlib(eps, tmp / f"stdlib-{r}.jsonl"),
        "sqlite_one": lambda r: bench_store(f"sqlite:///{tmp / f'one-{r}.db'}", eps, run, "one"),
        "sqlite_async": lambda r: bench_store(
            f"sqlite:///{tmp / f'async-{r}.db'}", eps, run, "async", args.concurrency
        ),
        "sqlite_batch": lambda r: bench_store(
            f"sqlite:///{tmp / f'batch-{r}.db'}", eps, run, "batch", args.batch
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, fn in variants.items():
            times[name].append(fn(r))
            if name.startswith("sqlite_"):
                check_counts(f"sqlite:///{tmp / (name.removeprefix('sqlite_') + f'-{r}.db')}", n)
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows += [
        ("JSONL append, pydantic model_dump_json (baseline)", n / med["jsonl"]),
        ("JSONL append, stdlib json.dumps of dicts", n / med["jsonl_stdlib"]),
        ("SQLite, write_episode (one transaction each)", n / med["sqlite_one"]),
        (
            f"SQLite, awrite_episode from {args.concurrency} coroutines (group commit)",
            n / med["sqlite_async"],
        ),
        (f"SQLite, write_episodes({args.batch} per transaction)", n / med["sqlite_batch"]),
    ]
    ds_sqlite, n_ds = bench_dataset(f"sqlite:///{tmp / 'one-0.db'}")
    results: dict[str, Any] = {
        "episodes": n,
        "rates_eps_per_s": {},
        "vs_jsonl": {k: med["jsonl"] / v for k, v in med.items()},
        "sft_dataset_s": {"sqlite": ds_sqlite},
        "sft_dataset_rows": n_ds,
    }
    if args.keep:
        import shutil

        shutil.copy(tmp / "one-0.db", args.keep)

    if not args.no_pg:
        timings: dict[int, float] = {}
        for writers in [1, args.writers] * args.rounds:  # alternate; keep the best of each
            url, schema = pg_schema_url()
            try:
                t = bench_pg_writers(url, n, writers)
                check_counts(url, (n // writers) * writers)
                if writers == 1 and "postgresql" not in results["sft_dataset_s"]:
                    results["sft_dataset_s"]["postgresql"] = bench_dataset(url)[0]
            finally:
                drop_schema(schema)
            timings[writers] = min(timings.get(writers, float("inf")), t)
            print(f"postgresql, {writers} writer(s): {t:.2f}s", flush=True)
        url, schema = pg_schema_url()
        try:
            t_async = bench_store(url, eps, run, "async", args.concurrency)
            check_counts(url, n)
        finally:
            drop_schema(schema)
        print(f"postgresql, awrite_episode x{args.concurrency}: {t_async:.2f}s", flush=True)
        rows += [
            (f"PostgreSQL, awrite_episode from {args.concurrency} coroutines (group commit)", n / t_async),
            ("PostgreSQL, 1 writer process", n / timings[1]),
            (f"PostgreSQL, {args.writers} writer processes", n / timings[args.writers]),
        ]
        results["pg_writers_speedup"] = timings[1] / timings[args.writers]

    results["rates_eps_per_s"] = {name: round(rate) for name, rate in rows}
    print("\n| variant | episodes/s | vs JSONL |\n|---|---:|---:|")
    base = rows[0][1]
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f}x |")
    print(
        f"\nSFT dataset of {n_ds} examples (claim + to_dataset): "
        + ", ".join(f"{k} {v:.2f}s" for k, v in results["sft_dataset_s"].items())
    )
    if "pg_writers_speedup" in results:
        print(f"PostgreSQL {args.writers} writers vs 1: {results['pg_writers_speedup']:.2f}x")
    print("row counts checked after every variant: no lost or duplicated rows")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
