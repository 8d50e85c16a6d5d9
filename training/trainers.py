"""Trainer kinds: how a recipe stage (or `strop train KIND`) turns claimed examples into a new model version.

A trainer kind is a thin layer over one TRL trainer: a settings model (every field with help text, refused
at recipe load when TRL would refuse it later), the example kinds it consumes, how claimed examples become
the TRL dataset, and the training call itself. `training.jobs.train_candidate` does the bookkeeping that
every kind shares (start the job, claim exactly once, register the candidate, finish or fail the job), so a
kind's module holds only what is specific to its algorithm.

strop's kinds live in `strop.training.<name>` modules and register themselves on import; the registry (a
`strop.registry.Registry`, like every other) loads them on first look-up so `import strop.training.trainers`
stays cheap. Other packages add kinds through the `strop.trainers` entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from strop.memory.records import ExampleKind, ExampleRecord, ModelVersionRecord, Role
from strop.registry import Registry, UnknownNameError
from strop.training.tracking import TrainHooks

# Modules that register strop's own trainer kinds, imported on first look-up.
_BUILTIN_MODULES: tuple[str, ...] = (
    "strop.training.sft",
    "strop.training.grpo",
    "strop.training.dpo",
    "strop.training.pg",
)


class UnknownTrainerError(UnknownNameError):
    """A trainer kind nobody registered; the message lists the known ones."""


class TrainOutcome(BaseModel):
    """What a finished training run produced."""

    path: str = Field(description="Model folder (the base folder when `adapter_path` is set).")
    adapter_path: str | None = None
    train_loss: float
    steps: int
    examples: int
    seconds: float
    metrics: dict[str, Any] = Field(
        default_factory=dict, description="Kind-specific figures (e.g. DPO reward margins)."
    )
    log_history: list[dict[str, float]] = Field(
        default_factory=list,
        description="TRL's logged figures per logging step (loss, reward...), numbers only.",
    )


@dataclass
class TrainRequest:
    """Everything a trainer kind gets for one job."""

    parent: ModelVersionRecord
    settings: Any  # an instance of the kind's settings model
    output_dir: Path
    dataset: Any = None  # the TRL dataset built from `examples` (None for kinds that make their own data)
    examples: list[ExampleRecord] = field(default_factory=list)
    store: Any = None
    job_id: str = ""
    role: Role = Role.POLICY
    # Kind-specific extras a caller can hand over (a task set and engine for on-line kinds, ...).
    context: dict[str, Any] = field(default_factory=dict)
    # The progress bar, strop's metrics for the trackers, extra TRL callbacks (training.tracking.TrainHooks).
    hooks: TrainHooks | None = None


@dataclass(frozen=True)
class TrainerKind:
    """A trainer kind as the registry knows it."""

    name: str
    settings: type[BaseModel]
    example_kinds: tuple[ExampleKind, ...]
    train: Callable[[TrainRequest], TrainOutcome]
    build_dataset: Callable[[list[ExampleRecord], Any], Any] | None = None
    description: str = ""
    # An on-line kind (GRPO) makes its own data: a stage skips its collection phase and hands the trainer, in
    # `TrainRequest.context`, what collection would have used: "loop" (LoopSpec), "loop_config", "task_set",
    # "tasks" (this cycle's training tasks), "run_id" (the run its rollouts are written under) and "runner".
    online: bool = False

    def parse_settings(self, values: dict[str, Any] | BaseModel | None) -> BaseModel:
        if isinstance(values, self.settings):
            return values
        if isinstance(values, BaseModel):
            values = values.model_dump()
        return self.settings.model_validate(values or {})


TRAINERS: Registry[TrainerKind] = Registry(
    "trainer kind",
    TrainerKind,
    name_of=lambda kind: kind.name,
    builtin_modules=_BUILTIN_MODULES,
    entry_point_group="strop.trainers",
    list_command="strop train --help",
    error=UnknownTrainerError,
)


def register_trainer(kind: TrainerKind, *, replace: bool = False) -> TrainerKind:
    """Add a trainer kind; a taken name is refused (naming both origins) unless `replace`."""
    return TRAINERS.register(kind.name, kind, replace=replace, stacklevel=2)


def get_trainer(name: str) -> TrainerKind:
    return TRAINERS.get(name)


def list_trainers() -> list[TrainerKind]:
    return TRAINERS.list()
