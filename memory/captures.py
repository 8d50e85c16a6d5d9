"""Captures: episodes written while they run, for agents the store does not drive (bring your own agent).

A capture server opens an episode RUNNING, appends each model call as a step while the agent runs, merges
rewards as they arrive and closes it once: finished, failed or aborted (records.EPISODE_TRANSITIONS).
Every call can be retried: ids are the caller's, a stored step or example is skipped, opening a stored id
or closing with the status it already has changes nothing. Each change to an episode locks its row on
PostgreSQL (SELECT ... FOR UPDATE), so two closers, or a closer and an appender, never both win; on SQLite
every write transaction is exclusive already.

Only FINISHED episodes take training examples; RUNNING and ABORTED ones are not done work either
(`episode_ids` and `task_ids` leave them out), so a resumed run does not skip them.

`write_many` applies a list of these changes (of many episodes) in order in ONE transaction, as a few
statements per run of like changes (capture_ops.py): a capture server with dozens of agents queues their
writes and commits what is pending together (group commit), since one transaction per call made the store's
commits, not the model, what the agents waited for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from strop.memory.capture_ops import (
    AppendOp,
    CaptureOp,
    CloseOp,
    ExamplesOp,
    OpenOp,
    UpdateOp,
    apply_ops,
)
from strop.memory.core import Database, Part, threaded
from strop.memory.episodes import Episodes
from strop.memory.examples import Examples
from strop.memory.records import EpisodeRecord, EpisodeStatus, ExampleRecord, StepRecord
from strop.memory.schema import Episode

__all__ = ["AppendOp", "CaptureOp", "Captures", "CloseOp", "ExamplesOp", "OpenOp", "UpdateOp"]


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
        return bool(self._one(OpenOp(episode)))

    def append_steps(self, episode_id: str, steps: Sequence[StepRecord]) -> int:
        """Add steps to a RUNNING episode. A step id already stored for it is skipped (a retried call);
        returns how many were new. A closed episode refuses them (EpisodeClosedError)."""
        return int(self._one(AppendOp(episode_id, steps)))

    def update_episode(
        self, episode_id: str, *, reward: float | None = None, outcome: dict[str, Any] | None = None
    ) -> EpisodeRecord:
        """Set the reward (when given) and merge `outcome`'s keys into the stored outcome (a shallow
        update). Rewards may arrive after the episode finished or failed; an aborted one refuses them.
        Returns the episode without its children."""
        with self.db.write() as conn:
            apply_ops(self.db, conn, [UpdateOp(episode_id, reward, outcome)])
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
        return bool(self._one(CloseOp(episode_id, EpisodeStatus(status), reward, outcome)))

    def add_examples(self, episode_id: str, examples: Sequence[ExampleRecord]) -> int:
        """Attach training examples to a FINISHED episode (only finished episodes are trained on). Held-out
        examples are refused; an example id already stored is skipped. Returns how many were new."""
        return int(self._one(ExamplesOp(episode_id, examples)))

    def write_many(self, ops: Sequence[CaptureOp]) -> list[Any]:
        """Apply these changes in order in one transaction; returns each one's result (see the op types).
        Any error rolls back all of them and is raised: a caller that batched unrelated episodes retries
        them one at a time (every change is idempotent) to find whose it was."""
        with self.db.write() as conn:
            return apply_ops(self.db, conn, ops)

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

    def _one(self, op: CaptureOp) -> Any:
        with self.db.write() as conn:
            [result] = apply_ops(self.db, conn, [op])
        return result

    aopen_episode = threaded(open_episode)
    aappend_steps = threaded(append_steps)
    aupdate_episode = threaded(update_episode)
    aclose_episode = threaded(close_episode)
    aadd_examples = threaded(add_examples)
    awrite_many = threaded(write_many)
    aepisode_status = threaded(episode_status)
    alist_open = threaded(list_open)
    agroup = threaded(group)
