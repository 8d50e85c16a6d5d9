"""Episodes: a finished episode with its steps, critiques and examples, written in one transaction and
read back whole.

Ids are chosen by the caller, so any write can be retried: a second write of the same id changes nothing
and returns False. `awrite_episode` shares transactions between episodes awaited at the same time (group
commit, see group_commit.py); the work queue writes episodes through `insert_rows` inside its own
transaction (queue.py).
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import JSON, Connection, Row, Table, func, select
from sqlalchemy.dialects.postgresql import JSONB

from strop.memory.core import Database, Part, chunks, threaded
from strop.memory.db import to_json_text
from strop.memory.errors import HeldoutLeakError, NotFoundError, StoreError
from strop.memory.group_commit import GroupCommitter
from strop.memory.records import (
    EPISODE_DONE,
    CritiqueRecord,
    EpisodeRecord,
    ExampleRecord,
    StepRecord,
    utcnow,
)
from strop.memory.schema import (
    Critique,
    Episode,
    Example,
    Run,
    Step,
    pack_floats,
    pack_ids,
    unpack_floats,
    unpack_ids,
)

HELDOUT = "heldout"
DONE = sorted(str(s) for s in EPISODE_DONE)  # as stored


def refuse_heldout(episodes: Sequence[EpisodeRecord]) -> None:
    """Raise HeldoutLeakError for an episode that carries training examples of a held-out task."""
    for ep in episodes:
        leaked = [ex.id for ex in ep.examples if str(ex.split) == HELDOUT]
        if leaked:
            raise HeldoutLeakError(
                f"episode {ep.id} (task {ep.task_id}) carries {len(leaked)} training example(s) from a "
                "held-out task: held-out tasks are for evaluation only. Run the loop on the train split, "
                "or drop the examples for evaluation runs."
            )


def step_from_row(row: Row[Any]) -> StepRecord:
    """The one row that does not map by name: the table says `step_index` (`index` is SQL's word) and
    `metadata` (SQLAlchemy's), and keeps token ids and log-probs as packed arrays, not lists."""
    return StepRecord(
        id=row.id,
        parent_id=row.parent_id,
        index=row.step_index,
        role=row.role,
        model_version=row.model_version,
        text=row.text,
        prompt_token_ids=unpack_ids(row.prompt_token_ids),
        token_ids=unpack_ids(row.token_ids),
        logprobs=unpack_floats(row.logprobs),
        reward=row.reward,
        value=row.value,
        visits=row.visits,
        metadata=row._mapping["metadata"],
    )


def episode_row(ep: EpisodeRecord) -> dict[str, Any]:
    """The episode's own row (no children); shared with captures.py, which opens episodes one by one."""
    return {
        "id": ep.id,
        "run_id": ep.run_id,
        "task_id": ep.task_id,
        "loop": ep.loop,
        "status": str(ep.status),
        "reward": ep.reward,
        "outcome": ep.outcome,
        "created_at": ep.created_at,
    }


def step_row(episode_id: str, s: StepRecord) -> dict[str, Any]:
    """A step as the table keeps it (token ids and log-probs packed); the inverse of step_from_row."""
    return {
        "id": s.id,
        "episode_id": episode_id,
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


class Episodes(Part):
    def __init__(self, db: Database, *, group_commit: bool = True) -> None:
        """`group_commit`: concurrent `awrite_episode` calls share transactions (see group_commit.py)."""
        super().__init__(db)
        self.group_commit = group_commit
        self._committer: GroupCommitter | None = None
        self._committer_lock = threading.Lock()
        self._pg_sql: dict[str, tuple[str, list[str]]] = {}

    def close(self) -> None:
        """Write what the group committer holds, then stop it."""
        with self._committer_lock:
            committer, self._committer = self._committer, None
        if committer is not None:
            committer.close()

    # --- writing -------------------------------------------------------------------------------------------

    def write_episode(self, episode: EpisodeRecord) -> bool:
        """Write a finished episode with its steps, critiques and examples in one transaction.
        Returns False (and writes nothing) when an episode with this id is already stored."""
        return self.write_episodes([episode]) == 1

    def write_episodes(self, episodes: Sequence[EpisodeRecord]) -> int:
        """Write several finished episodes in one transaction (fewer commits: the fast path for a runner
        that finishes many at once). Episodes already stored are skipped; returns how many were new."""
        return len(self._write_batch(episodes))

    async def awrite_episode(self, episode: EpisodeRecord) -> bool:
        """Like write_episode; episodes awaited at the same time share a transaction (group commit)."""
        if not self.group_commit:
            return await asyncio.to_thread(self.write_episode, episode)
        with self._committer_lock:
            if self._committer is None:
                self._committer = GroupCommitter(self._write_batch)
        return await asyncio.wrap_future(self._committer.submit(episode))

    def _write_batch(self, episodes: Sequence[EpisodeRecord]) -> set[str]:
        """Returns the ids this call newly stored."""
        refuse_heldout(episodes)
        if not episodes:
            return set()
        unique = list({ep.id: ep for ep in reversed(episodes)}.values())[::-1]  # same id twice: the first
        # Fast path: insert straight away. A new episode (nearly always the case) costs no extra round trip;
        # the primary keys and the foreign key to runs catch retries and mistakes.
        try:
            with self.db.write() as conn:
                return self.insert_rows(conn, unique)
        except self.db.integrity_errors:
            pass
        # Something is already stored (a retry) or wrong: look before writing, and name what is wrong.
        try:
            with self.db.write() as conn:
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
                return self.insert_rows(conn, new)
        except self.db.integrity_errors as exc:
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

    def insert_rows(self, conn: Connection, new: Sequence[EpisodeRecord]) -> set[str]:
        """Insert these episodes' rows in the caller's transaction, without looking first: a stored id
        raises one of `db.integrity_errors`. Returns their ids. For writers that own the transaction (the
        work queue marks items done in the same one); everyone else calls write_episode(s)."""
        if not new:
            return set()
        now = utcnow()
        ep_rows, step_rows, crit_rows, ex_rows = [], [], [], []
        for ep in new:
            ep_rows.append(episode_row(ep))
            step_rows.extend(step_row(ep.id, s) for s in ep.steps)
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
        if self.db.is_sqlite:
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

    # --- reading -------------------------------------------------------------------------------------------

    def has_episode(self, episode_id: str) -> bool:
        with self.db.read() as conn:
            return conn.scalar(select(func.count()).where(Episode.id == episode_id)) == 1

    def episode_ids(self, run_id: str) -> set[str]:
        """Ids of a run's finished or failed episodes: what a resumed run skips. A capture still running or
        aborted is not done work."""
        q = select(Episode.id).where(Episode.run_id == run_id, Episode.status.in_(DONE))
        with self.db.read() as conn:
            return set(conn.scalars(q))

    def task_ids(self, run_ids: Sequence[str]) -> set[str]:
        """The distinct tasks the finished or failed episodes of these runs answered (not running or
        aborted captures)."""
        seen: set[str] = set()
        with self.db.read() as conn:
            for ids in chunks(list(run_ids)):
                q = select(func.distinct(Episode.task_id)).where(
                    Episode.run_id.in_(ids), Episode.status.in_(DONE)
                )
                seen.update(conn.scalars(q))
        return seen

    def get_episode(self, episode_id: str) -> EpisodeRecord | None:
        episodes = self._load(select(Episode).where(Episode.id == episode_id), children=True)
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
        return self._load(q.limit(limit), children=children)

    def _load(self, query: Any, *, children: bool) -> list[EpisodeRecord]:
        with self.db.read() as conn:
            episodes = [EpisodeRecord.model_validate(r) for r in conn.execute(query)]
            if not children or not episodes:
                return episodes
            by_id = {ep.id: ep for ep in episodes}
            steps: dict[str, list[StepRecord]] = defaultdict(list)
            for ids in chunks(list(by_id)):
                for r in conn.execute(select(Step).where(Step.episode_id.in_(ids))):
                    steps[r.episode_id].append(step_from_row(r))
                q = select(Critique).where(Critique.episode_id.in_(ids)).order_by(Critique.id)
                for r in conn.execute(q):
                    by_id[r.episode_id].critiques.append(CritiqueRecord.model_validate(r))
                q = select(Example).where(Example.episode_id.in_(ids)).order_by(Example.id)
                for r in conn.execute(q):
                    by_id[r.episode_id].examples.append(ExampleRecord.model_validate(r))
        for ep_id, ep_steps in steps.items():
            by_id[ep_id].steps = sorted(ep_steps, key=lambda s: s.index)
        return episodes

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
        with self.db.read() as conn:
            return [CritiqueRecord.model_validate(r) for r in conn.execute(q.limit(limit))]

    def counts(self) -> dict[str, int]:
        """Row counts per table: the quick health check (`strop db stats` shows the detail)."""
        tables = {"runs": Run, "episodes": Episode, "steps": Step, "critiques": Critique, "examples": Example}
        with self.db.read() as conn:
            return {
                name: int(conn.scalar(select(func.count()).select_from(t)) or 0) for name, t in tables.items()
            }

    awrite_episodes = threaded(write_episodes)
    ahas_episode = threaded(has_episode)
    aepisode_ids = threaded(episode_ids)
    aget_episode = threaded(get_episode)
    alist_episodes = threaded(list_episodes)
    alist_critiques = threaded(list_critiques)
