"""Typed records that cross the Store boundary: trajectories as first-class objects.

Loops build these in memory while an episode runs and hand the finished `EpisodeRecord` (with its steps,
critiques and examples) to `Store.write_episode` in one call, which writes it in one transaction. Ids are
chosen by the caller so that a retried write is idempotent.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; every time the store writes is UTC, so say so."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


# A time as the store keeps it: naive values (SQLite's) are UTC.
UTCDateTime = Annotated[datetime, AfterValidator(as_utc)]


class StoredRecord(BaseModel):
    """A record the store reads back from a row: `Record.model_validate(row)` takes the row's columns by
    name (pydantic's `from_attributes`), so no hand-written mapper can drift from the table."""

    model_config = ConfigDict(from_attributes=True)


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
    RUNNING = "running"  # opened by a capture, steps still arriving (captures.py)
    FINISHED = "finished"
    FAILED = "failed"
    ABORTED = "aborted"  # given up: never trained on, never counted as done


# A capture opens an episode RUNNING and closes it once; a closed episode stays closed.
EPISODE_TRANSITIONS: dict[EpisodeStatus, frozenset[EpisodeStatus]] = {
    EpisodeStatus.RUNNING: frozenset({EpisodeStatus.FINISHED, EpisodeStatus.FAILED, EpisodeStatus.ABORTED}),
    EpisodeStatus.FINISHED: frozenset(),
    EpisodeStatus.FAILED: frozenset(),
    EpisodeStatus.ABORTED: frozenset(),
}
# The statuses of work that is done: what a resumed run skips. RUNNING and ABORTED episodes are not.
EPISODE_DONE: frozenset[EpisodeStatus] = frozenset({EpisodeStatus.FINISHED, EpisodeStatus.FAILED})


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
    GAME_TURN = (
        "game_turn"  # one seat's action in a game: an `AdvantagePayload` (seat and game in its metadata)
    )
    ADVANTAGE = "advantage"  # one action with its sampling log-probs and advantage: an `AdvantagePayload`


class Role(StrEnum):
    POLICY = "policy"
    CRITIC = "critic"
    GENERATOR = "generator"


class ModelVersionRecord(StoredRecord):
    id: str = Field(default_factory=new_id)
    name: str = Field(description="Human name, e.g. 'smollm2-135m' or 'smollm2-135m-c3'.")
    lineage: str = Field(
        description="Name of the root model this version descends from, e.g. 'smollm2-135m'."
    )
    path: str = Field(
        description="Model folder (or base model folder when `adapter_path` is set). Stored absolute, or as "
        "`$STROP_RUNS_ROOT/...` under the runs root; read back resolved for this host (memory/paths.py)."
    )
    adapter_path: str | None = Field(
        None, description="LoRA adapter folder kept unmerged, if any; stored and read back like `path`."
    )
    parent_id: str | None = None
    status: ModelStatus = ModelStatus.CANDIDATE
    job_id: str | None = Field(None, description="Training job that produced it.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="e.g. {'heldout_accuracy': 0.37}.")
    created_at: UTCDateTime = Field(default_factory=utcnow)
    promoted_at: UTCDateTime | None = None


class RunRecord(StoredRecord):
    id: str = Field(default_factory=new_id)
    loop: str = Field(description="Loop name, e.g. 'best_of_n'.")
    config: dict[str, Any] = Field(default_factory=dict)
    model_ids: list[str] = Field(default_factory=list, description="Model version ids the run used.")
    status: RunStatus = RunStatus.RUNNING
    host: str = ""
    started_at: UTCDateTime = Field(default_factory=utcnow)
    finished_at: UTCDateTime | None = None


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


class CritiqueRecord(StoredRecord):
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


class ExampleRecord(StoredRecord):
    id: str = Field(default_factory=new_id)
    kind: ExampleKind
    role: Role = Role.POLICY
    payload: dict[str, Any] = Field(
        description="In TRL's format for the kind, e.g. {'prompt': [...], 'completion': [...]}."
    )
    episode_id: str | None = None
    task_id: str | None = None
    split: str = Field("train", description="Split of the task it came from; held-out examples are refused.")


class AdvantagePayload(BaseModel):
    """The payload of an `ADVANTAGE` (or `GAME_TURN`) example: one action of an episode, scored by its loop.

    Multi-turn and multi-agent loops (self-correction, self-play games) compute advantages themselves (SCoRe's
    improvement bonus, SPIRAL's role-conditioned baselines) and emit one example per action; the `pg` trainer
    kind raises or lowers the probability of exactly these tokens. Everything is token ids as the engine
    reported them, never text to re-tokenize: a later turn's `prompt_ids` is the whole context the policy was
    conditioned on (earlier turns, the other seat's or the environment's messages, the chat template), and
    `completion_ids` is that turn's own action only.
    """

    model_config = ConfigDict(extra="forbid")

    prompt_ids: list[int] = Field(
        min_length=1, description="Token ids the policy saw before acting (the full context)."
    )
    completion_ids: list[int] = Field(
        min_length=1, description="The action: the sampled token ids, as generated."
    )
    logprobs: list[float] = Field(
        description="Per completion token, the log-probability it had when it was sampled (same length as "
        "`completion_ids`), of the distribution it was drawn from: after temperature (and top-p truncation, "
        "which a trainer cannot replay: sample with top_p = 1 for exact ratios)."
    )
    advantage: float = Field(
        description="How much better than expected the action was; its sign raises or lowers it."
    )
    temperature: float | None = Field(
        None,
        gt=0,
        description="Sampling temperature the log-probs were taken at; the trainer refuses a mismatch.",
    )
    model_version: str | None = Field(None, description="Model version id that sampled the action.")
    reward: float | None = Field(
        None, description="The return the advantage was computed from (for reports)."
    )
    prompt: str | list[dict[str, Any]] | None = Field(
        None, description="The prompt as text or messages, for people."
    )
    completion: str | None = Field(
        None, description="The action as text, for people; training never reads it."
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Loop-specific labels, e.g. {'turn': 2, 'seat': 1, 'game': 'kuhn_poker'}.",
    )

    @field_validator("prompt_ids", "completion_ids")
    @classmethod
    def _token_ids(cls, ids: list[int]) -> list[int]:
        if any(i < 0 for i in ids):
            raise ValueError("token ids must be non-negative")
        return ids

    @field_validator("advantage")
    @classmethod
    def _finite_advantage(cls, a: float) -> float:
        if not math.isfinite(a):
            raise ValueError(f"advantage must be a finite number, got {a}")
        return a

    @model_validator(mode="after")
    def _aligned(self) -> AdvantagePayload:
        if len(self.logprobs) != len(self.completion_ids):
            raise ValueError(
                f"{len(self.logprobs)} logprobs for {len(self.completion_ids)} completion tokens: there must be one "
                "sampling log-prob per completion token"
            )
        bad = [i for i, lp in enumerate(self.logprobs) if not math.isfinite(lp) or lp > 1e-4]
        if bad:
            raise ValueError(
                f"logprobs must be finite and <= 0 (log-probabilities); position {bad[0]} is {self.logprobs[bad[0]]}"
            )
        return self

    def example(
        self,
        *,
        kind: ExampleKind = ExampleKind.ADVANTAGE,
        role: Role = Role.POLICY,
        task_id: str | None = None,
        split: str = "train",
    ) -> ExampleRecord:
        """This payload as an example record for `EpisodeRecord.examples`.

        Unset optional fields are left out, empty `metadata` too (Parquet cannot store a struct without fields).
        """
        payload = self.model_dump(mode="json", exclude_none=True)
        if not payload.get("metadata"):
            payload.pop("metadata", None)
        return ExampleRecord(kind=kind, role=role, payload=payload, task_id=task_id, split=split)


class EpisodeRecord(StoredRecord):
    """An episode with all it produced. A loop's episode is written finished, in one transaction; a captured
    one (`store.captures`) is opened running and takes its steps one call at a time until it is closed."""

    id: str = Field(default_factory=new_id)
    run_id: str
    task_id: str
    loop: str
    status: EpisodeStatus = EpisodeStatus.FINISHED
    reward: float | None = None
    outcome: dict[str, Any] = Field(
        default_factory=dict, description="Loop-specific summary, e.g. {'correct': 3, 'n': 8}."
    )
    steps: list[StepRecord] = Field(default_factory=list)
    critiques: list[CritiqueRecord] = Field(default_factory=list)
    examples: list[ExampleRecord] = Field(default_factory=list)
    created_at: UTCDateTime = Field(default_factory=utcnow)


class BaselineUpdate(BaseModel):
    """One return folded into a running baseline: b <- decay * b + (1 - decay) * reward (`Store.update_baselines`).

    Self-play's role-conditioned advantage estimation (SPIRAL) keeps one baseline per (game, role) as an
    exponential moving average of that role's returns. The baseline lives in the store, not in a process, so a
    resumed run or many workers continue the same averages. `id` makes the update idempotent: an update whose
    id was applied already changes nothing and returns what the first application returned.
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Idempotency key, e.g. derived from (episode, game, seat).")
    namespace: str = Field(
        description="Whose baselines: a run, a recipe, an experiment; unrelated runs keep theirs apart."
    )
    game: str = Field(
        description="The game (with its options where they change the returns), e.g. 'tictactoe'."
    )
    role: str = Field(description="The role within the game, e.g. the seat '0' or '1'.")
    reward: float = Field(description="The return R of this role in one game.")
    decay: float = Field(
        0.95, ge=0.0, le=1.0, description="EMA decay (alpha): weight kept on the old baseline."
    )

    @field_validator("reward")
    @classmethod
    def _finite_reward(cls, r: float) -> float:
        if not math.isfinite(r):
            raise ValueError(f"reward must be a finite number, got {r}")
        return r


class BaselineRecord(StoredRecord):
    """A baseline as stored: its value (0 before the first return) and how many returns it has seen."""

    namespace: str
    game: str
    role: str
    value: float = 0.0
    count: int = 0
    updated_at: UTCDateTime | None = None


class BaselineUpdateResult(BaseModel):
    """What an update did: the baseline before it (the one an advantage subtracts) and after it."""

    id: str
    namespace: str
    game: str
    role: str
    reward: float
    before: float = Field(description="The baseline before this return was folded in.")
    after: float = Field(description="The baseline after it.")
    count: int = Field(description="Returns the baseline has seen, this one included.")
    replayed: bool = Field(False, description="True when the id was applied before and nothing changed now.")


class TrainingJobRecord(StoredRecord):
    id: str = Field(default_factory=new_id)
    algorithm: str = Field(description="sft, dpo, grpo, reward...")
    role: Role = Role.POLICY
    model_in: str = Field(description="Model version id trained from.")
    model_out: str | None = None
    status: JobStatus = JobStatus.RUNNING
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    created_at: UTCDateTime = Field(default_factory=utcnow)
    finished_at: UTCDateTime | None = None
