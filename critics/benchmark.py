"""A critic benchmark's data: labelled solutions from held-out tasks or ProcessBench's files, as a task set.

Labelled items come from held-out tasks only (references, references corrupted in known ways, and policy
solutions checked step by step) or from ProcessBench's published files; `LabelledSolutionSet` makes them a
task set, so strop's generic runner iterates over them like any other. The scores are in benchmark_scores.py.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strop.critics.corruption import CORRUPTION_KINDS, corrupt
from strop.critics.labelling import LabelledSolution, item_id, label_solution, reference
from strop.sandbox.tasks.base import Split, Task, TaskSet, Verdict
from strop.sandbox.tasks.extract import answer_verdict, extract_answer

if TYPE_CHECKING:
    from strop.memory.store import Store

__all__ = [
    "LabelledSetError",
    "LabelledSolutionSet",
    "build_labelled_set",
    "labelled_from_task",
    "labelled_task",
    "labels_from_store",
    "load_processbench",
    "sample_labelled",
]

NO_REFERENCE = "no reference answer (ProcessBench items carry none)"


class LabelledSetError(ValueError):
    """A labelled set cannot be read or built; the message names the file, entry and field, and the fix."""


# --- ProcessBench's published format ------------------------------------------------------------------------


def _entries(path: Path) -> list[tuple[str, object]]:
    """(where, entry) pairs from a JSON list or a JSONL file, `where` naming the entry for error messages."""
    if not path.is_file():
        raise LabelledSetError(f"{path}: no such file; pass a ProcessBench JSON or JSONL file")
    text = path.read_text(encoding="utf-8")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None  # not one JSON document: read it as JSONL
    if isinstance(whole, list):
        return [(f"entry {i}", e) for i, e in enumerate(whole)]
    out: list[tuple[str, object]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((f"line {lineno}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise LabelledSetError(
                f"{path}: line {lineno} is not valid JSON ({exc.msg}); the file must be a JSON list of "
                "objects or one JSON object per line"
            ) from exc
    return out


def _processbench_item(path: Path, where: str, entry: object) -> LabelledSolution:
    def bad(field: str, want: str, got: object) -> LabelledSetError:
        return LabelledSetError(
            f"{path}: {where}: field {field!r} must be {want}, got {got!r}; fix or remove the entry "
            "(ProcessBench entries are {id, generator, problem, steps, final_answer_correct, label})"
        )

    if not isinstance(entry, dict):
        raise bad("(entry)", "a JSON object", type(entry).__name__)
    for field in ("id", "problem", "steps", "label"):
        if field not in entry:
            raise bad(field, "present", None)
    pid, problem, steps, label = entry["id"], entry["problem"], entry["steps"], entry["label"]
    if not isinstance(pid, str | int) or isinstance(pid, bool):
        raise bad("id", "a string or integer", pid)
    if not isinstance(problem, str):
        raise bad("problem", "a string", problem)
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise bad("steps", "a non-empty list of strings", steps)
    if not isinstance(label, int) or isinstance(label, bool) or not -1 <= label < len(steps):
        raise bad(
            "label", f"an integer from -1 to {len(steps) - 1} (0-based first wrong step, -1 for none)", label
        )
    final_ok = entry.get("final_answer_correct")
    if final_ok is not None and not isinstance(final_ok, bool):
        raise bad("final_answer_correct", "true or false", final_ok)
    task = Task(
        id=f"processbench/{pid}",
        set_name="processbench",
        split=Split.HELDOUT,
        prompt=problem,
        answer="",
        metadata={"generator": str(entry.get("generator", ""))},
    )
    # One step per line is strop's step convention, so a step written over several lines becomes one line.
    flat = [" ".join(s.split()) for s in steps]
    return LabelledSolution(
        id=item_id(task.id, "processbench", flat, None),
        task=task,
        steps=flat,
        answer=None,
        first_wrong_step=None if label == -1 else label + 1,
        source="processbench",
        final_answer_correct=final_ok,
    )


def load_processbench(path: str | Path) -> list[LabelledSolution]:
    """ProcessBench items from a JSON list or JSONL file; 0-based labels (-1: no error) become 1-based / None.

    The answer is left None: ProcessBench solutions state theirs inside the last step, and the problem's own
    answer is not published with them (task.answer is '').
    """
    path = Path(path)
    return [_processbench_item(path, where, entry) for where, entry in _entries(path)]


def sample_labelled(items: Sequence[LabelledSolution], n: int, seed: int = 0) -> list[LabelledSolution]:
    """A seeded sample of `n` items that keeps the mix of erroneous and correct solutions (stratified).

    Published files are sorted, not shuffled: ProcessBench's GSM8K split lists its 207 erroneous solutions
    before its correct ones, so its first 100 items hold no correct solution and F1 is undefined. Each class
    gets its share of `n` (largest remainder), at least one item while the class has any and `n` allows, so
    both accuracies exist. The chosen items keep their order in the file. The same (items, n, seed) draws the
    same sample; `n` at least len(items) returns them all.
    """
    if n < 1:
        raise LabelledSetError(f"cannot sample {n} items: ask for at least 1")
    if n >= len(items):
        return list(items)
    strata = [
        [i for i, item in enumerate(items) if item.erroneous],
        [i for i, item in enumerate(items) if not item.erroneous],
    ]
    exact = [n * len(s) / len(items) for s in strata]
    take = [int(x) for x in exact]
    for k in sorted(range(2), key=lambda k: exact[k] - take[k], reverse=True)[: n - sum(take)]:
        take[k] += 1
    for k in range(2):  # a class the rounding left empty borrows one from the other
        if take[k] == 0 and strata[k] and take[1 - k] > 1:
            take[k], take[1 - k] = 1, take[1 - k] - 1
    rng = random.Random(f"labelled-sample:{seed}")
    chosen = sorted(i for s, t in zip(strata, take, strict=True) for i in rng.sample(s, t))
    return [items[i] for i in chosen]


# --- building a labelled set --------------------------------------------------------------------------------


def _heldout(task_set: TaskSet, want: int) -> list[Task]:
    try:
        pool = task_set.tasks(Split.HELDOUT, want)
    except ValueError:  # fewer held-out tasks exist than asked for: take all there are
        pool = task_set.tasks(Split.HELDOUT, None)
    return [t for t in pool if t.split == Split.HELDOUT]  # never a training task, whatever the set returns


def build_labelled_set(
    task_set: TaskSet,
    *,
    n: int,
    seed: int = 0,
    kinds: Sequence[str] = CORRUPTION_KINDS,
    correct_share: float = 0.5,
    extra: Iterable[LabelledSolution] = (),
) -> list[LabelledSolution]:
    """`n` items from held-out tasks, one per task: about `correct_share` untouched references, the rest
    corrupted (cycling through `kinds`, skipping a kind that does not apply to a task), then `extra`.

    Each item comes from a different task so that a critic never sees the right and a wrong version of one
    problem. The items are shuffled (seeded) so that any prefix is balanced; `extra` follows, with repeated
    ids dropped. Deterministic for a seed.
    """
    if not 0.0 <= correct_share <= 1.0:
        raise LabelledSetError(f"correct_share must be in [0, 1]; got {correct_share}")
    unknown = [k for k in kinds if k not in CORRUPTION_KINDS]
    if unknown or not kinds:
        raise LabelledSetError(f"corruption kinds must be drawn from {CORRUPTION_KINDS}; got {tuple(kinds)}")
    rng = random.Random(f"labelled-set:{seed}")
    tasks = _heldout(task_set, max(4 * n, 100))
    rng.shuffle(tasks)
    n_correct = round(n * correct_share)
    items: list[LabelledSolution] = []
    corrupted, turn = 0, 0
    for task in tasks:
        if len(items) - corrupted < n_correct:
            items.append(reference(task))
            continue
        if corrupted == n - n_correct:
            break
        for k in range(len(kinds)):  # this task's turn in the cycle, or the next kind that applies
            item = corrupt(task, kinds[(turn + k) % len(kinds)], rng)
            if item is not None:
                items.append(item)
                corrupted, turn = corrupted + 1, turn + k + 1  # the next task starts after the kind used
                break
    if len(items) < n:
        raise LabelledSetError(
            f"only {len(items)} of {n} items could be built from {len(tasks)} held-out tasks of "
            f"{task_set.name!r} (kinds {tuple(kinds)}); ask for fewer items or use a set with more held-out tasks"
        )
    rng.shuffle(items)
    seen = {item.id for item in items}
    for item in extra:
        if item.id not in seen:
            seen.add(item.id)
            items.append(item)
    return items


def labels_from_store(
    store: Store, run_ids: Sequence[str] | None, task_set: TaskSet, limit: int | None = None
) -> list[LabelledSolution]:
    """The policy's own answers from stored best_of_n episodes on held-out tasks, labelled where checkable.

    Only held-out tasks: a benchmark item from a training task would measure memorisation. Answers are
    deduplicated by text per task (best_of_n often samples the same answer several times); hinted answers
    (rationalisations that saw the reference answer) are left out.
    """
    heldout = {t.id: t for t in task_set.tasks(Split.HELDOUT, None) if t.split == Split.HELDOUT}
    runs: list[str | None] = list(run_ids) if run_ids is not None else [None]
    out: list[LabelledSolution] = []
    seen: set[tuple[str, str]] = set()
    for run_id in runs:
        for episode in store.list_episodes(run_id, loop="best_of_n"):
            task = heldout.get(episode.task_id)
            if task is None:
                continue
            for step in episode.steps:
                key = (task.id, step.text.strip())
                if step.role != "assistant" or step.metadata.get("hinted") or key in seen:
                    continue
                seen.add(key)
                if (item := label_solution(task, step.text)) is not None:
                    out.append(item)
                    if limit is not None and len(out) >= limit:
                        return out
    return out


# --- the labelled items as a task set -------------------------------------------------------------------------

_KEYS = (
    "solution_steps",
    "solution_answer",
    "first_wrong_step",
    "source",
    "problem_id",
    "final_answer_correct",
)


def labelled_task(item: LabelledSolution, set_name: str) -> Task:
    """The item as a held-out Task; the metadata carries everything `labelled_from_task` needs to undo it."""
    return Task(
        id=item.id,
        set_name=set_name,
        split=Split.HELDOUT,
        prompt=item.task.prompt,
        answer=item.task.answer,
        reference_steps=list(item.task.reference_steps),
        metadata={
            "solution_steps": list(item.steps),
            "solution_answer": item.answer,
            "first_wrong_step": item.first_wrong_step,
            "source": item.source,
            "problem_id": item.task.id,
            "final_answer_correct": item.final_answer_correct,
            "problem_set": item.task.set_name,
            "problem_split": str(item.task.split),
            "problem_metadata": dict(item.task.metadata),
        },
    )


def labelled_from_task(task: Task) -> LabelledSolution:
    """The labelled item a `LabelledSolutionSet` task was made from."""
    missing = [k for k in _KEYS if k not in task.metadata]
    if missing:
        raise LabelledSetError(
            f"task {task.id!r} is not a labelled-solution task (metadata lacks {', '.join(missing)}); "
            "take tasks from a LabelledSolutionSet"
        )
    m: dict[str, Any] = task.metadata
    problem = Task(
        id=m["problem_id"],
        set_name=m.get("problem_set", task.set_name),
        split=Split(m.get("problem_split", Split.HELDOUT)),
        prompt=task.prompt,
        answer=task.answer,
        reference_steps=list(task.reference_steps),
        metadata=dict(m.get("problem_metadata", {})),
    )
    return LabelledSolution(
        id=task.id,
        task=problem,
        steps=list(m["solution_steps"]),
        answer=m["solution_answer"],
        first_wrong_step=m["first_wrong_step"],
        source=m["source"],
        final_answer_correct=m["final_answer_correct"],
    )


class LabelledSolutionSet:
    """Labelled solutions as a TaskSet: every item a held-out task, so the generic runner can serve critics.

    `verify` checks a corrected solution's final answer against the problem's, as the arithmetic verifier
    does; ProcessBench items carry no answer, so nothing verifies against them.
    """

    labelled_from_task = staticmethod(labelled_from_task)

    def __init__(self, items: Sequence[LabelledSolution], name: str = "labelled") -> None:
        ids = [item.id for item in items]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise LabelledSetError(f"labelled item id {dup!r} occurs more than once; ids must be unique")
        self.name = name
        self.items = list(items)

    def tasks(self, split: Split | str, n: int | None = None) -> list[Task]:
        if Split(split) != Split.HELDOUT:
            return []  # a benchmark is never trained on
        chosen = self.items if n is None else self.items[:n]
        return [labelled_task(item, self.name) for item in chosen]

    def verify(self, task: Task, output: str) -> Verdict:
        if not task.answer:
            return Verdict(reward=0.0, correct=False, extracted=extract_answer(output), reason=NO_REFERENCE)
        return answer_verdict(output, task.answer)
