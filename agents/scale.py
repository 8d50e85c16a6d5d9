"""The driver side of scale-out: enqueue a run's episodes, start workers, watch the queue drain.

`run_on_workers` stores the run's `WorkSpec`, enqueues one item per task (idempotent, so a resumed run adds
nothing), starts N workers, shows one progress bar for the whole run from the queue's counts, and returns
the same `RunResult` as the single-process runner. Workers are either local processes
(`python -m strop.agents.worker`, no Ray needed) or Ray actors (agents/ray_pool.py) when `ray` names a
cluster. Either way they pull from the store and write to it directly; the driver never relays episodes.

A worker that dies loses its leases when they expire and the others re-run its episodes; only when every
worker is gone with work left does the driver give up, and `--run-id` (or rerunning the recipe) continues.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from strop.agents.work_spec import WORK_KEY, WorkSpec
from strop.agents.worker import WorkerSettings


class ScaleError(RuntimeError):
    """Scale-out could not run or finish; the message says what to do."""


class ScaleSettings(BaseModel):
    """How many rollout workers collect, and where (`strop run --workers/--ray`, a recipe's [scale])."""

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(0, ge=0, description="Rollout workers; 0 runs episodes in this process (no queue).")
    ray: str | None = Field(
        None,
        description="Ray cluster to start the workers on as actors: 'auto' (the cluster this host belongs "
        "to), 'local' (a new one-host cluster), or an address (ray://head:10001, head:6379). None: local processes.",
    )
    actor_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves for each worker actor.")
    actor_gpus: float = Field(
        0.0, ge=0, description="GPUs Ray reserves for each worker actor (0.5 = two per GPU)."
    )
    concurrency: int | None = Field(
        None, ge=1, description="Episodes in flight per worker; default the run's concurrency."
    )
    lease_ttl: float = Field(
        60.0,
        gt=0,
        description="Seconds a worker's claim outlives its last heartbeat; "
        "how long a dead worker's episodes wait to be re-run.",
    )
    poll: float = Field(
        1.0, gt=0, description="Seconds an idle worker waits before looking at the queue again."
    )
    external: bool = Field(
        False,
        description="Start no workers: enqueue, then wait for `strop worker` processes started elsewhere "
        "(a Kubernetes Deployment, other hosts' shells).",
    )
    checkpoints: bool = Field(
        False,
        description="LangGraph checkpoints per node in workers: an episode a dead "
        "worker left half-done resumes from its last node instead of "
        "starting over; worth it for long episodes (MCTS, games) only.",
    )

    @property
    def enabled(self) -> bool:
        """Whether collection goes through the store's queue (else the single-process Runner)."""
        return self.workers > 0 or self.external

    def worker_settings(self, concurrency: int) -> WorkerSettings:
        return WorkerSettings(
            concurrency=self.concurrency or concurrency, lease_ttl=self.lease_ttl, poll=self.poll
        )


class WorkerPool(Protocol):
    """N workers serving one run: local processes or Ray actors. `external` pools did not start their workers,
    so the driver never gives up on them."""

    external: bool

    def start(self, run_id: str) -> None: ...

    def alive(self) -> int: ...

    def errors(self) -> list[str]: ...

    def stop(self) -> list[dict[str, Any]]: ...


class ExternalPool:
    """Workers this driver does not start (`strop worker` anywhere); `alive` counts who holds claims now."""

    external = True

    def __init__(self, store: Any) -> None:
        self.store = store
        self.run_id = ""

    def start(self, run_id: str) -> None:
        self.run_id = run_id

    def alive(self) -> int:
        from strop.memory.queue import WorkState

        items = self.store.list_work(self.run_id, WorkState.CLAIMED)
        return len({w.owner for w in items})

    def errors(self) -> list[str]:
        return []

    def stop(self) -> list[dict[str, Any]]:
        return []


class ProcessPool:
    """Workers as local processes: `python -m strop.agents.worker`, the database URL in their environment
    (never on a command line, where `ps` would show its password)."""

    def __init__(self, db_url: str, n: int, settings: WorkerSettings) -> None:
        self.db_url, self.n, self.settings = db_url, n, settings
        self.procs: list[subprocess.Popen[str]] = []
        self.external = False

    def start(self, run_id: str) -> None:
        env = {**os.environ, "STROP_DB": self.db_url}
        # N workers on one host share its cores: torch's default (a thread per core in each) oversubscribes
        # them, and spinning OpenMP threads then starve each other (the tiny model ran 20x slower with 2).
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.n)))
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        cmd = [
            sys.executable,
            "-m",
            "strop.agents.worker",
            "--run-id",
            run_id,
            "--concurrency",
            str(self.settings.concurrency),
            "--lease-ttl",
            str(self.settings.lease_ttl),
            "--poll",
            str(self.settings.poll),
        ]
        self.procs = [
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(self.n)
        ]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def alive(self) -> int:
        return sum(p.poll() is None for p in self.procs)

    def errors(self) -> list[str]:
        return [
            f"worker pid {p.pid} exited with status {p.returncode}"
            for p in self.procs
            if p.returncode not in (None, 0)
        ]

    def stop(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait for the workers to exit (they do once the run is settled), killing stragglers; their stats."""
        import json

        stats = []
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                out, _ = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            lines = [line for line in (out or "").splitlines() if line.startswith("{")]
            if p.returncode == 0 and lines:
                stats.append(json.loads(lines[-1]))
        return stats


def make_pool(scale: ScaleSettings, db_url: str, concurrency: int, store: Any = None) -> WorkerPool:
    settings = scale.worker_settings(concurrency)
    if scale.external:
        return ExternalPool(store)
    if scale.ray:
        from strop.agents.ray_pool import RayPool

        return RayPool(
            db_url,
            scale.workers,
            settings,
            address=scale.ray,
            num_cpus=scale.actor_cpus,
            num_gpus=scale.actor_gpus,
        )
    return ProcessPool(db_url, scale.workers, settings)


def _check_db(db_url: str, scale: ScaleSettings) -> None:
    from strop.memory.db import is_sqlite, sqlite_path

    if not is_sqlite(db_url):
        return
    if sqlite_path(db_url) is None:
        raise ScaleError(
            "workers need a store they can open themselves; an in-memory SQLite store is private to "
            "this process: give --db a file path or a postgresql:// URL"
        )
    if scale.ray and scale.ray != "local":
        raise ScaleError(
            f"Ray workers on cluster {scale.ray!r} may run on other hosts, which cannot open the SQLite "
            f"file {sqlite_path(db_url)}: use a PostgreSQL store (--db postgresql://...; docs/scale.md)"
        )


async def run_on_workers(
    store: Any,
    run: Any,
    spec: WorkSpec,
    tasks: Sequence[Any],
    scale: ScaleSettings,
    *,
    concurrency: int = 64,
    progress: bool = True,
    label: str = "",
    on_progress: Callable[[Any, WorkerPool], None] | None = None,
    pool: WorkerPool | None = None,
) -> Any:
    """Run one episode per task on `scale.workers` workers; returns the run's `RunResult`.

    Raises ScaleError when every worker exited with work left, or when episodes failed for good (the run is
    then marked failed; fix the cause and run again with the same run id: done episodes are kept)."""
    from strop.agents.loops.base import episode_id
    from strop.agents.runner import Runner, open_checkpointer, store_url
    from strop.memory.records import RunStatus

    started = time.monotonic()
    db_url = store_url(store) or ""
    _check_db(db_url, scale)
    if not scale.enabled:
        raise ScaleError("run_on_workers needs scale.workers >= 1 or scale.external (else use the Runner)")
    if not run.host:
        run = run.model_copy(update={"host": socket.gethostname()})
    await store.acreate_run(run)
    items = [(episode_id(run.id, t.id), t.id, t.model_dump(mode="json")) for t in tasks]
    await asyncio.to_thread(
        store.enqueue_work, run.id, items, run_config={WORK_KEY: spec.model_dump(mode="json")}
    )
    await asyncio.to_thread(store.requeue_failed, run.id)  # running it again is the retry of what failed
    before = (await asyncio.to_thread(store.work_counts, run.id)).done
    if spec.checkpoints:
        async with open_checkpointer(db_url):  # its tables, once, before N workers race to create them
            pass
    pool = pool or make_pool(scale, db_url, concurrency, store)
    if pool.external:
        print(
            f"run {run.id}: waiting for workers; start them with `strop worker --db URL` on any host",
            flush=True,
        )
    counts = await asyncio.to_thread(store.work_counts, run.id)
    try:
        if not counts.settled:
            pool.start(run.id)
        with _bar(progress and not counts.settled, label or run.loop, counts.total, scale) as tick:
            while not counts.settled:
                if tick is not None:
                    tick(counts, pool.alive())
                if on_progress is not None:
                    on_progress(counts, pool)
                if not pool.external and pool.alive() == 0:
                    counts = await asyncio.to_thread(store.work_counts, run.id)
                    if counts.settled:
                        break
                    why = "; ".join(pool.errors()) or "they exited"
                    raise ScaleError(
                        f"all {scale.workers} workers are gone with {counts.todo + counts.claimed} "
                        f"episode(s) of run {run.id} left ({why}); their output is above. Fix the "
                        f"cause and run again with --run-id {run.id}: done episodes are kept"
                    )
                await asyncio.sleep(0.25)
                counts = await asyncio.to_thread(store.work_counts, run.id)
            if tick is not None:
                tick(counts, pool.alive())
    except BaseException:
        await store.afinish_run(run.id, RunStatus.FAILED)
        raise
    finally:
        await asyncio.to_thread(pool.stop)
    if counts.failed:
        await store.afinish_run(run.id, RunStatus.FAILED)
        from strop.memory.queue import WorkState

        failed = await asyncio.to_thread(store.list_work, run.id, WorkState.FAILED)
        first = "; ".join(f"{w.task_id}: {w.error}" for w in failed[:3])
        raise ScaleError(
            f"{counts.failed} episode(s) of run {run.id} failed for good ({first}). Fix the cause, "
            f"then run again with --run-id {run.id} (done episodes are kept, failed ones retried)"
        )
    await store.afinish_run(run.id, RunStatus.FINISHED)
    return await Runner(store, progress=False, db_url="")._result(
        run.id, ran=counts.done - before, seconds=time.monotonic() - started
    )


@contextlib.contextmanager
def _bar(enabled: bool, label: str, total: int, scale: ScaleSettings) -> Any:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    where = f"Ray {scale.ray}" if scale.ray else "processes"
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[eps]:.1f} episodes/s"),
        TextColumn("{task.fields[workers]}"),
        TimeElapsedColumn(),
    ) as bar:
        tid = bar.add_task(label, total=total, eps=0.0, workers="")
        t0, done0 = time.monotonic(), None

        def tick(counts: Any, alive: int) -> None:
            nonlocal done0
            done0 = counts.done if done0 is None else done0
            rate = (counts.done - done0) / max(time.monotonic() - t0, 1e-6)
            bar.update(
                tid,
                completed=counts.done + counts.failed,
                eps=rate,
                workers=f"{alive}/{scale.workers} workers ({where})",
            )

        yield tick
