"""Critic kinds by name: who can judge a solution, and how to build one from an engine or a task set.

The kinds are the ones `strop.critics` ships: the verifier (ground truth), the step-wise LLM critic, SCRIT's
contrastive critic (reads a reference solution), the pairwise judge (asks in both orders) and the PRM step
scorer (P(correct) per step from Yes/No log-probs). A loop, an evaluator or the CLI builds one with
`make_critic(name, engine=..., task_set=..., **options)`, where the options are the critic class's own keyword
arguments (`sampling=`, `shots=`, `threshold=`...), so a config field can name its critic instead of an
if-chain over classes. The registry is a `strop.registry.Registry` (the one type every registry shares);
other packages add kinds through the `strop.critics` entry-point group, or call `register_critic`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from strop.critics.llm import ContrastiveCritic, StepwiseCritic
from strop.critics.pairwise import PairwiseJudge
from strop.critics.scorer import StepScorer
from strop.critics.verifier import VerifierCritic
from strop.registry import Registry, UnknownNameError, underscores
from strop.sandbox.tasks.base import TaskSet


class UnknownCriticError(UnknownNameError):
    """A critic kind nobody registered; the message lists the known ones."""


@dataclass(frozen=True)
class CriticKind:
    """A critic kind as the registry knows it.

    `make(engine=..., task_set=..., **options)` builds one; `needs` says which of `engine` (a model that
    judges) and `task_set` (whose verifier judges) it must be given, so a missing one is a clear error here
    rather than an AttributeError at the first critique.
    """

    name: str
    make: Callable[..., Any]
    needs: tuple[str, ...] = ("engine",)
    description: str = ""


CRITICS: Registry[CriticKind] = Registry(
    "critic kind",
    CriticKind,
    name_of=lambda kind: kind.name,
    normalize=underscores,
    entry_point_group="strop.critics",
    error=UnknownCriticError,
    sort=False,  # registration order: ground truth first, then the model critics
)


def register_critic(kind: CriticKind, *, replace: bool = False) -> CriticKind:
    """Add a critic kind; a taken name is refused (naming both origins) unless `replace`."""
    return CRITICS.register(kind.name, kind, replace=replace, stacklevel=2)


def get_critic(name: str) -> CriticKind:
    return CRITICS.get(name)


def list_critics() -> list[CriticKind]:
    return CRITICS.list()


def make_critic(name: str, *, engine: Any = None, task_set: TaskSet | None = None, **options: Any) -> Any:
    """A critic of kind `name`: e.g. `make_critic("stepwise", engine=critic_engine, shots=1)`."""
    kind = CRITICS.get(name)
    given = {"engine": engine, "task_set": task_set}
    if missing := [need for need in kind.needs if given.get(need) is None]:
        raise ValueError(f"the {kind.name} critic needs {' and '.join(missing)}=...")
    return kind.make(engine=engine, task_set=task_set, **options)


def _verifier(*, engine: Any = None, task_set: TaskSet, **options: Any) -> VerifierCritic:
    return VerifierCritic(task_set, **options)


def _stepwise(*, engine: Any, task_set: TaskSet | None = None, **options: Any) -> StepwiseCritic:
    return StepwiseCritic(engine, **options)


def _contrastive(*, engine: Any, task_set: TaskSet | None = None, **options: Any) -> ContrastiveCritic:
    return ContrastiveCritic(engine, **options)


def _pairwise(*, engine: Any, task_set: TaskSet | None = None, **options: Any) -> PairwiseJudge:
    return PairwiseJudge(engine, **options)


def _prm(*, engine: Any, task_set: TaskSet | None = None, **options: Any) -> StepScorer:
    return StepScorer(engine, **options)


for _kind in (
    CriticKind(
        "verifier",
        _verifier,
        needs=("task_set",),
        description="Ground truth: the task set's verifier behind the Critic protocol (offload=True for code).",
    ),
    CriticKind(
        "stepwise",
        _stepwise,
        description="An LLM reads the solution step by step and names the first wrong step (no reference).",
    ),
    CriticKind(
        "contrastive",
        _contrastive,
        description="SCRIT's critic: an LLM reads the reference solution first, then judges step by step.",
    ),
    CriticKind(
        "pairwise",
        _pairwise,
        description="An LLM judge of which of two answers is better, asked in both orders (compare(), "
        "not critique()).",
    ),
    CriticKind(
        "prm",
        _prm,
        description="A generative process reward model: P(step correct) from the Yes/No log-prob; the first "
        "step under the threshold is wrong.",
    ),
):
    register_critic(_kind)
