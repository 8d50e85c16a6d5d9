"""Scale-out benchmark: rollout workers on the store's work queue against PostgreSQL.

    .venv/bin/python bench/scale.py                          # all three parts
    .venv/bin/python bench/scale.py --parts sim --workers 1 4 16 --latency 1 --concurrency 4
    .venv/bin/python bench/scale.py --parts tiny --episodes 64

Parts:
- `sim`: N workers (1, 4, 16, 64) running best-of-N episodes through the real worker (LangGraph loop, claims,
  heartbeats, group-committed writes) with an engine of fixed latency and no model
  (strop.agents.sim_engine). Workers are hosted 4 to a process (8 processes at most: one Store and one
  connection pool each, and the server takes 100 connections); on a cluster each would be its own process. Reported per N: episodes/s against the
  ideal N x concurrency / latency, and the share of the workers' wall time spent claiming, writing and
  renewing leases (the store's cost to a worker; target <= 5% at 16 workers).
- `store`: the store alone, no loop and no engine: N claimers (threads across processes) claim a batch,
  and write it back as synthetic best-of-4 episodes with their done-marks, as fast as they can. Its
  episodes/s is the ceiling any number of workers can reach on this database: with a real engine the store
  becomes the bottleneck where N x concurrency / latency passes it.
- `tiny`: the tiny model's episodes/s with 1 and 2 Ray actors on this host (local Ray, 2 CPUs), for the record.

Each configuration gets a fresh PostgreSQL schema; every run ends by checking each episode is stored once.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PG_ADMIN = os.environ.get("STROP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
MAX_PROCESSES = 8  # worker-hosting processes at most: each holds a connection pool, the server has 100


def split(n: int) -> list[int]:
    """Workers per hosting process: 4 to a process up to 32 workers, then evenly over 8 processes. Fewer
    per process is closer to one `strop worker` per host, but each process costs a pool of connections."""
    per = max(4, -(-n // MAX_PROCESSES))
    return [per] * (n // per) + ([n % per] if n % per else [])


@contextmanager
def pg_schema() -> Any:
    import psycopg

    schema = f"strop_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    base = PG_ADMIN.replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def postgres_cpu() -> float:
    """CPU seconds used so far by this host's PostgreSQL processes, exited backends included (0 when the
    server is elsewhere). Other users of the same server are counted too: a shared machine's figure is high."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if "(postgres)" in stat:
            fields = stat.rsplit(")", 1)[1].split()
            # own time, plus (cutime, cstime) the exited backends the postmaster has reaped
            total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _prepare(url: str, run_id: str, n_episodes: int, spec: Any) -> Any:
    from strop.agents.loops.base import episode_id
    from strop.agents.work_spec import WORK_KEY
    from strop.memory import Store
    from strop.memory.records import ModelStatus, ModelVersionRecord, RunRecord
    from strop.sandbox.tasks import ArithmeticTaskSet, Split

    store = Store(url)
    store.register_model(
        ModelVersionRecord(id="sim-v1", name="sim-v1", lineage="sim", path="-", status=ModelStatus.BASE)
    )
    store.create_run(RunRecord(id=run_id, loop="best_of_n", model_ids=["sim-v1"]))
    tasks = ArithmeticTaskSet().tasks(Split.TRAIN, n_episodes)
    store.enqueue_work(
        run_id,
        [(episode_id(run_id, t.id), t.id, t.model_dump(mode="json")) for t in tasks],
        run_config={WORK_KEY: spec.model_dump(mode="json")} if spec is not None else None,
    )
    return store


# --- part 1: the real worker with a fixed-latency engine -------------------------------------------------------


def _host_workers(url: str, run_id: str, k: int, settings: dict[str, Any], out: Any) -> None:
    """One process hosting k workers on one event loop, sharing one Store (as its connection pool)."""
    from strop.agents.worker import Worker, WorkerSettings
    from strop.memory import Store

    # A worker uses up to 3 connections at once (claims, the group-commit writer, the heartbeat); a pool too
    # small for k of them would make them queue for connections, which a process per worker would not.
    store = Store(url, create=False, pool_size=k)
    ws = WorkerSettings.model_validate(settings)

    async def go() -> list[Any]:
        # Threads for each worker's store calls, as k separate processes would have: asyncio's default pool
        # (cpus + 4 = 6 threads here) would queue 16 workers' claims behind each other.
        from concurrent.futures import ThreadPoolExecutor

        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=4 * k))
        workers = [Worker(store, ws) for _ in range(k)]
        return await asyncio.gather(*(w.run(run_id) for w in workers))

    t0 = time.time()
    stats = asyncio.run(go())
    out.put([{**s.model_dump(), "t0": t0, "t1": time.time()} for s in stats])
    store.close()


def sim_run(n: int, *, latency: float, concurrency: int, seconds: float) -> dict[str, Any]:
    from strop.agents.work_spec import EngineSpec, RoleModel, WorkSpec

    episodes = max(20, int(n * concurrency * seconds / latency))
    spec = WorkSpec(
        loop="best_of_n",
        config={"n": 4, "seed": 0},
        task_set="arithmetic",
        roles={"policy": RoleModel(version="sim-v1", lineage="sim")},
        engine=EngineSpec(factory="strop.agents.sim_engine:make_sim_engine", options={"latency": latency}),
    )
    with pg_schema() as url:
        store = _prepare(url, "sim", episodes, spec)
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        per = split(n)
        settings = {"concurrency": concurrency, "lease_ttl": 60.0, "poll": 0.2}
        procs = [ctx.Process(target=_host_workers, args=(url, "sim", k, settings, out)) for k in per]
        pg0, cpu0 = postgres_cpu(), children_cpu()
        for p in procs:
            p.start()
        stats = [s for _ in procs for s in out.get()]
        for p in procs:
            p.join()
        pg_cpu, worker_cpu = postgres_cpu() - pg0, children_cpu() - cpu0
        assert store.work_counts("sim").done == episodes and len(store.episode_ids("sim")) == episodes
        store.close()
    # The run's window: from the first claim of any worker to the last write (start-up is not counted).
    start = min(s["first_claim_at"] for s in stats if s["first_claim_at"])
    wall = max(s["t1"] for s in stats) - start
    busy = sum(s["claim_seconds"] + s["write_seconds"] + s["heartbeat_seconds"] for s in stats)
    worker_wall = sum(s["wall_seconds"] for s in stats)
    return {
        "workers": n,
        "episodes": episodes,
        "eps": episodes / wall,
        "ideal": n * concurrency / latency,
        "store_share": busy / worker_wall,
        "claim_ms": 1000 * sum(s["claim_seconds"] for s in stats) / max(1, sum(s["claims"] for s in stats)),
        "claim_share": sum(s["claim_seconds"] for s in stats) / worker_wall,
        "write_share": sum(s["write_seconds"] for s in stats) / worker_wall,
        "pg_cores": pg_cpu / wall,
        "worker_cpu_ms": 1000 * worker_cpu / episodes,
    }


# --- part 2: the store alone ---------------------------------------------------------------------------------


def _episode(run_id: str, eid: str, task_id: str) -> Any:
    from strop.memory.records import CritiqueRecord, EpisodeRecord, ExampleKind, ExampleRecord, StepRecord

    steps = [
        StepRecord(
            index=i,
            model_version="sim-v1",
            text=f"#### {i}",
            prompt_token_ids=list(range(40)),
            token_ids=list(range(24)),
            logprobs=[-0.5] * 24,
            reward=float(i % 2),
        )
        for i in range(4)
    ]
    return EpisodeRecord(
        id=eid,
        run_id=run_id,
        task_id=task_id,
        loop="best_of_n",
        reward=0.5,
        outcome={"n": 4, "correct": 2, "pass": True, "examples": 2, "tokens": 96},
        steps=steps,
        critiques=[
            CritiqueRecord(
                episode_id=eid,
                step_id=s.id,
                critic_version="verifier",
                verdict="correct",
                text="ok",
                parsed=True,
            )
            for s in steps
        ],
        examples=[
            ExampleRecord(
                kind=ExampleKind.SFT, role="policy", payload={"prompt": [], "completion": []}, task_id=task_id
            )
            for _ in range(2)
        ],
    )


def _host_claimers(url: str, run_id: str, k: int, batch: int, out: Any) -> None:
    from strop.memory import Store

    store = Store(url, create=False, pool_size=k)
    totals = []

    def claimer() -> None:
        owner, n, busy, t0 = uuid.uuid4().hex, 0, 0.0, time.time()
        while True:
            started = time.perf_counter()
            items = store.claim_work(run_id, owner, 60, batch)
            if not items:
                break
            store.complete_work(owner, [_episode(run_id, w.episode_id, w.task_id) for w in items])
            busy += time.perf_counter() - started
            n += len(items)
        totals.append({"episodes": n, "t0": t0, "t1": time.time(), "busy": busy})

    threads = [threading.Thread(target=claimer) for _ in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(totals)
    store.close()


def store_run(n: int, *, episodes: int, batch: int) -> dict[str, Any]:
    with pg_schema() as url:
        store = _prepare(url, "st", episodes, None)
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        per = split(n)
        procs = [ctx.Process(target=_host_claimers, args=(url, "st", k, batch, out)) for k in per]
        pg0 = postgres_cpu()
        for p in procs:
            p.start()
        stats = [s for _ in procs for s in out.get()]
        for p in procs:
            p.join()
        pg_cpu = postgres_cpu() - pg0
        assert store.work_counts("st").done == episodes and len(store.episode_ids("st")) == episodes
        store.close()
    wall = max(s["t1"] for s in stats) - min(s["t0"] for s in stats)
    return {
        "claimers": n,
        "episodes": episodes,
        "eps": episodes / wall,
        "pg_cores": pg_cpu / wall,
        "ms_per_batch": 1000 * statistics.fmean(s["busy"] / max(1, s["episodes"] / batch) for s in stats),
    }


# --- part 3: the tiny model on Ray actors -----------------------------------------------------------------------


def tiny_run(actors: int, *, episodes: int) -> dict[str, Any]:
    from strop.agents.ray_pool import RayPool
    from strop.agents.runner import resolve_version
    from strop.agents.scale import ScaleSettings, run_on_workers
    from strop.agents.work_spec import RoleModel, WorkSpec
    from strop.memory.records import RunRecord
    from strop.sandbox.tasks import Split, load_task_set

    with pg_schema() as url:
        from strop.memory import Store

        store = Store(url)
        version = resolve_version(store, "tiny")
        spec = WorkSpec(
            loop="best_of_n",
            config={"n": 4, "temperature": 1.0, "max_tokens": 24, "seed": 0},
            task_set="arithmetic",
            task_options={"digits": 2},
            roles={"policy": RoleModel(version=version.id, lineage=version.lineage)},
        )
        tasks = load_task_set("arithmetic", digits=2).tasks(Split.TRAIN, episodes)
        scale = ScaleSettings(workers=actors, ray="local", actor_cpus=1, concurrency=64)
        pool = RayPool(store.url, actors, scale.worker_settings(64), address="local", num_cpus=1)
        first: list[float] = []

        def mark(counts: Any, _pool: Any) -> None:
            if counts.done and not first:
                first.append(time.time())

        t0 = time.time()
        res = asyncio.run(
            run_on_workers(
                store,
                RunRecord(id="tiny", loop="best_of_n"),
                spec,
                tasks,
                scale,
                progress=False,
                pool=pool,
                on_progress=mark,
            )
        )
        wall = time.time() - t0
        assert res.episodes == episodes and store.work_counts("tiny").done == episodes
        store.close()
    return {
        "actors": actors,
        "episodes": episodes,
        "wall": wall,
        "eps": episodes / wall,
        "eps_after_first": (episodes - 1) / max(1e-6, t0 + wall - first[0]) if first else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["sim", "store", "tiny"], choices=["sim", "store", "tiny"])
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 4, 16, 64])
    ap.add_argument("--latency", type=float, default=2.0, help="Seconds per engine call (sim part).")
    ap.add_argument("--concurrency", type=int, default=4, help="Episodes in flight per worker (sim part).")
    ap.add_argument(
        "--seconds", type=float, default=12.0, help="Ideal run length per configuration (sim part)."
    )
    ap.add_argument("--store-episodes", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=8, help="Items per claim (store part).")
    ap.add_argument("--episodes", type=int, default=64, help="Episodes per tiny-model run.")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"PostgreSQL {PG_ADMIN}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}", flush=True)
    if "sim" in args.parts:
        print(
            f"\nsim: best-of-4 episodes, engine latency {args.latency:g} s, {args.concurrency} in flight per worker"
        )
        print(
            "workers  episodes  episodes/s  ideal  efficiency  store share (claim / write)  ms per claim  "
            "PostgreSQL cores  worker CPU ms/episode"
        )
        for n in args.workers:
            r = sim_run(n, latency=args.latency, concurrency=args.concurrency, seconds=args.seconds)
            print(
                f"{n:>7}  {r['episodes']:>8}  {r['eps']:>10.1f}  {r['ideal']:>5.0f}  {r['eps'] / r['ideal']:>10.0%}  "
                f"{r['store_share']:>11.2%} ({r['claim_share']:.2%} / {r['write_share']:.2%})  "
                f"{r['claim_ms']:>12.1f}  {r['pg_cores']:>16.2f}  {r['worker_cpu_ms']:>20.1f}",
                flush=True,
            )
    if "store" in args.parts:
        print(
            f"\nstore alone: claim {args.batch}, write them back as best-of-4 episodes, {args.store_episodes} episodes"
        )
        print("claimers  episodes/s  ms per claim+write  PostgreSQL cores")
        for n in args.workers:
            r = store_run(n, episodes=args.store_episodes, batch=args.batch)
            print(
                f"{n:>8}  {r['eps']:>10.0f}  {r['ms_per_batch']:>18.1f}  {r['pg_cores']:>16.2f}", flush=True
            )
    if "tiny" in args.parts:
        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            print(
                f"\ntiny model, best-of-4 on two-digit sums, {args.episodes} episodes, 64 in flight per actor"
            )
            print("actors  wall s  episodes/s  episodes/s from the first episode on (start-up left out)")
            for n in (1, 2):
                r = tiny_run(n, episodes=args.episodes)
                print(
                    f"{n:>6}  {r['wall']:>6.1f}  {r['eps']:>10.2f}  {r['eps_after_first']:>10.2f}", flush=True
                )
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
