"""Reflection memory for loops: index a task set's past failures, recall the nearest ones for a task, and
render them into the actor's prompt (Reflexion-style: the model learns from its mistakes in context, with no
weight update).

The store side (`memory.reflections`) keeps the failures and guards retrieval; this module decides what a
failure is for a task set. A failure is indexed only if its task is among the task set's own *train* tasks,
found by id in `task_set.tasks(TRAIN, n)`: the split comes from the task set, never from a label stored with
the episode, so an episode of a held-out task (an evaluation run) cannot be indexed however it was recorded.
Failures are scoped by the task-set label (`task_set_label`: the name with its options), so word problems
and bare sums of the same set never mix.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from strop.sandbox.tasks.base import Split, Task, TaskSet

if TYPE_CHECKING:
    from strop.memory.embeddings import Embedder
    from strop.memory.reflections import ReflectionMemory

MEMORY_HEADER = "Past mistakes on similar problems:"
MAX_CHARS = 240  # of a remembered answer or critique: the point is the mistake, not the whole transcript


def render_memory(recalled: Sequence[Mapping[str, Any]], max_chars: int = MAX_CHARS) -> str:
    """The block put before a task's prompt: each remembered problem, the wrong answer and the critique."""
    if not recalled:
        return ""
    lines = [MEMORY_HEADER]
    for i, r in enumerate(recalled, 1):
        lines.append(f"{i}. Problem: {_clip(r['problem'], max_chars)}")
        lines.append(f"   Wrong answer: {_clip(r['answer'], max_chars)}")
        if str(r.get("critique", "")).strip():
            lines.append(f"   Critique: {_clip(r['critique'], max_chars)}")
    return "\n".join(lines)


def _clip(text: str, limit: int) -> str:
    one = " ".join(str(text).split())
    return one if len(one) <= limit else one[: limit - 3].rstrip() + "..."


def run_label(config: Mapping[str, Any]) -> str | None:
    """The task-set label a run's config names: evaluations and recipe stages record the label itself,
    `strop run` the set's name and its options."""
    from strop.agents.evaluation import task_set_label

    name = config.get("task_set")
    if not isinstance(name, str):
        return None
    options = config.get("task_options")
    return task_set_label(name, options) if isinstance(options, dict) and options else name


def runs_of(store: Any, label: str) -> list[str]:
    """Ids of the runs on the task set `label`."""
    return [r.id for r in store.list_runs() if run_label(r.config) == label]


_memories: weakref.WeakKeyDictionary[Any, ReflectionMemory] = weakref.WeakKeyDictionary()


def memory_for(store: Any, embedder: Embedder | None = None) -> ReflectionMemory:
    """The process's ReflectionMemory of a store (one cache per store), or a new one over `embedder`."""
    from strop.memory.reflections import ReflectionMemory

    if embedder is not None:
        return ReflectionMemory(store, embedder)
    mem = _memories.get(store)
    if mem is None:
        mem = _memories[store] = ReflectionMemory(store)
    return mem


@dataclass(frozen=True)
class IndexReport:
    """What `index_failures` did."""

    label: str
    indexed: int  # failures remembered now
    skipped: int  # failures whose task is not among the set's train tasks (held-out, or beyond n_tasks)
    total: int  # failures remembered under the label, this call's included


def index_failures(
    store: Any,
    task_set: TaskSet,
    label: str | None = None,
    *,
    n_tasks: int | None = None,
    memory: ReflectionMemory | None = None,
) -> IndexReport:
    """Remember every failure of the runs on this task set that is not remembered yet (idempotent).

    `n_tasks`: how many of the set's first train tasks can be looked up (default: as many as the runs have
    distinct tasks, which covers `strop run` and recipe stages, both of which take the first tasks in order).
    """
    from strop.memory.reflections import ReflectionItem

    label = label or task_set.name
    mem = memory or memory_for(store)
    runs = runs_of(store, label)
    failures = mem.failures(label, runs) if runs else []
    if not failures:
        return IndexReport(label, 0, 0, mem.count(label))
    n = n_tasks or max(len(store.episodes.task_ids(runs)), 1)
    try:
        train = {t.id: t for t in task_set.tasks(Split.TRAIN, n)}
    except ValueError:  # fewer train tasks exist than asked: take them all
        train = {t.id: t for t in task_set.tasks(Split.TRAIN)}
    items = [
        ReflectionItem(
            f.episode_id, f.task_id, train[f.task_id].prompt, f.answer, f.critique, str(Split.TRAIN)
        )
        for f in failures
        if f.task_id in train and train[f.task_id].split == Split.TRAIN
    ]
    added = mem.add(label, items)
    return IndexReport(label, added, len(failures) - len(items), mem.count(label))


class Recall:
    """What a loop calls to get a task's recalled failures: `await recall(task, k)` -> JSON-ready dicts.

    Bound to one store scope (a task-set label). The asking task is always excluded, so a task never sees
    its own past answers or the critique that names its reference; held-out failures are never stored, and
    the store filters them out again in the query.
    """

    def __init__(self, memory: ReflectionMemory, label: str) -> None:
        self.memory = memory
        self.label = label

    async def __call__(self, task: Task, k: int) -> list[dict[str, Any]]:
        if k <= 0:
            return []
        hits = await asyncio.to_thread(
            self.memory.search, self.label, task.prompt, k, exclude_task_ids=(task.id,)
        )
        return [
            {
                "task_id": h.task_id,
                "episode_id": h.episode_id,
                "problem": h.problem,
                "answer": h.answer,
                "critique": h.critique,
                "score": round(h.score, 4),
            }
            for h in hits
        ]


def open_recall(
    store: Any,
    task_set: TaskSet,
    label: str | None = None,
    *,
    index: bool = True,
    memory: ReflectionMemory | None = None,
) -> Recall:
    """A Recall over the store's failures on this task set, indexing what is new first (unless `index=False`)."""
    label = label or task_set.name
    mem = memory or memory_for(store)
    if index:
        index_failures(store, task_set, label, memory=mem)
    return Recall(mem, label)
