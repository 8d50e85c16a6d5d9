"""Rollout workers: processes (or Ray actors) on any host that run a run's episodes from the store's queue.

A driver (`strop run --workers N`, `strop evolve` with `[scale]`) stores a `WorkSpec` (work_spec.py) in the
run's config and enqueues the run's tasks (agents/scale.py). A worker needs nothing but the database URL: it
reads the spec, builds the loop with its OWN engines, claims a batch of episodes (memory/queue.py), runs them
concurrently through the runner's episode machinery (LangGraph checkpoints on the same database, so an
episode a dead worker left half-done resumes from its last node), and writes each finished episode in the
transaction that marks it done. A heartbeat thread renews its leases; when it dies, they expire and another
worker re-runs them.

Version check per claim: before each claim the worker compares the models the run asks for (a role that
follows its lineage asks the registry for the current promoted version) with those its engines serve, and
reloads the ones that changed, after the episodes in flight have finished.

Run one by hand with `strop worker --db URL` or `python -m strop.agents.worker --db URL`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from strop.agents.work_spec import (
    EngineSpec,
    RoleModel,
    WorkSpec,
    WorkSpecError,
    import_factory,
    load_spec_task_set,
    work_spec_of,
)
from strop.memory.group_commit import GroupCommitter
from strop.memory.records import EpisodeRecord, ModelVersionRecord

if TYPE_CHECKING:  # the queue pulls in SQLAlchemy: loaded when a worker runs, not when a recipe is read
    from strop.memory.queue import WorkItemRecord

log = logging.getLogger(__name__)


class WorkerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    concurrency: int = Field(
        64, ge=1, description="Episodes in flight at once (the engine batches across them)."
    )
    lease_ttl: float = Field(60.0, gt=0, description="Seconds a claim lasts without a heartbeat.")
    poll: float = Field(
        1.0, gt=0, description="Seconds between looks at the queue when nothing is claimable."
    )
    exit_when_idle: bool = Field(True, description="Stop when no run has work left (else wait for new runs).")


class WorkerStats(BaseModel):
    """What one worker did; the store-time figures are what bench/scale.py reports."""

    owner: str
    episodes: int = Field(0, description="Episodes this worker wrote.")
    lost: int = Field(0, description="Finished episodes not written: their lease had been taken over.")
    failed: int = Field(0, description="Episodes that raised (released for another try, or failed for good).")
    claims: int = 0
    reloads: int = 0
    claim_seconds: float = 0.0
    write_seconds: float = 0.0
    heartbeat_seconds: float = 0.0
    wall_seconds: float = 0.0
    first_claim_at: float | None = Field(None, description="Epoch seconds of its first non-empty claim.")


def _registry_key(role: RoleModel) -> str:
    """What the registry is asked for a role: its lineage's live version when it follows one, else its own."""
    return f"lineage:{role.lineage}" if role.follow and role.lineage else role.version


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class _Heartbeat:
    """Renews every lease the worker holds, every ttl/3 seconds, from a daemon thread (so a busy event loop
    cannot starve it); a failed renewal is retried at the next beat, while the leases still have time left."""

    def __init__(self, store: Any, owner: str, ttl: float, stats: WorkerStats) -> None:
        self.store, self.owner, self.ttl, self.stats = store, owner, ttl, stats
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="strop-work-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            started = time.perf_counter()
            try:
                self.store.renew_work(self.owner, self.ttl)
            except Exception as e:
                log.warning("work heartbeat of %s failed, retrying: %s", self.owner, e)
            self.stats.heartbeat_seconds += time.perf_counter() - started

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Worker:
    """Pulls episodes of open runs from the store's queue and writes them back, exactly once each."""

    def __init__(
        self,
        store: Any,
        settings: WorkerSettings | None = None,
        *,
        owner: str | None = None,
        saver: Any = None,
    ) -> None:
        self.store = store
        self.settings = settings or WorkerSettings()
        self.owner = owner or new_owner()
        self.stats = WorkerStats(owner=self.owner)
        # a checkpointer shared by workers hosted in one process; else one is opened when a run asks for it
        self._shared_saver = saver
        self._saver: Any = None
        self._engines: dict[str, Any] = {}  # version id -> the engine serving it
        self._records: dict[str, ModelVersionRecord] = {}  # version id -> its registry record
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Finish the episodes in flight, then return from `run` (claims nothing more)."""
        self._stop.set()

    async def run(self, run_id: str | None = None) -> WorkerStats:
        """Serve `run_id` until its queue is settled, or, without one, every open run until none is left
        (or until `stop()` when `exit_when_idle` is off)."""
        started = time.perf_counter()
        beat = _Heartbeat(self.store, self.owner, self.settings.lease_ttl, self.stats)
        committer = GroupCommitter(self._complete)
        try:
            self._saver = self._shared_saver
            async with contextlib.AsyncExitStack() as self._exits:
                while not self._stop.is_set():
                    rid = run_id or await self._next_run()
                    if rid is None:
                        if self.settings.exit_when_idle:
                            break
                        await self._sleep(self.settings.poll)
                        continue
                    await self._serve(rid, committer)
                    if run_id is not None:
                        break
        finally:
            await asyncio.to_thread(committer.close)
            beat.stop()
            for engine in self._engines.values():
                await engine.close()
            self._engines.clear()
            self.stats.wall_seconds = time.perf_counter() - started
        return self.stats

    async def _saver_for(self, spec: WorkSpec) -> Any:
        """The checkpointer, opened the first time a run asks for checkpoints (a connection of its own)."""
        if not spec.checkpoints:
            return None
        if self._saver is None:
            from strop.agents.runner import open_checkpointer, store_url

            self._saver = await self._exits.enter_async_context(open_checkpointer(store_url(self.store)))
        return self._saver

    async def _next_run(self) -> str | None:
        runs = await asyncio.to_thread(self.store.open_work_runs)
        return runs[0] if runs else None

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def _complete(self, episodes: Sequence[EpisodeRecord]) -> set[str]:
        """The group committer's write: episodes and their done-marks, one transaction per batch."""
        started = time.perf_counter()
        try:
            out = self.store.complete_work(self.owner, episodes)
        finally:
            self.stats.write_seconds += time.perf_counter() - started
        self.stats.episodes += len(out.written)
        self.stats.lost += len(out.lost)
        if out.lost:
            log.warning(
                "%s: %d finished episode(s) not written: their leases were taken over (this worker "
                "stalled past lease_ttl=%gs?)",
                self.owner,
                len(out.lost),
                self.settings.lease_ttl,
            )
        return out.written | out.existing

    async def _serve(self, run_id: str, committer: GroupCommitter) -> None:
        spec = work_spec_of(await asyncio.to_thread(self.store.get_run, run_id), run_id)
        saver = await self._saver_for(spec)
        task_set = load_spec_task_set(spec)
        cap = self.settings.concurrency
        in_flight: set[asyncio.Task[None]] = set()
        graph: Any = None
        while not self._stop.is_set():
            if len(in_flight) <= cap // 2:  # refill in batches: fewer, larger claims
                versions = await asyncio.to_thread(self._wanted_versions, spec)
                if graph is None or self._stale(versions):
                    if in_flight:  # never swap weights under a running episode
                        await asyncio.wait(in_flight)
                        in_flight.clear()
                    graph = await self._graph(spec, task_set, versions, saver)
                started = time.perf_counter()
                items = await asyncio.to_thread(
                    self.store.claim_work,
                    run_id,
                    self.owner,
                    self.settings.lease_ttl,
                    cap - len(in_flight),
                    max_attempts=spec.max_attempts,
                )
                self.stats.claim_seconds += time.perf_counter() - started
                self.stats.claims += 1
                if items and self.stats.first_claim_at is None:
                    self.stats.first_claim_at = time.time()
                for item in items:
                    in_flight.add(asyncio.create_task(self._episode(graph, item, spec, saver, committer)))
            if not in_flight:
                counts = await asyncio.to_thread(self.store.work_counts, run_id)
                if counts.settled:
                    return
                # Only leases still alive (another worker's) or exhausted ones remain: wait for them to expire.
                await asyncio.to_thread(self.store.fail_exhausted_work, run_id, spec.max_attempts)
                await self._sleep(self.settings.poll)
                continue
            await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            in_flight = {t for t in in_flight if not t.done()}
        if in_flight:
            await asyncio.wait(in_flight)

    async def _episode(
        self,
        graph: Any,
        item: WorkItemRecord,
        spec: WorkSpec,
        saver: Any,
        committer: GroupCommitter,
    ) -> None:
        from strop.agents.episode import failed_episode, item_failure, run_episode
        from strop.sandbox.tasks.base import Task

        task: Task | None = None
        try:
            task = Task.model_validate(item.payload)
            # With checkpoints, an episode a dead worker left half-done resumes from its last node.
            episode = await run_episode(
                graph, task, item.run_id, checkpointer=saver if spec.checkpoints else None
            )
        except Exception as e:
            self.stats.failed += 1
            failure = item_failure(e) if task is not None else None
            if task is not None and failure is not None:
                # The item's own fault (too long, refused, invalid data): the same on every try and every
                # worker, so it is recorded FAILED with its reason at once, as the runner does, not retried.
                log.warning("episode %s failed for its task: %s", item.episode_id, failure[1])
                failed = failed_episode(task, item.run_id, spec.loop, *failure, error_type=type(e).__name__)
                await asyncio.wrap_future(committer.submit(failed.model_copy(update={"id": item.episode_id})))
                return
            log.exception("episode %s (task %s) raised", item.episode_id, item.task_id)
            await asyncio.to_thread(
                self.store.release_work,
                self.owner,
                item.run_id,
                item.episode_id,
                f"{type(e).__name__}: {e}",
                max_attempts=spec.max_attempts,
            )
            return
        await asyncio.wrap_future(committer.submit(episode))
        if spec.checkpoints:
            with contextlib.suppress(NotImplementedError):
                await saver.adelete_thread(episode.id)

    # --- engines -------------------------------------------------------------------------------------------

    def _wanted_versions(self, spec: WorkSpec) -> dict[str, ModelVersionRecord]:
        """role -> the version it must play with now: the version check, done before every claim."""
        out: dict[str, ModelVersionRecord] = {}
        cache: dict[str, ModelVersionRecord | None] = {}
        for role, rm in spec.roles.items():
            key = _registry_key(rm)
            if key not in cache:
                if rm.follow and rm.lineage:
                    cache[key] = self.store.current_model(rm.lineage)
                else:
                    cache[key] = self._records.get(rm.version) or self.store.get_model(rm.version)
            found = cache[key]
            if found is None:
                raise WorkSpecError(
                    f"role {role!r}: model {rm.version} (lineage {rm.lineage!r}) is not in the "
                    "registry of this store; the driver registers it: check --db"
                )
            out[role] = found
        return out

    def _stale(self, versions: dict[str, ModelVersionRecord]) -> bool:
        return any(v.id not in self._engines for v in versions.values())

    async def _graph(
        self, spec: WorkSpec, task_set: Any, versions: dict[str, ModelVersionRecord], saver: Any
    ) -> Any:
        from strop.agents.loops.registry import LoopResources, get_loop

        wanted = {v.id: v for v in versions.values()}
        spare = [e for vid, e in self._engines.items() if vid not in wanted]
        engines: dict[str, Any] = {}
        for vid, version in wanted.items():
            if vid in self._engines:
                engines[vid] = self._engines[vid]
            elif spare and hasattr(spare[-1], "reload"):
                engine = spare.pop()
                log.info("%s: reloading %s -> %s", self.owner, engine.model_version, vid)
                await engine.reload(version.path, adapter_path=version.adapter_path, model_version=vid)
                engines[vid] = engine
                self.stats.reloads += 1
            else:
                engines[vid] = self._load_engine(version, spec.engine)
        for engine in spare:
            await engine.close()
        self._engines, self._records = engines, wanted
        loop = get_loop(spec.loop)
        resources = LoopResources(
            engines={r: engines[v.id] for r, v in versions.items()},
            task_set=task_set,
            store=self.store,
            label=spec.label,
        )
        built = loop.make(resources, loop.parse_config(spec.config))
        return built.compile(checkpointer=saver) if saver is not None else built.compile()

    @staticmethod
    def _load_engine(version: ModelVersionRecord, engine: EngineSpec) -> Any:
        if engine.factory:
            return import_factory(engine.factory)(version, **engine.options)
        from strop.agents.runner import load_version_engine

        return load_version_engine(version, backend=engine.backend, **engine.options)


def run_worker(
    db: str | None, run_id: str | None = None, settings: WorkerSettings | None = None
) -> WorkerStats:
    """A worker in this process until its run (or every open run) is settled."""
    from strop.memory import Store

    store = Store(db, create=False)
    try:
        return asyncio.run(Worker(store, settings).run(run_id))
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m strop.agents.worker`: what `strop run --workers N` starts N of."""
    p = argparse.ArgumentParser(prog="python -m strop.agents.worker", description=__doc__.split("\n")[0])
    p.add_argument("--db", help="Store URL (default $STROP_DB, which is how `strop run --workers` passes it)")
    p.add_argument("--run-id")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--lease-ttl", type=float, default=60.0)
    p.add_argument("--poll", type=float, default=1.0)
    args = p.parse_args(argv)
    from strop._env import set_process_defaults

    set_process_defaults()  # a worker process is strop's own: offline hub, passive OpenMP waits
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s worker %(process)d %(levelname)s %(message)s"
    )
    stats = run_worker(
        args.db,
        args.run_id,
        WorkerSettings(concurrency=args.concurrency, lease_ttl=args.lease_ttl, poll=args.poll),
    )
    print(stats.model_dump_json(), flush=True)


if __name__ == "__main__":
    main()
