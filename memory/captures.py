"""Captures: episodes written while they run, for agents the store does not drive (bring your own agent).

A capture server opens an episode RUNNING, appends each model call as a step while the agent runs, merges
rewards as they arrive and closes it once: finished, failed or aborted (records.EPISODE_TRANSITIONS).
Every call can be retried: ids are the caller's, a stored step or example is skipped, opening a stored id
or closing with the status it already has changes nothing. Each change to an episode locks its row on
PostgreSQL (SELECT ... FOR UPDATE), so two closers, or a closer and an appender, never both win; on SQLite
every write transaction is exclusive already.

Only FINISHED episodes take training examples; RUNNING and ABORTED ones are not done work either
(`episode_ids` and `task_ids` leave them out), so a resumed run does not skip them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select, update

from strop.memory.core import Database, Part, chunks, threaded
from strop.memory.episodes import Episodes, episode_row, step_row
from strop.memory.errors import (
    EpisodeClosedError,
    EpisodeStateError,
    InvalidTransitionError,
    NotFoundError,
    StoreError,
)
from strop.memory.examples import Examples
from strop.memory.records import (
    EPISODE_TRANSITIONS,
    EpisodeRecord,
    EpisodeStatus,
    ExampleRecord,
    StepRecord,
)
from strop.memory.schema import Episode, Run, Step

# The verb for closing into each status, for messages ("cannot abort it").
_VERB = {
    EpisodeStatus.FINISHED: "finish",
    EpisodeStatus.FAILED: "fail",
    EpisodeStatus.ABORTED: "abort",
}


class Captures(Part):
    """Open (running) episodes: open, append steps, update rewards, close; reached as `store.captures`.

    Not flat on the Store: `add_examples` is the examples part's name there, and `group` or `list_open`
    would say little beside the other parts' names."""

    def __init__(self, db: Database, episodes: Episodes, examples: Examples) -> None:
        super().__init__(db)
        self.episodes = episodes
        self.examples = examples

    # --- writing ---------------------------------------------------------------------------------------

    def open_episode(self, episode: EpisodeRecord) -> bool:
        """Store a RUNNING episode without children; steps follow with `append_steps`. Returns False (and
        changes nothing) when an episode with this id is already stored."""
        if episode.status != EpisodeStatus.RUNNING:
            raise ValueError(
                f"open_episode takes a running episode, got status {str(episode.status)!r} for {episode.id}: "
                "build it with status=EpisodeStatus.RUNNING, or store a finished one with write_episode"
            )
        if episode.steps or episode.critiques or episode.examples:
            raise ValueError(
                f"episode {episode.id} is opened with steps, critiques or examples: open it bare, then "
                "append_steps while it runs and add_examples once it finished"
            )
        with self.db.write() as conn:
            if conn.scalar(select(Run.id).where(Run.id == episode.run_id)) is None:
                raise NotFoundError(
                    f"episode {episode.id} names run {episode.run_id!r}, which is not in the store: call "
                    "create_run(RunRecord) before opening its episodes"
                )
            stmt = self.db.insert(Episode.__table__).on_conflict_do_nothing(index_elements=["id"])
            added = conn.execute(stmt.returning(Episode.__table__.c.id), [episode_row(episode)]).all()
        return bool(added)

    def append_steps(self, episode_id: str, steps: Sequence[StepRecord]) -> int:
        """Add steps to a RUNNING episode. A step id already stored for it is skipped (a retried call);
        returns how many were new. A closed episode refuses them (EpisodeClosedError)."""
        unique = list({s.id: s for s in reversed(steps)}.values())[::-1]  # same id twice: the first
        with self.db.write() as conn:
            status = self._lock(conn, episode_id)
            if status != EpisodeStatus.RUNNING:
                raise EpisodeClosedError(
                    f"episode {episode_id} is {status}: it takes no more steps. Open a new episode for "
                    "further calls"
                )
            if not unique:
                return 0
            added: set[str] = set()
            stmt = self.db.insert(Step.__table__).on_conflict_do_nothing(index_elements=["id"])
            for part in chunks(unique, 1000):
                rows = [step_row(episode_id, s) for s in part]
                added.update(conn.scalars(stmt.returning(Step.__table__.c.id), rows))
            skipped = [s.id for s in unique if s.id not in added]
            for ids in chunks(skipped):
                q = select(Step.id, Step.episode_id).where(Step.id.in_(ids), Step.episode_id != episode_id)
                taken = conn.execute(q).first()
                if taken is not None:
                    raise StoreError(
                        f"step {taken.id} for episode {episode_id} is already stored for episode "
                        f"{taken.episode_id}: step ids must be unique (records.new_id() makes them)"
                    )
        return len(added)

    def update_episode(
        self, episode_id: str, *, reward: float | None = None, outcome: dict[str, Any] | None = None
    ) -> EpisodeRecord:
        """Set the reward (when given) and merge `outcome`'s keys into the stored outcome (a shallow
        update). Rewards may arrive after the episode finished or failed; an aborted one refuses them.
        Returns the episode without its children."""
        with self.db.write() as conn:
            status = self._lock(conn, episode_id)
            if status == EpisodeStatus.ABORTED:
                raise EpisodeClosedError(
                    f"episode {episode_id} is aborted: it takes no rewards or outcome. Aborted episodes are "
                    "never trained on"
                )
            self._merge(conn, episode_id, reward, outcome)
            row = conn.execute(select(Episode).where(Episode.id == episode_id)).one()
        return EpisodeRecord.model_validate(row)

    def close_episode(
        self,
        episode_id: str,
        status: EpisodeStatus | str,
        *,
        reward: float | None = None,
        outcome: dict[str, Any] | None = None,
    ) -> bool:
        """Close a RUNNING episode as finished, failed or aborted, merging `reward` and `outcome` as
        `update_episode` does, in one transaction. Closing again with the same status changes nothing and
        returns False (a retry, or the loser of two closers); another closed status is refused."""
        target = EpisodeStatus(status)
        if target == EpisodeStatus.RUNNING:
            raise InvalidTransitionError(
                f"close_episode({episode_id!r}) needs a closed status (finished, failed or aborted), not running"
            )
        with self.db.write() as conn:
            current = self._lock(conn, episode_id)
            if current == target:
                return False
            if target not in EPISODE_TRANSITIONS[current]:
                raise EpisodeClosedError(
                    f"episode {episode_id} is already {current}; cannot {_VERB[target]} it"
                )
            self._merge(conn, episode_id, reward, outcome, status=target)
        return True

    def add_examples(self, episode_id: str, examples: Sequence[ExampleRecord]) -> int:
        """Attach training examples to a FINISHED episode (only finished episodes are trained on). Held-out
        examples are refused; an example id already stored is skipped. Returns how many were new."""
        status = self.episode_status(episode_id)
        if status is None:
            raise NotFoundError(
                f"episode {episode_id!r} is not in the store; open it with open_episode first"
            )
        if status != EpisodeStatus.FINISHED:
            raise EpisodeStateError(
                f"episode {episode_id} is {status}: only finished episodes take training examples. Close it "
                "with close_episode(..., EpisodeStatus.FINISHED) first"
            )
        # FINISHED is final, so the status cannot change between this check and the examples' transaction,
        # which refuses held-out examples (HeldoutLeakError) and skips stored ids.
        return self.examples.add_examples(episode_id, examples)

    # --- reading ---------------------------------------------------------------------------------------

    def episode_status(self, episode_id: str) -> EpisodeStatus | None:
        """The episode's status, or None when it is not stored."""
        with self.db.read() as conn:
            status = conn.scalar(select(Episode.status).where(Episode.id == episode_id))
        return None if status is None else EpisodeStatus(status)

    def list_open(self, run_id: str | None = None) -> list[EpisodeRecord]:
        """RUNNING episodes (of one run, or all), oldest first, without their children."""
        q = select(Episode).where(Episode.status == str(EpisodeStatus.RUNNING))
        if run_id is not None:
            q = q.where(Episode.run_id == run_id)
        with self.db.read() as conn:
            rows = conn.execute(q.order_by(Episode.created_at, Episode.id))
            return [EpisodeRecord.model_validate(r) for r in rows]

    def group(self, run_id: str, task_id: str) -> list[EpisodeRecord]:
        """Every episode of one run and task, oldest first, with steps: the group whose rewards make each
        member's group-relative advantage."""
        return self.episodes.list_episodes(run_id, task_id=task_id)

    # --- helpers ---------------------------------------------------------------------------------------

    def _lock(self, conn: Connection, episode_id: str) -> EpisodeStatus:
        """The episode's status, its row locked until the transaction ends (PostgreSQL; SQLite's write
        transaction is exclusive). NotFoundError when it is not stored."""
        q = select(Episode.status).where(Episode.id == episode_id)
        status = conn.scalar(q if self.db.is_sqlite else q.with_for_update())
        if status is None:
            raise NotFoundError(
                f"episode {episode_id!r} is not in the store; open it with open_episode first"
            )
        return EpisodeStatus(status)

    def _merge(
        self,
        conn: Connection,
        episode_id: str,
        reward: float | None,
        outcome: dict[str, Any] | None,
        *,
        status: EpisodeStatus | None = None,
    ) -> None:
        values: dict[str, Any] = {}
        if reward is not None:
            values["reward"] = reward
        if outcome:
            stored = conn.scalar(select(Episode.outcome).where(Episode.id == episode_id)) or {}
            values["outcome"] = {**stored, **outcome}
        if status is not None:
            values["status"] = str(status)
        if values:
            conn.execute(update(Episode).where(Episode.id == episode_id).values(**values))

    aopen_episode = threaded(open_episode)
    aappend_steps = threaded(append_steps)
    aupdate_episode = threaded(update_episode)
    aclose_episode = threaded(close_episode)
    aadd_examples = threaded(add_examples)
    aepisode_status = threaded(episode_status)
    alist_open = threaded(list_open)
    agroup = threaded(group)
