"""The Store API: what loops and training jobs call.

Every method is synchronous and has an async twin prefixed `a` that runs it in a worker thread, so
LangGraph nodes can `await store.awrite_episode(ep)` without blocking the event loop. Ids are chosen by the
caller, so any write can be retried: a second write of the same id changes nothing and returns False.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import JSON, Connection, Table, func, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError

from strop.memory.baselines import BaselinesMixin
from strop.memory.core import (
    chunks,
    critique_from_row,
    episode_from_row,
    example_from_row,
    run_from_row,
    step_from_row,
)
from strop.memory.db import to_json_text
from strop.memory.errors import HeldoutLeakError, NotFoundError, StoreError
from strop.memory.firings import FiringsMixin
from strop.memory.group_commit import GroupCommitter
from strop.memory.leases import LeasesMixin
from strop.memory.queue import QueueMixin
from strop.memory.records import (
    CritiqueRecord,
    EpisodeRecord,
    ExampleKind,
    ExampleRecord,
    Role,
    RunRecord,
    RunStatus,
    utcnow,
)
from strop.memory.registry import RegistryMixin
from strop.memory.schema import Critique, Episode, Example, Run, Step, pack_floats, pack_ids
from strop.memory.training_data import TrainingDataMixin

HELDOUT = "heldout"


class Store(RegistryMixin, TrainingDataMixin, BaselinesMixin, LeasesMixin, FiringsMixin, QueueMixin):
    """The trajectory store. `Store()` opens $STROP_DB or ./strop.db; `Store("postgresql://...")` a server;
    `Store("runs/x.db")` a SQLite file. A brand-new database is created at the current schema; an older one
    is refused with the `strop db upgrade` command that fixes it."""

    def __init__(
        self,
        url: str | None = None,
        *,
        create: bool = True,
        busy_timeout: float = 30.0,
        group_commit: bool = True,
        pool_size: int | None = None,
    ) -> None:
        """`busy_timeout`: seconds a SQLite writer waits for the lock before StoreLockedError.
        `group_commit`: concurrent `awrite_episode` calls share transactions (see group_commit.py).
        `pool_size`: PostgreSQL connections kept by this process (default SQLAlchemy's 5, plus 10 on demand)."""
        super().__init__(url, create=create, busy_timeout=busy_timeout, pool_size=pool_size)
        self.group_commit = group_commit
        self._committer: GroupCommitter | None = None
        self._committer_lock = threading.Lock()
        self._pg_sql: dict[str, tuple[str, list[str]]] = {}
        # Pipelined inserts raise psycopg's own IntegrityError, outside SQLAlchemy.
        self._integrity_errors: tuple[type[Exception], ...] = (IntegrityError,)
        if not self.is_sqlite:
            import psycopg

            self._integrity_errors += (psycopg.errors.IntegrityError,)

    def close(self) -> None:
        with self._committer_lock:
            committer, self._committer = self._committer, None
        if committer is not None:
            committer.close()
        super().close()

    # --- runs ----------------------------------------------------------------------------------------------

    def create_run(self, run: RunRecord) -> RunRecord:
        """Insert the run unless one with its id exists; return what the store holds (idempotent)."""
        with self._write() as conn:
            stmt = self._insert(Run.__table__).values(
                id=run.id,
                loop=run.loop,
                config=run.config,
                model_ids=run.model_ids,
                status=str(run.status),
                host=run.host,
                started_at=run.started_at,
                finished_at=run.finished_at,
            )
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))
            row = conn.execute(select(Run).where(Run.id == run.id)).one()
        return run_from_row(row)

    def finish_run(self, run_id: str, status: RunStatus | str = RunStatus.FINISHED) -> None:
        status = RunStatus(status)
        with self._write() as conn:
            done = conn.execute(
                update(Run).where(Run.id == run_id).values(status=str(status), finished_at=utcnow())
            ).rowcount
        if not done:
            raise NotFoundError(f"run {run_id!r} is not in the store; create it with create_run first")

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._read() as conn:
            row = conn.execute(select(Run).where(Run.id == run_id)).one_or_none()
        return None if row is None else run_from_row(row)

    def list_runs(self, loop: str | None = None, limit: int | None = None) -> list[RunRecord]:
        q = select(Run).order_by(Run.started_at.desc(), Run.id)
        if loop is not None:
            q = q.where(Run.loop == loop)
        with self._read() as conn:
            return [run_from_row(r) for r in conn.execute(q.limit(limit))]

    # --- episodes ------------------------------------------------------------------------------------------

    def write_episode(self, episode: EpisodeRecord) -> bool:
        """Write a finished episode with its steps, critiques and examples in one transaction.
        Returns False (and writes nothing) when an episode with this id is already stored."""
        return self.write_episodes([episode]) == 1

    def write_episodes(self, episodes: Sequence[EpisodeRecord]) -> int:
        """Write several finished episodes in one transaction (fewer commits: the fast path for a runner
        that finishes many at once). Episodes already stored are skipped; returns how many were new."""
        return len(self._write_batch(episodes))

    def _write_batch(self, episodes: Sequence[EpisodeRecord]) -> set[str]:
        """Returns the ids this call newly stored."""
        self._refuse_heldout(episodes)
        if not episodes:
            return set()
        unique = list({ep.id: ep for ep in reversed(episodes)}.values())[
            ::-1
        ]  # same id twice: write the first
        # Fast path: insert straight away. A new episode (nearly always the case) costs no extra round trip;
        # the primary keys and the foreign key to runs catch retries and mistakes.
        try:
            with self._write() as conn:
                return self._insert_episodes(conn, unique)
        except self._integrity_errors:
            pass
        # Something is already stored (a retry) or wrong: look before writing, and name what is wrong.
        try:
            with self._write() as conn:
                existing: set[str] = set()
                for ids in chunks([ep.id for ep in unique]):
                    existing.update(conn.scalars(select(Episode.id).where(Episode.id.in_(ids))))
                new = [ep for ep in unique if ep.id not in existing]
                run_ids = {ep.run_id for ep in new}
                missing = run_ids - set(conn.scalars(select(Run.id).where(Run.id.in_(run_ids))))
                if missing:
                    raise NotFoundError(
                        f"episodes name run(s) {sorted(missing)} that are not in the store: call "
                        "create_run(RunRecord) before writing their episodes"
                    )
                return self._insert_episodes(conn, new)
        except self._integrity_errors as exc:
            # A concurrent writer stored one of them between our check and our insert: retry one by one, so
            # each duplicate is skipped by the check and any real conflict surfaces with its own episode.
            if len(unique) > 1:
                return set().union(*(self._write_batch([ep]) for ep in unique))
            if self.has_episode(unique[0].id):
                return set()
            raise StoreError(
                f"episode {unique[0].id} could not be written: {getattr(exc, 'orig', exc)}. A step, critique or example id in it "
                "is already used by another episode; ids must be unique (records.new_id() makes them)."
            ) from exc

    @staticmethod
    def _refuse_heldout(episodes: Sequence[EpisodeRecord]) -> None:
        for ep in episodes:
            leaked = [ex.id for ex in ep.examples if str(ex.split) == HELDOUT]
            if leaked:
                raise HeldoutLeakError(
                    f"episode {ep.id} (task {ep.task_id}) carries {len(leaked)} training example(s) from a "
                    "held-out task: held-out tasks are for evaluation only. Run the loop on the train split, "
                    "or drop the examples for evaluation runs."
                )

    def _insert_episodes(self, conn: Connection, new: Sequence[EpisodeRecord]) -> set[str]:
        if not new:
            return set()
        now = utcnow()
        ep_rows, step_rows, crit_rows, ex_rows = [], [], [], []
        for ep in new:
            ep_rows.append(
                {
                    "id": ep.id,
                    "run_id": ep.run_id,
                    "task_id": ep.task_id,
                    "loop": ep.loop,
                    "status": str(ep.status),
                    "reward": ep.reward,
                    "outcome": ep.outcome,
                    "created_at": ep.created_at,
                }
            )
            for s in ep.steps:
                step_rows.append(
                    {
                        "id": s.id,
                        "episode_id": ep.id,
                        "parent_id": s.parent_id,
                        "step_index": s.index,
                        "role": s.role,
                        "model_version": s.model_version,
                        "text": s.text,
                        "prompt_token_ids": pack_ids(s.prompt_token_ids),
                        "token_ids": pack_ids(s.token_ids),
                        "logprobs": pack_floats(s.logprobs),
                        "reward": s.reward,
                        "value": s.value,
                        "visits": s.visits,
                        "metadata": s.metadata,
                    }
                )
            for c in ep.critiques:
                crit_rows.append(
                    {
                        "id": c.id,
                        "episode_id": ep.id,
                        "step_id": c.step_id,
                        "critic_version": c.critic_version,
                        "verdict": c.verdict,
                        "first_wrong_step": c.first_wrong_step,
                        "text": c.text,
                        "parsed": c.parsed,
                        "validated": c.validated,
                        "corrected_solution": c.corrected_solution,
                    }
                )
            for x in ep.examples:
                ex_rows.append(
                    {
                        "id": x.id,
                        "kind": str(x.kind),
                        "role": str(x.role),
                        "payload": x.payload,
                        "episode_id": ep.id,
                        "task_id": x.task_id if x.task_id is not None else ep.task_id,
                        "split": str(x.split),
                        # Distinct, increasing times keep "oldest first" well defined inside a batch.
                        "created_at": now + timedelta(microseconds=len(ex_rows)),
                    }
                )
        tables = ((Episode, ep_rows), (Step, step_rows), (Critique, crit_rows), (Example, ex_rows))
        if self.is_sqlite:
            for table, rows in tables:
                if rows:  # executemany: one call per table, not per row
                    conn.execute(table.__table__.insert(), rows)
        else:
            self._pg_pipelined_insert(conn, [(t.__table__, r) for t, r in tables if r])
        return {ep.id for ep in new}

    def _pg_pipelined_insert(
        self, conn: Connection, tables: list[tuple[Table, list[dict[str, Any]]]]
    ) -> None:
        """The four inserts of a write in ONE round trip (psycopg pipeline mode).

        Hand-rolled below SQLAlchemy on purpose: SQLAlchemy waits for each statement's result, so a write
        cost one round trip per table, and a PostgreSQL writer spends most of its time waiting on round
        trips (each one a wake-up of the server process), not on work. The SQL is SQLAlchemy's own,
        compiled once per table; JSON columns are sent as text and cast by it.
        """
        raw = conn.connection.dbapi_connection
        assert raw is not None
        with raw.pipeline(), raw.cursor() as cur:
            for table, rows in tables:
                sql, json_cols = self._pg_insert_sql(conn, table)
                if json_cols:
                    rows = [{**r, **{c: to_json_text(r[c]) for c in json_cols}} for r in rows]
                cur.executemany(sql, rows)

    def _pg_insert_sql(self, conn: Connection, table: Table) -> tuple[str, list[str]]:
        cached = self._pg_sql.get(table.name)
        if cached is None:
            compiled = table.insert().compile(
                dialect=conn.dialect, column_keys=[c.key for c in table.columns]
            )
            json_cols = [c.key for c in table.columns if isinstance(c.type, JSON | JSONB)]
            cached = self._pg_sql[table.name] = (compiled.string, json_cols)
        return cached

    def has_episode(self, episode_id: str) -> bool:
        with self._read() as conn:
            return conn.scalar(select(func.count()).where(Episode.id == episode_id)) == 1

    def episode_ids(self, run_id: str) -> set[str]:
        """Ids already stored for a run: what a resumed run skips."""
        with self._read() as conn:
            return set(conn.scalars(select(Episode.id).where(Episode.run_id == run_id)))

    def get_episode(self, episode_id: str) -> EpisodeRecord | None:
        episodes = self._load_episodes(select(Episode).where(Episode.id == episode_id), children=True)
        return episodes[0] if episodes else None

    def list_episodes(
        self,
        run_id: str | None = None,
        limit: int | None = None,
        *,
        loop: str | None = None,
        task_id: str | None = None,
        children: bool = True,
    ) -> list[EpisodeRecord]:
        """Episodes, oldest first, with their steps, critiques and examples unless `children=False`."""
        q = select(Episode).order_by(Episode.created_at, Episode.id)
        for column, value in ((Episode.run_id, run_id), (Episode.loop, loop), (Episode.task_id, task_id)):
            if value is not None:
                q = q.where(column == value)
        return self._load_episodes(q.limit(limit), children=children)

    def _load_episodes(self, query: Any, *, children: bool) -> list[EpisodeRecord]:
        with self._read() as conn:
            episodes = [episode_from_row(r) for r in conn.execute(query)]
            if not children or not episodes:
                return episodes
            by_id = {ep.id: ep for ep in episodes}
            steps: dict[str, list[Any]] = defaultdict(list)
            for ids in chunks(list(by_id)):
                for r in conn.execute(select(Step).where(Step.episode_id.in_(ids))):
                    steps[r.episode_id].append(step_from_row(r))
                for r in conn.execute(
                    select(Critique).where(Critique.episode_id.in_(ids)).order_by(Critique.id)
                ):
                    by_id[r.episode_id].critiques.append(critique_from_row(r))
                for r in conn.execute(
                    select(Example).where(Example.episode_id.in_(ids)).order_by(Example.id)
                ):
                    by_id[r.episode_id].examples.append(example_from_row(r))
        for ep_id, ep_steps in steps.items():
            by_id[ep_id].steps = sorted(ep_steps, key=lambda s: s.index)
        return episodes

    # --- critiques and examples ----------------------------------------------------------------------------

    def list_critiques(
        self,
        episode_id: str | None = None,
        verdict: str | None = None,
        limit: int | None = None,
        *,
        run_id: str | None = None,
        critic_version: str | None = None,
    ) -> list[CritiqueRecord]:
        q = select(Critique).order_by(Critique.id)
        if run_id is not None:
            q = q.join(Episode, Episode.id == Critique.episode_id).where(Episode.run_id == run_id)
        for column, value in (
            (Critique.episode_id, episode_id),
            (Critique.verdict, verdict),
            (Critique.critic_version, critic_version),
        ):
            if value is not None:
                q = q.where(column == value)
        with self._read() as conn:
            return [critique_from_row(r) for r in conn.execute(q.limit(limit))]

    def list_examples(
        self,
        role: Role | str | None = None,
        kind: ExampleKind | str | None = None,
        limit: int | None = None,
        *,
        run_id: str | None = None,
    ) -> list[ExampleRecord]:
        """Examples oldest first, whether consumed or not (training jobs use claim_examples instead)."""
        q = select(Example).order_by(Example.created_at, Example.id)
        if run_id is not None:
            q = q.join(Episode, Episode.id == Example.episode_id).where(Episode.run_id == run_id)
        if role is not None:
            q = q.where(Example.role == str(Role(role)))
        if kind is not None:
            q = q.where(Example.kind == str(ExampleKind(kind)))
        with self._read() as conn:
            return [example_from_row(r) for r in conn.execute(q.limit(limit))]

    def add_examples(self, episode_id: str, examples: Sequence[ExampleRecord]) -> int:
        """Add training examples to an episode already stored (e.g. DPO pairs derived later from its answers).

        Idempotent by example id, like episode writes: an example whose id is stored is skipped, so a builder
        can run again over the same episodes. New examples join the pool that `claim_examples` hands out, each
        once per consumer. Held-out examples are refused. Returns how many were new."""
        leaked = [x.id for x in examples if str(x.split) == HELDOUT]
        if leaked:
            raise HeldoutLeakError(
                f"{len(leaked)} example(s) for episode {episode_id} come from a held-out task: held-out tasks are "
                "for evaluation only"
            )
        if not examples:
            return 0
        unique = list({x.id: x for x in reversed(examples)}.values())[::-1]
        with self._write() as conn:
            task_id = conn.scalar(select(Episode.task_id).where(Episode.id == episode_id))
            if task_id is None:
                raise NotFoundError(
                    f"episode {episode_id!r} is not in the store; write it with write_episode first"
                )
            now = utcnow()
            added = 0
            for part in chunks(unique, 1000):
                rows = [
                    {
                        "id": x.id,
                        "kind": str(x.kind),
                        "role": str(x.role),
                        "payload": x.payload,
                        "episode_id": episode_id,
                        "task_id": x.task_id if x.task_id is not None else task_id,
                        "split": str(x.split),
                        "created_at": now + timedelta(microseconds=added + i),
                    }
                    for i, x in enumerate(part)
                ]
                stmt = self._insert(Example.__table__).on_conflict_do_nothing(index_elements=["id"])
                added += len(conn.execute(stmt.returning(Example.__table__.c.id), rows).all())
        return added

    def counts(self) -> dict[str, int]:
        """Row counts per table: the quick health check (`strop db stats` shows the detail)."""
        tables = {"runs": Run, "episodes": Episode, "steps": Step, "critiques": Critique, "examples": Example}
        with self._read() as conn:
            return {
                name: int(conn.scalar(select(func.count()).select_from(t)) or 0) for name, t in tables.items()
            }

    # --- async twins ---------------------------------------------------------------------------------------

    async def acreate_run(self, run: RunRecord) -> RunRecord:
        return await asyncio.to_thread(self.create_run, run)

    async def afinish_run(self, run_id: str, status: RunStatus | str = RunStatus.FINISHED) -> None:
        await asyncio.to_thread(self.finish_run, run_id, status)

    async def aget_run(self, run_id: str) -> RunRecord | None:
        return await asyncio.to_thread(self.get_run, run_id)

    async def alist_runs(self, loop: str | None = None, limit: int | None = None) -> list[RunRecord]:
        return await asyncio.to_thread(self.list_runs, loop, limit)

    async def awrite_episode(self, episode: EpisodeRecord) -> bool:
        """Like write_episode; episodes awaited at the same time share a transaction (group commit)."""
        if not self.group_commit:
            return await asyncio.to_thread(self.write_episode, episode)
        with self._committer_lock:
            if self._committer is None:
                self._committer = GroupCommitter(self._write_batch)
        return await asyncio.wrap_future(self._committer.submit(episode))

    async def awrite_episodes(self, episodes: Sequence[EpisodeRecord]) -> int:
        return await asyncio.to_thread(self.write_episodes, episodes)

    async def ahas_episode(self, episode_id: str) -> bool:
        return await asyncio.to_thread(self.has_episode, episode_id)

    async def aepisode_ids(self, run_id: str) -> set[str]:
        return await asyncio.to_thread(self.episode_ids, run_id)

    async def aget_episode(self, episode_id: str) -> EpisodeRecord | None:
        return await asyncio.to_thread(self.get_episode, episode_id)

    async def alist_episodes(
        self, run_id: str | None = None, limit: int | None = None, **filters: Any
    ) -> list[EpisodeRecord]:
        return await asyncio.to_thread(self.list_episodes, run_id, limit, **filters)

    async def alist_critiques(
        self,
        episode_id: str | None = None,
        verdict: str | None = None,
        limit: int | None = None,
        **filters: Any,
    ) -> list[CritiqueRecord]:
        return await asyncio.to_thread(self.list_critiques, episode_id, verdict, limit, **filters)

    async def aadd_examples(self, episode_id: str, examples: Sequence[ExampleRecord]) -> int:
        return await asyncio.to_thread(self.add_examples, episode_id, examples)

    async def alist_examples(
        self,
        role: Role | str | None = None,
        kind: ExampleKind | str | None = None,
        limit: int | None = None,
        **filters: Any,
    ) -> list[ExampleRecord]:
        return await asyncio.to_thread(self.list_examples, role, kind, limit, **filters)


__all__ = ["Store", "StoreError"]
