"""HumanEval through the real jail: every canonical solution passes and every empty body fails."""

from __future__ import annotations

import pytest

from strop.sandbox.tasks import load_task_set
from strop.sandbox.tasks.humaneval import HumanEvalTaskSet, build_program, extract_code


@pytest.fixture(scope="module")
def humaneval() -> HumanEvalTaskSet:
    ts = load_task_set("humaneval", workers=2)
    assert isinstance(ts, HumanEvalTaskSet)
    return ts


@pytest.mark.slow
def test_all_164_canonical_solutions_pass_and_empty_bodies_fail(humaneval: HumanEvalTaskSet) -> None:
    tasks = humaneval.all_tasks()
    assert len(tasks) == 164
    passed = humaneval.verify_many(tasks, [t.answer for t in tasks])
    assert [t.id for t, v in zip(tasks, passed, strict=True) if not v.correct] == []
    empty = humaneval.verify_many(tasks, [""] * len(tasks))
    assert [t.id for t, v in zip(tasks, empty, strict=True) if v.correct] == []
    assert all(v.reward == 0.0 and v.reason for v in empty)


def test_splits_are_stable_and_disjoint(humaneval: HumanEvalTaskSet) -> None:
    train, held = humaneval.tasks("train"), humaneval.tasks("heldout")
    assert len(train) + len(held) == 164 and 15 < len(held) < 50
    assert not {t.metadata["task_id"] for t in train} & {t.metadata["task_id"] for t in held}
    assert [t.id for t in held] == [t.id for t in HumanEvalTaskSet().tasks("heldout")]


def test_fenced_whole_function_and_wrong_code(humaneval: HumanEvalTaskSet) -> None:
    task = next(t for t in humaneval.all_tasks() if t.metadata["task_id"] == "HumanEval/0")
    whole = (
        "Here you go:\n```python\nfrom typing import List\n\n"
        "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n```\n"
        "Hope it helps."
    )
    assert "Hope" not in extract_code(whole)
    ok = humaneval.verify(task, whole)
    assert ok.correct and "tests passed" in ok.reason
    bad = humaneval.verify(task, "    return True\n")
    assert not bad.correct and "AssertionError" in bad.reason
    hang = HumanEvalTaskSet(timeout_s=1).verify(task, "    while True:\n        pass\n")
    assert not hang.correct and hang.reason.startswith("timeout")
    assert build_program(task, "    return False\n").endswith("check(has_close_elements)\n")


async def test_async_verify(humaneval: HumanEvalTaskSet) -> None:
    task = humaneval.all_tasks()[2]
    assert (await humaneval.averify(task, task.answer)).correct
