"""Evaluators: how a recipe stage measures a candidate (see `base.py` for the protocol).

strop's own: 'policy' (answers: held-out pass@k), 'critic' (the critic benchmark, written or PRM),
'self_correct', 'game' and 'search', one module each, registering themselves on import. A loop names its
default in its `LoopSpec`; a recipe stage may name another with `[stages.eval] target = "..."`. Other packages
add evaluators with `register_evaluator` or the `strop.evaluators` entry-point group.
"""

from __future__ import annotations

from strop.agents.evaluators.base import (
    EvalContext,
    EvalSettings,
    Evaluator,
    EvaluatorDefaults,
    FieldCheckError,
    gate_key,
)
from strop.registry import Registry, UnknownNameError

__all__ = [
    "EVALUATORS",
    "EvalContext",
    "EvalSettings",
    "Evaluator",
    "EvaluatorDefaults",
    "FieldCheckError",
    "UnknownEvaluatorError",
    "gate_key",
    "get_evaluator",
    "list_evaluators",
    "register_evaluator",
]


class UnknownEvaluatorError(UnknownNameError):
    """An evaluator nobody registered; the message lists the known ones."""


EVALUATORS: Registry[Evaluator] = Registry(
    "evaluator",
    Evaluator,
    name_of=lambda evaluator: evaluator.name,
    builtin_modules=(
        "strop.agents.evaluators.answers",
        "strop.agents.evaluators.critic",
        "strop.agents.evaluators.self_correct",
        "strop.agents.evaluators.games",
        "strop.agents.evaluators.search",
        "strop.agents.evaluators.agent",
    ),
    entry_point_group="strop.evaluators",
    list_command="strop loops list",
    error=UnknownEvaluatorError,
)


def register_evaluator(evaluator: Evaluator, *, replace: bool = False) -> Evaluator:
    """Add an evaluator (an instance); a taken name is refused (naming both origins) unless `replace`."""
    return EVALUATORS.register(evaluator.name, evaluator, replace=replace, stacklevel=2)


def get_evaluator(name: str) -> Evaluator:
    return EVALUATORS.get(name)


def list_evaluators() -> list[Evaluator]:
    return EVALUATORS.list()
