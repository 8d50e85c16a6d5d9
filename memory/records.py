"""Typed records that cross the Store boundary: trajectories as first-class objects.

Loops build these in memory while an episode runs and hand the finished `EpisodeRecord` (with its steps,
critiques and examples) to `Store.write_episode` in one call, which writes it in one transaction. Ids are
chosen by the caller so that a retried write is idempotent.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class ModelStatus(StrEnum):
    CANDIDATE = "candidate"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    BASE = "base"  # an imported or built model that no job produced


# Which status changes the registry allows; anything else is a bug or a race and is refused.
MODEL_TRANSITIONS: dict[ModelStatus, frozenset[ModelStatus]] = {
    ModelStatus.BASE: frozenset({ModelStatus.PROMOTED}),
    ModelStatus.CANDIDATE: frozenset({ModelStatus.PROMOTED, ModelStatus.REJECTED}),
    ModelStatus.PROMOTED: frozenset({ModelStatus.REJECTED}),  # rollback
    ModelStatus.REJECTED: frozenset({ModelStatus.PROMOTED}),  # manual override
}


class RunStatus(StrEnum):
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


class EpisodeStatus(StrEnum):
    FINISHED = "finished"
    FAILED = "failed"


class JobStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
}


class ExampleKind(StrEnum):
    SFT = "sft"  # conversational prompt/completion
    PAIR = "pair"  # prompt/chosen/rejected
    REWARD = "reward"  # prompt/completion/reward
    STEP_VALUE = "step_value"  # partial solution/value target
    GAME_TURN = "game_turn"  # prompt/completion/advantage for one seat


class Role(StrEnum):
    POLICY = "policy"
    CRITIC = "critic"
    GENERATOR = "generator"


class ModelVersionRecord(BaseModel):
    id: str = Field(default_factory=new_id)
    name: str = Field(description="Human name, e.g. 'smollm2-135m' or 'smollm2-135m-c3'.")
    lineage: str = Field(description="Name of the root model this version descends from, e.g. 'smollm2-135m'.")
    path: str = Field(description="Model folder (or base model folder when `adapter_path` is set).")
    adapter_path: str | None = Field(None, description="LoRA adapter folder kept unmerged, if any.")
    parent_id: str | None = None
    status: ModelStatus = ModelStatus.CANDIDATE
    job_id: str | None = Field(None, description="Training job that produced it.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="e.g. {'heldout_accuracy': 0.37}.")
    created_at: datetime = Field(default_factory=utcnow)
    promoted_at: datetime | None = None


class RunRecord(BaseModel):
    id: str = Field(default_factory=new_id)
    loop: str = Field(description="Loop name, e.g. 'best_of_n'.")
    config: dict[str, Any] = Field(default_factory=dict)
    model_ids: list[str] = Field(default_factory=list, description="Model version ids the run used.")
    status: RunStatus = RunStatus.RUNNING
    host: str = ""
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class StepRecord(BaseModel):
    """A turn of a dialogue or a node of a search tree (`parent_id` links tree nodes)."""

    id: str = Field(default_factory=new_id)
    parent_id: str | None = None
    index: int = 0
    role: str = Field("assistant", description="Who produced it: assistant, user, critic, environment...")
    model_version: str | None = None
    text: str = ""
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    reward: float | None = None
    value: float | None = None
    visits: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class CritiqueRecord(BaseModel):
    id: str = Field(default_factory=new_id)
    episode_id: str | None = Field(None, description="Episode it belongs to; filled in by the store.")
    step_id: str | None = Field(None, description="Target step; None when it judges the whole episode.")
    critic_version: str = Field(description="Model version of the critic, or 'verifier'.")
    verdict: str = Field(description="e.g. 'correct', 'incorrect', 'unparsed'.")
    first_wrong_step: int | None = None
    text: str = ""
    parsed: bool = True
    validated: bool | None = Field(None, description="Self-validation result (SCRIT); None when not checked.")
    corrected_solution: str | None = None


class ExampleRecord(BaseModel):
    id: str = Field(default_factory=new_id)
    kind: ExampleKind
    role: Role = Role.POLICY
    payload: dict[str, Any] = Field(description="In TRL's format for the kind, e.g. {'prompt': [...], 'completion': [...]}.")
    episode_id: str | None = None
    task_id: str | None = None
    split: str = Field("train", description="Split of the task it came from; held-out examples are refused.")


class EpisodeRecord(BaseModel):
    """A finished episode with all it produced; written in one transaction."""

    id: str = Field(default_factory=new_id)
    run_id: str
    task_id: str
    loop: str
    status: EpisodeStatus = EpisodeStatus.FINISHED
    reward: float | None = None
    outcome: dict[str, Any] = Field(default_factory=dict, description="Loop-specific summary, e.g. {'correct': 3, 'n': 8}.")
    steps: list[StepRecord] = Field(default_factory=list)
    critiques: list[CritiqueRecord] = Field(default_factory=list)
    examples: list[ExampleRecord] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)


class TrainingJobRecord(BaseModel):
    id: str = Field(default_factory=new_id)
    algorithm: str = Field(description="sft, dpo, grpo, reward...")
    role: Role = Role.POLICY
    model_in: str = Field(description="Model version id trained from.")
    model_out: str | None = None
    status: JobStatus = JobStatus.RUNNING
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
