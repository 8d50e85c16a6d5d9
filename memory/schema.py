"""SQLAlchemy 2 typed models: the tables of the store.

Token ids and log-probs are the bulk of a trajectory; they are stored as little-endian int32 / float32 byte
arrays rather than JSON text, which is about 4x smaller and needs no float parsing on the way back.
Changing anything here needs a new Alembic migration in memory/migrations/versions.
"""

from __future__ import annotations

import array
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ID = String(64)
JSONType = JSON().with_variant(JSONB(), "postgresql")
# Stable constraint names, so migrations can refer to them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


# array.array rather than numpy: about 25% faster on the 100-element lists of a step, and this runs for
# every step written. Stored little-endian whatever the host is.
_SWAP = sys.byteorder != "little"


def _pack(code: str, values: Sequence[int] | Sequence[float] | None) -> bytes | None:
    if values is None:
        return None
    arr = array.array(code, values)
    if _SWAP:
        arr.byteswap()
    return arr.tobytes()


def _unpack(code: str, blob: bytes | None) -> list[Any] | None:
    if blob is None:
        return None
    arr = array.array(code, blob)
    if _SWAP:
        arr.byteswap()
    return arr.tolist()


def pack_ids(values: Sequence[int] | None) -> bytes | None:
    """int32 little-endian; token ids of every tokenizer strop meets fit."""
    return _pack("i", values)


def pack_floats(values: Sequence[float] | None) -> bytes | None:
    """float32 little-endian: engines compute log-probs in float32 at best, so nothing is lost."""
    return _pack("f", values)


def unpack_ids(blob: bytes | None) -> list[int] | None:
    return _unpack("i", blob)


def unpack_floats(blob: bytes | None) -> list[float] | None:
    return _unpack("f", blob)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    lineage: Mapped[str] = mapped_column(String(255), index=True)
    path: Mapped[str] = mapped_column(Text)
    adapter_path: Mapped[str | None] = mapped_column(Text)
    parent_id: Mapped[str | None] = mapped_column(ID, ForeignKey("model_versions.id"))
    status: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str | None] = mapped_column(ID)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    loop: Mapped[str] = mapped_column(String(64), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    model_ids: Mapped[list[str]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Episode(Base):
    __tablename__ = "episodes"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    run_id: Mapped[str] = mapped_column(ID, ForeignKey("runs.id"), index=True)
    task_id: Mapped[str] = mapped_column(String(255), index=True)
    loop: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16))
    reward: Mapped[float | None] = mapped_column(Float)
    outcome: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Step(Base):
    """A turn or a search-tree node. `parent_id` has no foreign key on purpose: tree nodes arrive in
    whatever order the search produced them, and the episode transaction already keeps them together."""

    __tablename__ = "steps"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    episode_id: Mapped[str] = mapped_column(ID, ForeignKey("episodes.id", ondelete="CASCADE"), index=True)
    parent_id: Mapped[str | None] = mapped_column(ID)
    step_index: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(32))
    model_version: Mapped[str | None] = mapped_column(ID)
    text: Mapped[str] = mapped_column(Text)
    prompt_token_ids: Mapped[bytes | None] = mapped_column(LargeBinary)
    token_ids: Mapped[bytes | None] = mapped_column(LargeBinary)
    logprobs: Mapped[bytes | None] = mapped_column(LargeBinary)
    reward: Mapped[float | None] = mapped_column(Float)
    value: Mapped[float | None] = mapped_column(Float)
    visits: Mapped[int | None] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType)


class Critique(Base):
    __tablename__ = "critiques"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    episode_id: Mapped[str] = mapped_column(ID, ForeignKey("episodes.id", ondelete="CASCADE"), index=True)
    step_id: Mapped[str | None] = mapped_column(ID)
    critic_version: Mapped[str] = mapped_column(String(255))
    verdict: Mapped[str] = mapped_column(String(32), index=True)
    first_wrong_step: Mapped[int | None] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    parsed: Mapped[bool] = mapped_column(Boolean)
    validated: Mapped[bool | None] = mapped_column(Boolean)
    corrected_solution: Mapped[str | None] = mapped_column(Text)


class Example(Base):
    __tablename__ = "examples"
    # Claims scan by role and kind, oldest first.
    __table_args__ = (Index("ix_examples_role_kind", "role", "kind", "created_at"),)
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    episode_id: Mapped[str | None] = mapped_column(
        ID, ForeignKey("episodes.id", ondelete="CASCADE"), index=True
    )
    task_id: Mapped[str | None] = mapped_column(String(255))
    split: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TrainingJob(Base):
    __tablename__ = "training_jobs"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(16))
    model_in: Mapped[str] = mapped_column(ID)
    model_out: Mapped[str | None] = mapped_column(ID)
    status: Mapped[str] = mapped_column(String(16), index=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Consumption(Base):
    """Which job holds or consumed which example. The primary key (consumer, example_id) is what makes
    consumption exactly-once: a second claim of the same example by the same consumer cannot be inserted,
    whatever the isolation level or the number of workers."""

    __tablename__ = "consumption"
    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    example_id: Mapped[str] = mapped_column(
        ID, ForeignKey("examples.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    job_id: Mapped[str] = mapped_column(ID, ForeignKey("training_jobs.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)  # claimed | consumed
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    consumed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Embedding(Base):
    """A sentence embedding of a critique, a failed attempt or any other text the store owns, for
    reflection memory (nearest past failures) and near-duplicate filtering. Vectors are float32 bytes,
    L2-normalised, so a dot product is the cosine similarity."""

    __tablename__ = "embeddings"
    __table_args__ = (Index("ix_embeddings_kind_model", "owner_kind", "model"),)
    owner_kind: Mapped[str] = mapped_column(
        String(16), primary_key=True
    )  # critique | step | episode | example
    owner_id: Mapped[str] = mapped_column(ID, primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Reflection(Base):
    """A past failure kept for reflection memory: a train-split task's problem, a wrong answer to it and the
    critique of that answer, with the embedding of the problem text. One row per (scope, model, episode).

    `scope` is the task-set label the failure belongs to (retrieval never crosses it); `split` is always
    'train' (the store refuses anything else, and every search filters on it again); `seq` only grows, so a
    cached matrix of vectors refreshes by reading the rows above the last one it holds."""

    __tablename__ = "reflections"
    __table_args__ = (
        UniqueConstraint("scope", "model", "episode_id", name="uq_reflections_scope_model_episode"),
        # Covers the freshness check (count and max of seq per scope) without touching the wide rows.
        Index("ix_reflections_scope", "scope", "model", "split", "seq"),
        {"sqlite_autoincrement": True},  # a deleted seq is never handed out again: caches stay consistent
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(255))
    model: Mapped[str] = mapped_column(String(128))
    episode_id: Mapped[str] = mapped_column(ID, ForeignKey("episodes.id", ondelete="CASCADE"), index=True)
    task_id: Mapped[str] = mapped_column(String(255))
    split: Mapped[str] = mapped_column(String(16))
    problem: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    critique: Mapped[str] = mapped_column(Text)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Baseline(Base):
    """A running baseline keyed (namespace, game, role): SPIRAL's role-conditioned EMA of returns."""

    __tablename__ = "baselines"
    namespace: Mapped[str] = mapped_column(String(255), primary_key=True)
    game: Mapped[str] = mapped_column(String(128), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[float] = mapped_column(Float)
    count: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class BaselineUpdateLog(Base):
    """Every update applied to a baseline, by its id: what makes a retried update (a resumed episode) a no-op
    that returns the first result, and the history of a baseline for inspection."""

    __tablename__ = "baseline_updates"
    __table_args__ = (Index("ix_baseline_updates_key", "namespace", "game", "role"),)
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    namespace: Mapped[str] = mapped_column(String(255))
    game: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(32))
    reward: Mapped[float] = mapped_column(Float)
    decay: Mapped[float] = mapped_column(Float)
    value_before: Mapped[float] = mapped_column(Float)
    value_after: Mapped[float] = mapped_column(Float)
    count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Lease(Base):
    """A named lease with a heartbeat: who may run one cycle of a recipe now (see leases.py). A row whose
    `expires_at` has passed is free for the taking; its holder stopped renewing it (killed, hung, cut off)."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))  # host:pid:uuid
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ScheduleFiring(Base):
    """One due firing of a schedule, keyed by (schedule, scheduled time): the key is what makes a firing that
    two schedulers both see run once, and the row is what makes a failed or skipped firing visible."""

    __tablename__ = "schedule_firings"
    __table_args__ = (Index("ix_schedule_firings_started", "schedule_id", "started_at"),)
    schedule_id: Mapped[str] = mapped_column(String(191), primary_key=True)
    scheduled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    recipe: Mapped[str] = mapped_column(Text)
    holder: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))  # running | ok | failed | skipped | missed
    cycle: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SchedulerJob(Base):
    """APScheduler 3's SQLAlchemyJobStore table, column for column: the schedules themselves (trigger, next
    run time, arguments, pickled by APScheduler). Declared here so a migration creates it with the rest of the
    store, instead of two schedulers racing to CREATE it on first start."""

    __tablename__ = "apscheduler_jobs"
    id: Mapped[str] = mapped_column(String(191), primary_key=True)
    next_run_time: Mapped[float | None] = mapped_column(Float(25), index=True)
    job_state: Mapped[bytes] = mapped_column(LargeBinary)


class WorkItem(Base):
    """One episode of a run still to do, being done or done, for rollout workers on many hosts (queue.py).

    `owner` and `expires_at` are the item's lease: a worker that stops renewing it (killed, hung, cut off)
    loses it when `expires_at` passes and another worker claims it again. `attempts` counts claims, so an
    episode that kills every worker that tries it ends as `failed` instead of circling forever."""

    __tablename__ = "work_items"
    __table_args__ = (
        Index("ix_work_items_claim", "run_id", "state", "position"),  # the claim's scan, in enqueue order
        Index("ix_work_items_owner", "owner", "state"),  # the heartbeat renews all of one owner's items
    )
    run_id: Mapped[str] = mapped_column(ID, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    episode_id: Mapped[str] = mapped_column(ID, primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[str] = mapped_column(String(255))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)  # the task, as plain data
    state: Mapped[str] = mapped_column(String(16))  # todo | claimed | done | failed
    owner: Mapped[str | None] = mapped_column(String(255))  # host:pid:uuid of the worker holding it
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
