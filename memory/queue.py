"""A work queue in the store: a run's episodes to do are rows that rollout workers on many hosts claim.

The life of an item (`WorkState`, with the moves `WORK_TRANSITIONS` allows):
- the driver enqueues a run's tasks as `todo` rows (idempotent: enqueueing again adds nothing);
- a worker claims a batch: `todo` rows, or `claimed` rows whose lease expired (their worker died or stalled),
  become `claimed` by it until `expires_at`. On PostgreSQL the claim is one UPDATE over a
  `SELECT ... FOR UPDATE SKIP LOCKED` sub-select, so concurrent workers take disjoint rows without waiting on
  each other; on SQLite every write transaction is exclusive (BEGIN IMMEDIATE), one host only;
- the worker renews all its leases at once from a heartbeat (`renew_work`);
- a finished episode is written in the SAME transaction that marks its item `done`, and only where the item
  is still claimed by that worker. A worker killed before its commit leaves no row and no mark: the lease
  expires and another worker re-runs the episode. A worker that stalled past its lease and was overtaken finds
  its mark refused and writes nothing. The episodes' primary key is the last guard: an episode is never
  written twice, whatever dies when.
- an episode that raised is released (`todo` again) until it has been tried `max_attempts` times, then
  `failed` with the error kept, so a poison task cannot circle forever.

Times come from the database server on PostgreSQL (hosts' clocks may disagree) and from this host on SQLite.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field
from sqlalchemy import Connection, and_, case, delete, func, literal_column, select, text, update

from strop.memory.core import Database, Part, chunks
from strop.memory.episodes import Episodes, refuse_heldout
from strop.memory.errors import InvalidTransitionError, NotFoundError
from strop.memory.records import EpisodeRecord, StoredRecord, UTCDateTime, utcnow
from strop.memory.schema import Episode, Run, WorkItem

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement


class WorkState(StrEnum):
    TODO = "todo"
    CLAIMED = "claimed"
    DONE = "done"
    FAILED = "failed"


# CLAIMED -> CLAIMED is an expired lease taken over by another worker; TODO -> DONE an item whose episode was
# already stored when it was enqueued (a run begun by the single-process runner); FAILED -> TODO a retry asked
# for by `requeue_failed` once the cause is fixed.
WORK_TRANSITIONS: dict[WorkState, frozenset[WorkState]] = {
    WorkState.TODO: frozenset({WorkState.CLAIMED, WorkState.DONE}),
    WorkState.CLAIMED: frozenset({WorkState.CLAIMED, WorkState.TODO, WorkState.DONE, WorkState.FAILED}),
    WorkState.DONE: frozenset(),
    WorkState.FAILED: frozenset({WorkState.TODO}),
}


def check_work_transition(old: WorkState | str, new: WorkState | str) -> None:
    """Raise InvalidTransitionError for a move the state machine forbids."""
    if WorkState(new) not in WORK_TRANSITIONS[WorkState(old)]:
        raise InvalidTransitionError(f"a work item cannot go from {old} to {new}")


class WorkItemRecord(StoredRecord):
    run_id: str
    episode_id: str
    position: int = Field(description="Enqueue order inside the run; claims take the lowest first.")
    task_id: str
    payload: dict[str, Any] = Field(description="The task as plain data (Task.model_dump(mode='json')).")
    state: WorkState
    owner: str | None = None
    expires_at: UTCDateTime | None = None
    attempts: int = 0
    error: str | None = None


class WorkCounts(BaseModel):
    """Where a run's items stand; `expired` are claimed items whose lease has passed (their worker is gone)."""

    todo: int = 0
    claimed: int = 0
    done: int = 0
    failed: int = 0
    expired: int = 0

    @property
    def total(self) -> int:
        return self.todo + self.claimed + self.done + self.failed

    @property
    def settled(self) -> bool:
        """Nothing left to run: every item is done or failed."""
        return self.todo == 0 and self.claimed == 0


class CompletedWork(BaseModel):
    """What `complete_work` did with each episode it was given."""

    written: set[str] = Field(default_factory=set, description="Episodes written and marked done now.")
    lost: set[str] = Field(
        default_factory=set, description="Items this worker no longer held (nothing written)."
    )
    existing: set[str] = Field(
        default_factory=set, description="Episodes already stored; the item is marked done."
    )


class WorkQueue(Part):
    def __init__(self, db: Database, episodes: Episodes) -> None:
        """`episodes`: the part that writes a finished item's episode, inside the queue's transaction."""
        super().__init__(db)
        self.episodes = episodes

    def _expired(self, now: Any, max_attempts: int) -> ColumnElement[bool]:
        w = WorkItem
        return and_(w.state == str(WorkState.CLAIMED), w.expires_at < now, w.attempts < max_attempts)

    def enqueue_work(
        self,
        run_id: str,
        items: Iterable[tuple[str, str, dict[str, Any]]],
        *,
        run_config: dict[str, Any] | None = None,
    ) -> int:
        """Add (episode id, task id, task payload) items to a run's queue, in order; items already queued are
        left as they are (idempotent), and items whose episode is already stored start `done`. `run_config`
        keys are set in the run's config in the same transaction (what workers read to run it). Returns how
        many items were new."""
        rows = [
            {
                "run_id": run_id,
                "episode_id": eid,
                "position": i,
                "task_id": tid,
                "payload": payload,
                "state": str(WorkState.TODO),
                "attempts": 0,
            }
            for i, (eid, tid, payload) in enumerate(items)
        ]
        added = 0
        with self.db.write() as conn:
            q = select(Run.config).where(Run.id == run_id)
            config = conn.scalar(q if self.db.is_sqlite else q.with_for_update())
            if config is None:
                raise NotFoundError(
                    f"run {run_id!r} is not in the store; create_run(RunRecord) before enqueueing"
                )
            if run_config and any(config.get(k) != v for k, v in run_config.items()):
                conn.execute(update(Run).where(Run.id == run_id).values(config={**config, **run_config}))
            now = utcnow()
            for part in chunks(rows, 2000):
                stmt = self.db.insert(WorkItem.__table__).on_conflict_do_nothing(
                    index_elements=["run_id", "episode_id"]
                )
                added += len(
                    conn.execute(
                        stmt.returning(WorkItem.__table__.c.episode_id),
                        [{**r, "updated_at": now} for r in part],
                    ).all()
                )
            if added >= 500 and not self.db.is_sqlite:
                # Fresh statistics after a bulk load, so the planner looks claimed rows up by key rather than
                # scanning a run it believes holds one row (autovacuum would only get to it minutes later).
                conn.execute(text("ANALYZE work_items"))
            stored = select(Episode.id).where(Episode.run_id == run_id)
            conn.execute(
                update(WorkItem)
                .where(
                    WorkItem.run_id == run_id,
                    WorkItem.state == str(WorkState.TODO),
                    WorkItem.episode_id.in_(stored),
                )
                .values(state=str(WorkState.DONE), updated_at=now)
            )
        return added

    def claim_work(
        self, run_id: str, owner: str, ttl: float, limit: int, *, max_attempts: int = 3
    ) -> list[WorkItemRecord]:
        """Claim up to `limit` items of a run for `owner` for `ttl` seconds: `todo` ones first, then claimed ones
        whose lease expired with attempts left. Concurrent claimers get disjoint items and never wait on each
        other (SKIP LOCKED); an empty list means nothing is claimable now (see `work_counts` for why)."""
        with self.db.write() as conn:
            now = self.db.now()
            got = self._claim(conn, run_id, owner, ttl, limit, WorkItem.state == str(WorkState.TODO), now)
            if len(got) < limit:  # a dead worker's items: rare, and only looked for once `todo` runs short
                got += self._claim(
                    conn, run_id, owner, ttl, limit - len(got), self._expired(now, max_attempts), now
                )
        return got

    def _among(self, pick: Any) -> ColumnElement[bool]:
        """episode_id among the picked ones. On PostgreSQL as `= ANY(array of the pick)`, an init-plan, so the
        rows are fetched by primary key whatever the (often stale, for a fresh queue) statistics say."""
        if self.db.is_sqlite:
            return WorkItem.episode_id.in_(select(pick.c.episode_id))
        return WorkItem.episode_id == func.any(literal_column(f"ARRAY(SELECT episode_id FROM {pick.name})"))

    def _claim(
        self, conn: Connection, run_id: str, owner: str, ttl: float, limit: int, which: Any, now: Any
    ) -> list[WorkItemRecord]:
        w = WorkItem
        # The pick is a materialized CTE read through IN: evaluated exactly once (PostgreSQL may re-run a plain
        # sub-select per row, and each run with LIMIT and SKIP LOCKED would lock another batch), and the
        # UPDATE then finds its rows by primary key. One condition per pick, so `todo` is read in index order
        # (run_id, state, position) and the scan stops after `limit` rows, however long the queue.
        pick = (
            select(w.episode_id)
            .where(w.run_id == run_id, which)
            .order_by(w.position)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("pick")
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )
        stmt = (
            update(w)
            .add_cte(pick)
            .where(w.run_id == run_id, self._among(pick))  # picked rows are locked: no one changed them since
            .values(
                state=str(WorkState.CLAIMED),
                owner=owner,
                expires_at=now + timedelta(seconds=ttl),
                attempts=w.attempts + 1,
                updated_at=now,
            )
            .returning(*(c for c in w.__table__.c if c.key != "updated_at"))
        )
        return sorted(
            (WorkItemRecord.model_validate(r) for r in conn.execute(stmt)), key=lambda r: r.position
        )

    def renew_work(self, owner: str, ttl: float) -> int:
        """Push every lease `owner` holds `ttl` seconds ahead (the heartbeat); returns how many it holds.
        Items taken over by another worker are no longer its own and are left alone."""
        with self.db.write() as conn:
            now = self.db.now()
            return conn.execute(
                update(WorkItem)
                .where(WorkItem.owner == owner, WorkItem.state == str(WorkState.CLAIMED))
                .values(expires_at=now + timedelta(seconds=ttl))
            ).rowcount

    def complete_work(self, owner: str, episodes: Sequence[EpisodeRecord]) -> CompletedWork:
        """Write finished episodes and mark their items done, in ONE transaction, for the items `owner` still
        holds; an item it lost (its lease expired and another worker claimed it) gets nothing written."""
        out = CompletedWork()
        refuse_heldout(episodes)
        if not episodes:
            return out
        by_run: dict[str, dict[str, EpisodeRecord]] = {}
        for ep in episodes:
            by_run.setdefault(ep.run_id, {}).setdefault(ep.id, ep)
        try:
            with self.db.write() as conn:
                mine = self._mark_done(conn, owner, by_run)
                out.written = self.episodes.insert_rows(conn, [ep for ep in episodes if ep.id in mine])
        except self.db.integrity_errors:
            # Some episode is stored already (the single-process runner wrote it, or a bug): look first.
            with self.db.write() as conn:
                mine = self._mark_done(conn, owner, by_run)
                stored = set(conn.scalars(select(Episode.id).where(Episode.id.in_(mine)))) if mine else set()
                out.existing = stored
                out.written = self.episodes.insert_rows(
                    conn, [ep for ep in episodes if ep.id in mine - stored]
                )
        out.lost = {ep.id for ep in episodes} - out.written - out.existing
        return out

    def _mark_done(
        self, conn: Connection, owner: str, by_run: dict[str, dict[str, EpisodeRecord]]
    ) -> set[str]:
        mine: set[str] = set()
        for run_id, eps in by_run.items():
            for ids in chunks(list(eps)):
                stmt = (
                    update(WorkItem)
                    .where(
                        WorkItem.run_id == run_id,
                        WorkItem.episode_id.in_(ids),
                        WorkItem.owner == owner,
                        WorkItem.state == str(WorkState.CLAIMED),
                    )
                    .values(state=str(WorkState.DONE), expires_at=None, error=None, updated_at=self.db.now())
                    .returning(WorkItem.episode_id)
                )
                mine.update(conn.scalars(stmt))
        return mine

    def release_work(
        self, owner: str, run_id: str, episode_id: str, error: str | None = None, *, max_attempts: int = 3
    ) -> WorkState | None:
        """Give an item back after its episode raised: `todo` again while it has attempts left, else `failed`
        with the error kept. Returns the new state, or None when `owner` no longer held it."""
        w = WorkItem
        with self.db.write() as conn:
            row = conn.execute(
                select(w.attempts).where(
                    w.run_id == run_id,
                    w.episode_id == episode_id,
                    w.owner == owner,
                    w.state == str(WorkState.CLAIMED),
                )
            ).one_or_none()
            if row is None:
                return None
            state = WorkState.FAILED if row.attempts >= max_attempts else WorkState.TODO
            conn.execute(
                update(w)
                .where(w.run_id == run_id, w.episode_id == episode_id, w.owner == owner)
                .values(state=str(state), owner=None, expires_at=None, error=error, updated_at=self.db.now())
            )
        return state

    def fail_exhausted_work(self, run_id: str, max_attempts: int = 3) -> int:
        """Mark `failed` the items whose lease expired `max_attempts` times (each worker that tried them died
        or stalled); returns how many. Workers call it when they find nothing to claim."""
        w = WorkItem
        with self.db.write() as conn:
            now = self.db.now()
            return conn.execute(
                update(w)
                .where(
                    w.run_id == run_id,
                    w.state == str(WorkState.CLAIMED),
                    w.expires_at < now,
                    w.attempts >= max_attempts,
                )
                .values(
                    state=str(WorkState.FAILED),
                    owner=None,
                    updated_at=now,
                    error=f"its lease expired {max_attempts} times: each worker that ran it died or stalled "
                    "(out of memory? a hung engine?); fix the cause, then requeue_failed / run again",
                )
            ).rowcount

    def requeue_failed(self, run_id: str) -> int:
        """Failed items back to `todo` with their attempts reset (a rerun after fixing what failed them)."""
        with self.db.write() as conn:
            return conn.execute(
                update(WorkItem)
                .where(WorkItem.run_id == run_id, WorkItem.state == str(WorkState.FAILED))
                .values(state=str(WorkState.TODO), attempts=0, updated_at=utcnow())
            ).rowcount

    def work_counts(self, run_id: str) -> WorkCounts:
        w = WorkItem
        with self.db.read() as conn:
            now = self.db.now()
            counts = WorkCounts()
            q = (
                select(w.state, func.count(), func.sum(case((w.expires_at < now, 1), else_=0)))
                .where(w.run_id == run_id)
                .group_by(w.state)
            )
            for state, n, expired in conn.execute(q):
                setattr(counts, str(state), int(n))
                if state == str(WorkState.CLAIMED):
                    counts.expired = int(expired or 0)
        return counts

    def list_work(self, run_id: str, state: WorkState | str | None = None) -> list[WorkItemRecord]:
        q = select(WorkItem).where(WorkItem.run_id == run_id).order_by(WorkItem.position)
        if state is not None:
            q = q.where(WorkItem.state == str(WorkState(state)))
        with self.db.read() as conn:
            return [WorkItemRecord.model_validate(r) for r in conn.execute(q)]

    def open_work_runs(self) -> list[str]:
        """Runs with items left to do or in progress, oldest enqueued first: what `strop worker` serves."""
        q = (
            select(WorkItem.run_id, func.min(WorkItem.updated_at).label("since"))
            .where(WorkItem.state.in_([str(WorkState.TODO), str(WorkState.CLAIMED)]))
            .group_by(WorkItem.run_id)
            .order_by("since")
        )
        with self.db.read() as conn:
            return [r.run_id for r in conn.execute(q)]

    def drop_work(self, run_id: str) -> int:
        """Forget a run's queue (its episodes stay)."""
        with self.db.write() as conn:
            return conn.execute(delete(WorkItem).where(WorkItem.run_id == run_id)).rowcount
