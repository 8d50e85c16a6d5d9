"""The episode runner: many episodes of any loop at once, checkpointed, each written to the store whole.

Episodes run as concurrent asyncio tasks so their engine calls arrive together and the engine batches them
into one forward pass. Graphs are compiled with a LangGraph checkpointer on the store's own database, and
episode ids are a function of (run, task): a killed run, started again with the same run id, skips the
episodes already in the store and resumes half-done ones from their last checkpoint.

One bad item never sinks a run: an episode that fails for its item (agents/episode.py `item_failure`: a
prompt too long for the context, a request refused as invalid) is recorded as a FAILED episode with its
reason, counted in the result and on the progress bar, and the other episodes go on. Bugs and
infrastructure faults (a loop that breaks its contract, a TypeError, the store or the engine down, an
interrupt) still stop the run. A run in which every episode fails stops with `RunFailedError`, one message
naming the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import StateGraph
from pydantic import BaseModel, Field

from strop.agents.episode import failed_episode, failure_text, item_failure, run_episode
from strop.agents.loops.base import episode_id
from strop.memory.records import EpisodeRecord, EpisodeStatus, RunRecord, RunStatus
from strop.sandbox.tasks.base import Task


class RunResult(BaseModel):
    """Totals of a whole run, including episodes finished by an earlier, interrupted attempt."""

    run_id: str
    episodes: int = Field(description="Episodes of this run in the store.")
    episodes_run: int = Field(description="Episodes this call ran (the rest were already done).")
    samples: int = Field(0, description="Answers sampled over all episodes.")
    correct: int = Field(0, description="Answers judged correct.")
    passed: int = Field(0, description="Episodes with at least one correct answer.")
    examples: int = Field(0, description="Training examples emitted.")
    tokens: int = Field(0, description="Completion tokens sampled.")
    seconds: float = Field(0.0, description="Wall time of this call.")
    failed: int = Field(0, description="Episodes recorded as failed: items skipped, each with its reason.")
    failures: dict[str, int] = Field(
        default_factory=dict, description="Failed episodes per kind (too_long, refused, invalid, ...)."
    )
    failure_reasons: dict[str, str] = Field(
        default_factory=dict, description="Per kind, the reason of the first failed episode."
    )

    @property
    def scored(self) -> int:
        """Episodes that ran to the end (the denominator of the rates)."""
        return self.episodes - self.failed

    @property
    def accuracy(self) -> float:
        """Fraction of sampled answers that were correct."""
        return self.correct / self.samples if self.samples else 0.0

    @property
    def pass_rate(self) -> float:
        """Fraction of scored episodes with at least one correct answer (pass@n); skipped items are reported
        apart (`failed`), not counted as wrong answers."""
        return self.passed / self.scored if self.scored else 0.0

    def skipped_line(self) -> str:
        """'skipped: 3, too long for the context' (kinds joined by '; '), or '' when nothing failed."""
        return skipped_line(self.failures)


def skipped_line(failures: dict[str, int]) -> str:
    """The summary of failed items per kind: 'skipped: 3, too long for the context; 1, invalid for this item'."""
    parts = [f"{n}, {failure_text(kind)}" for kind, n in sorted(failures.items(), key=lambda kv: -kv[1])]
    return f"skipped: {'; '.join(parts)}" if parts else ""


class RunFailedError(RuntimeError):
    """Every episode of a run failed: the cause is the run's settings or model, not one item. Nothing of it is
    recorded as failed, so the same run, started again once the cause is fixed, runs every item."""


@contextlib.asynccontextmanager
async def open_checkpointer(db_url: str | None) -> AsyncIterator[BaseCheckpointSaver]:
    """A LangGraph checkpointer on the same database as the store; it keeps its own tables."""
    from sqlalchemy.engine import make_url

    if db_url is None or db_url in ("sqlite://", "sqlite:///:memory:"):
        from langgraph.checkpoint.memory import InMemorySaver

        yield InMemorySaver()
        return
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        async with AsyncSqliteSaver.from_conn_string(url.database or ":memory:") as saver:
            yield saver
    elif url.get_backend_name() == "postgresql":
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        conn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        # A checked pool, not LangGraph's one connection (from_conn_string): a connection the server dropped
        # (a restart, pg_terminate_backend, an idle timeout) is replaced at the next checkout instead of
        # failing every later episode of the run with "the connection is closed".
        async with AsyncConnectionPool(
            conn,
            min_size=1,
            max_size=4,
            kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
            check=AsyncConnectionPool.check_connection,
            open=False,
        ) as pool:
            saver = AsyncPostgresSaver(pool)
            await _setup_saver(saver)
            yield saver
    else:
        raise ValueError(
            f"no LangGraph checkpointer for database {url.get_backend_name()!r}; use SQLite or PostgreSQL"
        )


async def _setup_saver(saver: Any, tries: int = 5) -> None:
    """The saver's migrations, tolerating another process running them at the same moment: rollout workers
    start together, and two concurrent `CREATE TABLE IF NOT EXISTS` can still collide in PostgreSQL's catalog.
    The loser retries once the winner has committed (the migrations skip what is done)."""
    import psycopg

    for attempt in range(tries):
        try:
            await saver.setup()
            return
        except (
            psycopg.errors.UniqueViolation,
            psycopg.errors.DuplicateTable,
            psycopg.errors.DuplicateObject,
        ):
            if attempt == tries - 1:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))


def store_url(store: Any) -> str | None:
    """The database URL a Store was opened on (so the checkpointer can share it)."""
    for attr in ("url", "db_url"):
        value = getattr(store, attr, None)
        if value is not None:
            return (
                str(value)
                if not hasattr(value, "render_as_string")
                else value.render_as_string(hide_password=False)
            )
    engine = getattr(store, "engine", None)
    if engine is not None:
        return engine.url.render_as_string(hide_password=False)
    return None


class Runner:
    """Runs episodes of a loop graph over tasks, concurrently, into the store."""

    def __init__(
        self,
        store: Any,
        *,
        concurrency: int = 64,
        progress: bool = True,
        db_url: str | None = None,
    ) -> None:
        self.store = store
        self.concurrency = concurrency
        self.progress = progress
        self.db_url = db_url if db_url is not None else store_url(store)

    async def run(
        self, graph: StateGraph, tasks: Sequence[Task], run: RunRecord, *, label: str = ""
    ) -> RunResult:
        """Run one episode per task under `run` (created if new), skipping those already in the store.

        An episode that fails for its item is written FAILED with its reason, once the call ends: a FAILED
        episode is done work, so a rerun of the run skips it and does not retry it. The failures isolated here
        are deterministic (the same prompt is as long the next time, the same data as invalid), so retrying
        would fail again, and a loop that retried them would spin forever; what changes the answer (another
        model, other settings) is another run. Failures are held back until the end, so that when every
        episode fails (`RunFailedError`: the cause is the run's, not an item's) none is recorded and the run,
        once fixed, runs them all; an interrupted call likewise leaves its failures to be tried again.
        """
        started = time.monotonic()
        if not run.host:
            run = run.model_copy(update={"host": socket.gethostname()})
        await self.store.acreate_run(run)
        done = await self.store.aepisode_ids(run.id)
        pending = [t for t in tasks if episode_id(run.id, t.id) not in done]
        stats = _Live(total=len(tasks), done=len(tasks) - len(pending))
        async with open_checkpointer(self.db_url) as saver:
            compiled = graph.compile(checkpointer=saver)
            sem = asyncio.Semaphore(self.concurrency)

            writes: set[asyncio.Future[bool]] = set()
            failed: list[EpisodeRecord] = []

            async def one(task: Task) -> None:
                async with sem:
                    try:
                        episode = await run_episode(compiled, task, run.id, checkpointer=saver)
                    except Exception as exc:
                        if (failure := item_failure(exc)) is None:
                            raise  # a bug or an infrastructure fault: the run stops
                        kind, reason = failure
                        ep = failed_episode(
                            task, run.id, run.loop, kind, reason, error_type=type(exc).__name__
                        )
                        failed.append(ep)
                        stats.fail(kind)
                        return
                # Shielded: when a sibling fails, a write already under way completes before run() raises,
                # so the store is settled (and the episode not redone) by the time the caller sees the error.
                write = asyncio.ensure_future(self.store.awrite_episode(episode))
                writes.add(write)
                await asyncio.shield(write)
                with contextlib.suppress(
                    NotImplementedError
                ):  # a saver without deletion just keeps the thread
                    await saver.adelete_thread(episode.id)
                stats.add(episode)

            with _progress_bar(self.progress and bool(pending), label or run.loop, stats) as tick:
                stats.tick = tick
                try:
                    async with asyncio.TaskGroup() as group:
                        for task in pending:
                            group.create_task(one(task))
                except BaseException:
                    await asyncio.gather(*writes, return_exceptions=True)
                    await self.store.afinish_run(run.id, RunStatus.FAILED)
                    raise
            if failed:
                if stats.ok == 0 and not await self._any_finished(run.id):
                    await self.store.afinish_run(run.id, RunStatus.FAILED)
                    raise RunFailedError(_all_failed_message(run.id, failed))
                await self.store.awrite_episodes(failed)
                for ep in failed:
                    with contextlib.suppress(NotImplementedError):
                        await saver.adelete_thread(ep.id)
        await self.store.afinish_run(run.id, RunStatus.FINISHED)
        return await self._result(run.id, ran=len(pending), seconds=time.monotonic() - started)

    async def _any_finished(self, run_id: str) -> bool:
        """Whether an earlier call finished an episode of this run (then its failures are the items')."""
        episodes = await asyncio.to_thread(self.store.list_episodes, run_id, children=False)
        return any(ep.status == EpisodeStatus.FINISHED for ep in episodes)

    async def _result(self, run_id: str, *, ran: int, seconds: float) -> RunResult:
        episodes = await asyncio.to_thread(self.store.list_episodes, run_id, children=False)
        res = RunResult(run_id=run_id, episodes=len(episodes), episodes_run=ran, seconds=seconds)
        for ep in episodes:
            o = ep.outcome
            if ep.status == EpisodeStatus.FAILED:
                kind = str(o.get("error_kind", "failed"))
                res.failed += 1
                res.failures[kind] = res.failures.get(kind, 0) + 1
                res.failure_reasons.setdefault(kind, str(o.get("error", "")))
                continue
            res.samples += int(o.get("n", 0))
            res.correct += int(o.get("correct", 0))
            res.passed += int(bool(o.get("pass", False)))
            res.examples += int(o.get("examples", 0))
            res.tokens += int(o.get("tokens", 0))
        return res


def _all_failed_message(run_id: str, failed: list[EpisodeRecord]) -> str:
    kinds = Counter(str(ep.outcome["error_kind"]) for ep in failed)
    first = failed[0].outcome
    counts = ", ".join(f"{n} {failure_text(kind)}" for kind, n in kinds.most_common())
    return f"every episode of run {run_id} failed ({counts}); task {failed[0].task_id}: {first['error']}"


class _Live:
    """Running totals for the progress bar."""

    def __init__(self, total: int, done: int) -> None:
        self.total, self.done = total, done
        self.samples = self.correct = self.tokens = self.ok = 0
        self.failures: Counter[str] = Counter()
        self.started = time.monotonic()
        self.tick: Any = None

    def fail(self, kind: str) -> None:
        self.done += 1
        self.failures[kind] += 1
        if self.tick is not None:
            self.tick(self)

    def add(self, ep: EpisodeRecord) -> None:
        self.done += 1
        self.ok += 1
        self.samples += int(ep.outcome.get("n", 0))
        self.correct += int(ep.outcome.get("correct", 0))
        self.tokens += int(ep.outcome.get("tokens", 0))
        if self.tick is not None:
            self.tick(self)


@contextlib.contextmanager
def _progress_bar(enabled: bool, label: str, stats: _Live) -> Any:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("acc {task.fields[acc]:.1%}"),
        TextColumn("{task.fields[tps]:.0f} tok/s"),
        TextColumn("{task.fields[skipped]}"),
        TimeElapsedColumn(),
    ) as bar:
        tid = bar.add_task(label, total=stats.total, completed=stats.done, acc=0.0, tps=0.0, skipped="")

        def tick(s: _Live) -> None:
            elapsed = max(time.monotonic() - s.started, 1e-6)
            skipped = sum(s.failures.values())
            bar.update(
                tid,
                completed=s.done,
                acc=s.correct / s.samples if s.samples else 0.0,
                tps=s.tokens / elapsed,
                skipped=f"{skipped} skipped" if skipped else "",
            )

        yield tick


async def run_summary(store: Any, run_id: str) -> RunResult:
    """Totals of a run as recorded in the store (for runs finished by an earlier process)."""
    return await Runner(store, progress=False, db_url="")._result(run_id, ran=0, seconds=0.0)


def resolve_version(store: Any, model: str) -> Any:
    """A model version for `model`: a registry name or id, else a cache name or folder registered as a base.

    Raises `agents.models.ModelNotFoundError` (naming the command that makes the model) when it is none of these.
    """
    from strop.agents.loops.base import stable_id
    from strop.agents.models import resolve_model
    from strop.agents.models.cache import located_version
    from strop.memory.records import ModelStatus, ModelVersionRecord

    found = store.get_model(model)
    if found is not None:
        return located_version(store, found)  # its folders on this host, or one line naming them and the fix
    path = resolve_model(model)
    return store.register_model(
        ModelVersionRecord(
            id=stable_id("model", str(path.resolve())),
            name=model,
            lineage=model,
            path=str(path),
            status=ModelStatus.BASE,
        )
    )


def load_version_engine(version: Any, *, backend: str = "hf", **options: Any) -> Any:
    """An engine serving a registered model version (base folder plus adapter where it has one)."""
    from strop.agents.engines import load_engine

    if version.adapter_path:
        options["adapter_path"] = version.adapter_path
    return load_engine(version.path, backend, model_version=version.id, **options)
