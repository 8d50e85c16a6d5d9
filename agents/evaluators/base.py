"""The evaluator seam: how a recipe stage measures a candidate, and what its promotion gate compares.

An evaluator evaluates one model version on a stage's task set under the stage's eval settings, records named
metrics on the version (so the gate, `strop models list` and the report read the same numbers) and names the
metric its gate compares. Each evaluator has its own settings model; a stage's `[stages.eval]` table is
validated against the model of the evaluator it names (`target`), or the one its loop names (`LoopSpec`), so a
wrong field is reported against the right model. The evolve cycle knows this protocol only.

Evaluators live in `strop.agents.evaluators` (one module each) and register themselves in `EVALUATORS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from strop.agents.engines.base import Engine
from strop.memory.records import ModelVersionRecord
from strop.sandbox.tasks.base import TaskSet


class FieldCheckError(ValueError):
    """A check across fields, reported at the field it is about ('metric: ...'), not at the model's top."""

    def __init__(self, field: str, message: str, *more: tuple[str, str]) -> None:
        self.items = [(field, message), *more]
        super().__init__("\n".join(f"{f}: {m}" for f, m in self.items))


class EvalSettings(BaseModel):
    """What every evaluator's settings share: the gate (metric, margin, ties) and the evaluator's name."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(
        description="The evaluator (see `strop loops show LOOP` for a loop's default): 'policy' (held-out "
        "pass@k), 'critic' (the critic benchmark), 'self_correct', 'game', 'search' or 'agent' (your agent, run on "
        "held-out tasks)."
    )
    metric: str | None = Field(None, description="Metric the gate compares; default the evaluator's own.")
    margin: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="Held-out gain over the parent required to promote (0.02 = 2 points).",
    )
    promote_on_tie: bool = Field(
        False,
        description="With margin = 0, also promote a candidate that only ties its parent (e.g. games that "
        "are often drawn); a tie is never a gain otherwise.",
    )

    def gate_metric(self) -> str:
        """The metric name the gate compares (without the evaluator's prefix)."""
        return self.metric or self.default_metric()

    def default_metric(self) -> str:
        raise NotImplementedError


@dataclass
class EvalContext:
    """What a stage hands its evaluator: the stage's tasks, loop and settings, the store, and engines.

    `serve(version)` is the engine of the trained role's weights, switched to `version` on first use (a phase
    whose episodes are all stored never loads weights); `serve_role(role, version)` the same for another role
    (version None: that role's starting version); `shares_weights(a, b)` whether two roles are one set of
    weights (`critic = "policy"`).
    """

    settings: Any  # the evaluator's own EvalSettings subclass
    store: Any
    task_set: TaskSet
    label: str  # the task set's label with its options (`task_set_label`): metric keys are under it
    heldout: int  # held-out tasks (or seeds) to evaluate on
    loop: Any  # the stage's LoopSpec
    loop_config: Any  # the loop's config (cycle 0)
    role: str  # the trained role
    serve: Callable[[ModelVersionRecord], Engine]
    serve_role: Callable[[str, ModelVersionRecord | None], Engine]
    shares_weights: Callable[[str, str], bool]
    runner: Callable[[], Any]  # a fresh Runner for the stage's concurrency
    say: Callable[[str], None]  # one plain line for the user (the evolve console)

    def loop_default(self, *names: str, default: Any = None) -> Any:
        """The first of the loop config's fields `names` that it has and sets (evaluation asks as it trains)."""
        for name in names:
            value = getattr(self.loop_config, name, None)
            if value is not None:
                return value
        return default


@runtime_checkable
class Evaluator(Protocol):
    """How one kind of stage is measured. Stateless: everything per stage comes in the `EvalContext`."""

    name: ClassVar[str]
    settings: ClassVar[type[EvalSettings]]
    # the table's column: 'acc' for accuracies, 'score' for other figures (F1, win rates)
    score_label: ClassVar[str]

    def metric_prefix(self, ctx: EvalContext) -> str:
        """The prefix of this stage's metric keys on a model version, e.g. 'arithmetic[digits=2]/heldout'."""
        ...

    def extra_metric(self, ctx: EvalContext) -> tuple[str, str] | None:
        """A figure reported beside the gate, not gated: (column name, metric key), or None."""
        ...

    def gate_text(self, ctx: EvalContext) -> str:
        """What the gate compares, in words, for the table's title."""
        ...

    async def evaluate(self, version: ModelVersionRecord, ctx: EvalContext) -> None:
        """Measure `version` and record the metrics on it (episodes already stored are not redone)."""
        ...


class EvaluatorDefaults:
    """What most evaluators say the same way; subclass it and override where yours differs."""

    def extra_metric(self, ctx: EvalContext) -> tuple[str, str] | None:
        return None

    def gate_text(self, ctx: EvalContext) -> str:
        return f"{ctx.settings.gate_metric()} on {ctx.heldout} {ctx.label} tasks"


def gate_key(evaluator: Evaluator, ctx: EvalContext) -> str:
    """The full metric key the gate compares, e.g. 'arithmetic/heldout/pass@1'."""
    return f"{evaluator.metric_prefix(ctx)}/{ctx.settings.gate_metric()}"


def record_seconds(ctx: EvalContext, version: ModelVersionRecord, key: str, seconds: float, ran: int) -> None:
    """Record an evaluation's wall time once it ran (or if none was ever recorded), for the table's minutes."""
    if ran or key not in version.metrics:
        ctx.store.update_model_metrics(version.id, {key: seconds})


def how(seconds: float, ran: int) -> str:
    return f"{seconds / 60:.1f} min" if ran else "from the store"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"
