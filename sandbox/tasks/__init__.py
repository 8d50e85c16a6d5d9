"""Task sets with verifiable answers: `load_task_set(name, **options)` builds one by name."""

from strop.sandbox.tasks.arithmetic import ArithmeticTaskSet
from strop.sandbox.tasks.base import Split, Task, TaskSet, TaskSetError, Verdict
from strop.sandbox.tasks.extract import extract_answer, numbers_equal
from strop.sandbox.tasks.guard import HeldoutTaskError, assert_trainable, is_heldout, split_of
from strop.sandbox.tasks.registry import (
    TaskSetInfo,
    UnknownTaskSetError,
    get_task_set,
    list_task_sets,
    load_task_set,
    register_task_set,
)

__all__ = [
    "ArithmeticTaskSet",
    "HeldoutTaskError",
    "Split",
    "Task",
    "TaskSet",
    "TaskSetError",
    "TaskSetInfo",
    "UnknownTaskSetError",
    "Verdict",
    "assert_trainable",
    "extract_answer",
    "get_task_set",
    "is_heldout",
    "list_task_sets",
    "load_task_set",
    "numbers_equal",
    "register_task_set",
    "split_of",
]
