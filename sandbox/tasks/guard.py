"""Split assignment and the guard that keeps held-out tasks out of training data.

Splits are a hash of a task's stable key (its canonical text or id), never of a seed or of file order, so a
task is held out in every run that uses the same fraction: re-seeding or re-ordering a file cannot leak it.
"""

from __future__ import annotations

import hashlib

from strop.sandbox.tasks.base import Split, Task


class HeldoutTaskError(ValueError):
    """A held-out task was about to become training data."""


def split_of(key: str, heldout_fraction: float) -> Split:
    """The split of a task from a hash of its key: stable across seeds, machines and Python versions."""
    h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return Split.HELDOUT if h < heldout_fraction else Split.TRAIN


def is_heldout(task: Task) -> bool:
    return task.split == Split.HELDOUT or bool(task.metadata.get("heldout"))


def assert_trainable(task: Task) -> Task:
    """Return the task if it may feed training; raise HeldoutTaskError for a held-out one.

    Loops call this before turning an episode into training examples; the store refuses held-out
    examples too, so a leak needs two independent mistakes.
    """
    if is_heldout(task):
        raise HeldoutTaskError(
            f"task {task.id!r} of set {task.set_name!r} is held out: it may be used for evaluation only, "
            "never as a training example. Draw training tasks with `tasks(Split.TRAIN)`."
        )
    return task
