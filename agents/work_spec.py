"""The work spec: what a driver stores in a run's config so that a worker on any host can run its episodes.

A driver (`strop run --workers N`, `strop evolve` with `[scale]`) writes a `WorkSpec` under `WORK_KEY` in the
run's config: the loop and its config, the task set, the model version each role plays with (pinned, or
following its lineage's promoted version) and how to build an engine. A worker (worker.py) needs nothing else
but the database URL. Drivers import this module only, not the worker's machinery.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from strop.memory.records import RunRecord

WORK_KEY = "work"  # the key of the WorkSpec in a run's config


class WorkSpecError(ValueError):
    """A run whose work spec is missing or unusable on this worker; the message says what to do."""


class RoleModel(BaseModel):
    """The model a role plays with: a pinned version, or the live version of its lineage."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="Model version id (registry) at enqueue time.")
    lineage: str = Field("", description="Its lineage: what `follow` asks the registry about.")
    follow: bool = Field(
        False, description="Serve the lineage's current (promoted) version, checked at every claim."
    )


class EngineSpec(BaseModel):
    """How a worker builds an engine for a model version."""

    model_config = ConfigDict(extra="forbid")

    backend: str = Field("hf", description="Engine backend: hf, vllm or openai (see agents/engines).")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Backend options, e.g. {max_batch_size = 64}."
    )
    factory: str | None = Field(
        None,
        description="'module:function' taking (version record, **options) and returning an Engine, instead "
        "of a backend: a custom engine, or strop.agents.sim_engine:make_sim_engine for load tests.",
    )


class WorkSpec(BaseModel):
    """Everything a worker on another host needs to run a run's episodes; stored in the run's config."""

    model_config = ConfigDict(extra="forbid")

    loop: str
    config: dict[str, Any] = Field(default_factory=dict, description="The loop's config.")
    task_set: str = Field(description="Task set name (load_task_set).")
    task_options: dict[str, Any] = Field(default_factory=dict)
    label: str | None = Field(None, description="The task set's label (reflection memory's scope).")
    roles: dict[str, RoleModel]
    engine: EngineSpec = Field(default_factory=EngineSpec)
    # Off by default: the queue already makes a re-run episode exactly-once, and a synchronous checkpoint per
    # node cost 5x the episode rate of a 50 ms engine on PostgreSQL here (docs/scale.md). On for long episodes.
    checkpoints: bool = Field(
        False,
        description="LangGraph checkpoints per node, so an episode a dead worker "
        "left half-done resumes from its last node (off: it starts over).",
    )
    max_attempts: int = Field(3, ge=1, description="Claims of one episode before it is marked failed.")


def work_spec_of(run: RunRecord | None, run_id: str = "") -> WorkSpec:
    """The work spec stored in a run's config; a WorkSpecError saying what to do when there is none."""
    if run is None:
        raise WorkSpecError(
            f"run {run_id!r} is not in this store; check --db (the driver's store) and --run-id"
        )
    raw = run.config.get(WORK_KEY)
    if raw is None:
        raise WorkSpecError(
            f"run {run.id} was not started for workers (no '{WORK_KEY}' in its config); start it "
            "with `strop run ... --workers N` or a recipe with [scale] workers"
        )
    return WorkSpec.model_validate(raw)


def import_factory(path: str) -> Callable[..., Any]:
    """The engine factory a spec names ('module:function'), imported on this worker."""
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise WorkSpecError(
            f"engine factory {path!r} cannot be imported on this worker ({e}); install the package "
            "that provides it here, or fix engine.factory ('module:function')"
        ) from e


def load_spec_task_set(spec: WorkSpec) -> Any:
    """The task set the spec names, loaded on this worker with the spec's options."""
    from strop.sandbox.tasks import load_task_set

    try:
        return load_task_set(spec.task_set, **spec.task_options)
    except (ValueError, TypeError) as e:
        raise WorkSpecError(
            f"task set {spec.task_set!r} {spec.task_options} cannot be loaded on this worker: {e}"
        ) from e
