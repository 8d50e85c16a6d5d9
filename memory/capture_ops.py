"""The changes to captured (running) episodes, applied many at a time: the SQL behind `store.captures`.

Why batched: a capture server with dozens of agents queues their writes and commits what is pending together
(group commit). Applied one by one, each change cost two or three statements (lock, read, write) and their
SQLAlchemy overhead, about 0.5 ms of CPU each on a small machine, taken from the process that also serves the
model. Here a run of consecutive changes of one family costs a few statements in all: consecutive opens one
INSERT; consecutive appends one locking SELECT and one INSERT; consecutive rewards and closes one locking
SELECT and one UPDATE; consecutive examples one SELECT and one INSERT. Each op's result and error are exactly
those of applying the ops one at a time in order (`Captures.write_many`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import groupby
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from strop.memory.core import Database, chunks
from strop.memory.episodes import HELDOUT, episode_row, step_row
from strop.memory.errors import (
    EpisodeClosedError,
    EpisodeStateError,
    HeldoutLeakError,
    InvalidTransitionError,
    NotFoundError,
    StoreError,
)
from strop.memory.records import (
    EPISODE_TRANSITIONS,
    EpisodeRecord,
    EpisodeStatus,
    ExampleRecord,
    StepRecord,
    utcnow,
)
from strop.memory.schema import Episode, Example, Run, Step

# The verb for closing into each status, for messages ("cannot abort it").
_VERB = {
    EpisodeStatus.FINISHED: "finish",
    EpisodeStatus.FAILED: "fail",
    EpisodeStatus.ABORTED: "abort",
}


@dataclass(frozen=True)
class OpenOp:
    """`open_episode(episode)`; its result is True when newly stored."""

    episode: EpisodeRecord

    @property
    def episode_id(self) -> str:
        return self.episode.id


@dataclass(frozen=True)
class AppendOp:
    """`append_steps(episode_id, steps)`; its result is how many steps were new."""

    episode_id: str
    steps: Sequence[StepRecord]


@dataclass(frozen=True)
class UpdateOp:
    """`update_episode(episode_id, reward=, outcome=)`; its result is None (nothing is read back)."""

    episode_id: str
    reward: float | None = None
    outcome: dict[str, Any] | None = None


@dataclass(frozen=True)
class CloseOp:
    """`close_episode(episode_id, status, reward=, outcome=)`; its result is True when it closed it."""

    episode_id: str
    status: EpisodeStatus
    reward: float | None = None
    outcome: dict[str, Any] | None = None


@dataclass(frozen=True)
class ExamplesOp:
    """`add_examples(episode_id, examples)`; its result is how many were new."""

    episode_id: str
    examples: Sequence[ExampleRecord] = field(default_factory=list)


CaptureOp = OpenOp | AppendOp | UpdateOp | CloseOp | ExamplesOp


def apply_ops(db: Database, conn: Connection, ops: Sequence[CaptureOp]) -> list[Any]:
    """Apply the ops in order on the caller's transaction; one result per op."""
    results: list[Any] = []
    for family, run in groupby(ops, key=_family):
        results.extend(family(db, conn, list(run)))
    return results


def _family(op: CaptureOp) -> Any:
    if isinstance(op, OpenOp):
        return _open
    if isinstance(op, AppendOp):
        return _append
    if isinstance(op, UpdateOp | CloseOp):  # both change the episode row: one family, applied in order
        return _change
    if isinstance(op, ExamplesOp):
        return _examples
    raise TypeError(f"write_many takes OpenOp, AppendOp, UpdateOp, CloseOp or ExamplesOp, not {op!r}")


def _first_claims(ids_per_op: list[list[str]], added: set[str]) -> list[list[str]]:
    """Which of each op's ids it newly stored: an id two ops carry is the first one's (as one at a time)."""
    out = []
    for ids in ids_per_op:
        mine = [i for i in ids if i in added]
        added.difference_update(mine)
        out.append(mine)
    return out


def _open(db: Database, conn: Connection, ops: list[OpenOp]) -> list[bool]:
    eps = [op.episode for op in ops]
    runs = {ep.run_id for ep in eps}
    known = set(conn.scalars(select(Run.id).where(Run.id.in_(runs))))
    for ep in eps:
        if ep.run_id not in known:
            raise NotFoundError(
                f"episode {ep.id} names run {ep.run_id!r}, which is not in the store: call "
                "create_run(RunRecord) before opening its episodes"
            )
    added: set[str] = set()
    stmt = db.insert(Episode.__table__).on_conflict_do_nothing(index_elements=["id"])
    for part in chunks(eps, 1000):
        added.update(conn.scalars(stmt.returning(Episode.__table__.c.id), [episode_row(ep) for ep in part]))
    return [bool(mine) for mine in _first_claims([[ep.id] for ep in eps], added)]


def _rows(db: Database, conn: Connection, ids: list[str], *columns: Any) -> dict[str, Any]:
    """The episodes' rows by id, locked until the transaction ends (PostgreSQL; SQLite's write transaction
    is exclusive). NotFoundError names the first one (in order) that is not stored."""
    found: dict[str, Any] = {}
    unique = list(dict.fromkeys(ids))
    for part in chunks(unique):
        q = select(Episode.id, *columns).where(Episode.id.in_(part)).order_by(Episode.id)
        found.update((r.id, r) for r in conn.execute(q if db.is_sqlite else q.with_for_update()))
    for i in unique:
        if i not in found:
            raise NotFoundError(f"episode {i!r} is not in the store; open it with open_episode first")
    return found


def _append(db: Database, conn: Connection, ops: list[AppendOp]) -> list[int]:
    rows = _rows(db, conn, [op.episode_id for op in ops], Episode.status)
    for op in ops:
        status = EpisodeStatus(rows[op.episode_id].status)
        if status != EpisodeStatus.RUNNING:
            raise EpisodeClosedError(
                f"episode {op.episode_id} is {status}: it takes no more steps. Open a new episode for "
                "further calls"
            )
    # same id twice in one op: the first
    uniques = [list({s.id: s for s in reversed(op.steps)}.values())[::-1] for op in ops]
    values = [step_row(op.episode_id, s) for op, steps in zip(ops, uniques, strict=True) for s in steps]
    added: set[str] = set()
    stmt = db.insert(Step.__table__).on_conflict_do_nothing(index_elements=["id"])
    for part in chunks(values, 1000):
        added.update(conn.scalars(stmt.returning(Step.__table__.c.id), part))
    ids = [[s.id for s in steps] for steps in uniques]
    claimed = _first_claims(ids, added)
    # an id an op did not store is a retry only when it is stored for that op's own episode
    skipped = [
        (i, op.episode_id)
        for op, mine, all_ in zip(ops, claimed, ids, strict=True)
        for i in all_
        if i not in set(mine)
    ]
    owners: dict[str, str] = {}
    for part in chunks(list({i for i, _ in skipped})):
        owners.update(
            (r.id, r.episode_id)
            for r in conn.execute(select(Step.id, Step.episode_id).where(Step.id.in_(part)))
        )
    for i, episode_id in skipped:
        if owners.get(i, episode_id) != episode_id:
            raise StoreError(
                f"step {i} for episode {episode_id} is already stored for episode {owners[i]}: step ids "
                "must be unique (records.new_id() makes them)"
            )
    return [len(mine) for mine in claimed]


def _change(db: Database, conn: Connection, ops: list[UpdateOp | CloseOp]) -> list[bool | None]:
    """Rewards and closes: each op checked and merged in order on the rows as read, then one UPDATE."""
    for op in ops:
        if isinstance(op, CloseOp) and EpisodeStatus(op.status) == EpisodeStatus.RUNNING:
            raise InvalidTransitionError(
                f"close_episode({op.episode_id!r}) needs a closed status (finished, failed or aborted), not "
                "running"
            )
    rows = _rows(db, conn, [op.episode_id for op in ops], Episode.status, Episode.reward, Episode.outcome)
    state = {
        i: {"status": EpisodeStatus(r.status), "reward": r.reward, "outcome": r.outcome}
        for i, r in rows.items()
    }
    touched: dict[str, dict[str, Any]] = {}
    results: list[bool | None] = []
    for op in ops:
        ep = state[op.episode_id]
        if isinstance(op, UpdateOp):
            if ep["status"] == EpisodeStatus.ABORTED:
                raise EpisodeClosedError(
                    f"episode {op.episode_id} is aborted: it takes no rewards or outcome. Aborted episodes are "
                    "never trained on"
                )
            results.append(None)
        else:
            target = EpisodeStatus(op.status)
            if ep["status"] == target:
                results.append(False)  # a retry, or the loser of two closers: changes nothing
                continue
            if target not in EPISODE_TRANSITIONS[ep["status"]]:
                raise EpisodeClosedError(
                    f"episode {op.episode_id} is already {ep['status']}; cannot {_VERB[target]} it"
                )
            ep["status"] = target
            results.append(True)
        if op.reward is not None:
            ep["reward"] = op.reward
        if op.outcome:
            ep["outcome"] = {**(ep["outcome"] or {}), **op.outcome}
        touched[op.episode_id] = ep
    if touched:
        stmt = (
            update(Episode.__table__)
            .where(Episode.__table__.c.id == bindparam("eid"))
            .values(status=bindparam("st"), reward=bindparam("rw"), outcome=bindparam("oc"))
        )
        params = [
            {"eid": i, "st": str(ep["status"]), "rw": ep["reward"], "oc": ep["outcome"]}
            for i, ep in touched.items()
        ]
        conn.execute(stmt, params)
    return results


def _examples(db: Database, conn: Connection, ops: list[ExamplesOp]) -> list[int]:
    """As Examples.add_examples (held-out refused, stored ids skipped, created_at in order), for FINISHED
    episodes only (FINISHED is final, so the check holds for the rest of the transaction)."""
    found: dict[str, Any] = {}
    for part in chunks(list({op.episode_id for op in ops})):
        q = select(Episode.id, Episode.status, Episode.task_id).where(Episode.id.in_(part))
        found.update((r.id, r) for r in conn.execute(q))
    for op in ops:
        row = found.get(op.episode_id)
        if row is None:
            raise NotFoundError(
                f"episode {op.episode_id!r} is not in the store; open it with open_episode first"
            )
        if row.status != str(EpisodeStatus.FINISHED):
            raise EpisodeStateError(
                f"episode {op.episode_id} is {row.status}: only finished episodes take training examples. "
                "Close it with close_episode(..., EpisodeStatus.FINISHED) first"
            )
        leaked = [x.id for x in op.examples if str(x.split) == HELDOUT]
        if leaked:
            raise HeldoutLeakError(
                f"{len(leaked)} example(s) for episode {op.episode_id} come from a held-out task: held-out "
                "tasks are for evaluation only"
            )
    uniques = [list({x.id: x for x in reversed(op.examples)}.values())[::-1] for op in ops]
    now = utcnow()
    values = [
        {
            "id": x.id,
            "kind": str(x.kind),
            "role": str(x.role),
            "payload": x.payload,
            "episode_id": op.episode_id,
            "task_id": x.task_id if x.task_id is not None else found[op.episode_id].task_id,
            "split": str(x.split),
            "created_at": now,
        }
        for op, xs in zip(ops, uniques, strict=True)
        for x in xs
    ]
    for n, row in enumerate(values):  # one clock, in order: the pool hands examples out oldest first
        row["created_at"] = now + timedelta(microseconds=n)
    added: set[str] = set()
    stmt = db.insert(Example.__table__).on_conflict_do_nothing(index_elements=["id"])
    for part in chunks(values, 1000):
        added.update(conn.scalars(stmt.returning(Example.__table__.c.id), part))
    return [len(mine) for mine in _first_claims([[x.id for x in xs] for xs in uniques], added)]
