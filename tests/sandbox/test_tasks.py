"""Task sets: stable splits, the held-out guard, references and verification through the registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from strop.sandbox.tasks import (
    ArithmeticTaskSet,
    HeldoutTaskError,
    Split,
    UnknownTaskSetError,
    assert_trainable,
    list_task_sets,
    load_task_set,
)
from strop.sandbox.tasks.gsm8k import TaskFileError

GSM8K = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "train.jsonl"


def test_arithmetic_defaults_match_the_tiny_model_format() -> None:
    task = ArithmeticTaskSet().tasks(Split.TRAIN, 3)[0]
    assert task.prompt.startswith("What is ") and task.prompt.endswith("?")
    a, b = (int(x) for x in task.metadata["expression"].split(" + "))
    assert task.reference_solution == f"Step 1: {a} + {b} = {a + b}\n#### {a + b}"
    assert ArithmeticTaskSet().verify(task, task.reference_solution).correct


def test_arithmetic_is_deterministic_and_splits_never_overlap() -> None:
    ts = ArithmeticTaskSet(seed=3)
    assert [t.id for t in ts.tasks("train", 50)] == [
        t.id for t in ArithmeticTaskSet(seed=3).tasks("train", 50)
    ]
    held = {t.metadata["expression"] for t in ts.tasks("heldout")}
    for seed in range(4):  # whatever the seed, a held-out expression never shows up in train
        train = {t.metadata["expression"] for t in ArithmeticTaskSet(seed=seed).tasks("train", 2000)}
        assert not held & train
    assert 500 < len(held) < 1100  # about 10% of the 8100 two-digit sums


def test_arithmetic_knobs() -> None:
    ts = ArithmeticTaskSet(digits=3, ops=("+", "-", "*"), steps=3, word_problems=True, seed=1)
    tasks = ts.tasks("train", 20)
    for t in tasks:
        assert len(t.reference_steps) == 3 and "How many" in t.prompt
        assert eval(t.metadata["expression"]) == int(t.answer)  # the reference is right
        assert int(t.answer) >= 0  # stories never give away more than there is
        assert ts.verify(t, t.reference_solution).correct
    with pytest.raises(ValueError, match="ops"):
        ArithmeticTaskSet(ops=("/",))
    with pytest.raises(ValueError, match="distinct"):
        ArithmeticTaskSet(digits=1).tasks("heldout", 500)


def test_verify_wrong_and_missing_answers_are_verdicts() -> None:
    ts = ArithmeticTaskSet()
    task = ts.tasks("train", 1)[0]
    wrong = ts.verify(task, f"#### {int(task.answer) + 1}")
    assert not wrong.correct and wrong.reward == 0.0 and "expected" in wrong.reason
    none = ts.verify(task, "I cannot do maths")
    assert none.extracted is None and none.reason == "no answer found"


def test_guard_refuses_heldout() -> None:
    ts = ArithmeticTaskSet()
    assert_trainable(ts.tasks("train", 1)[0])
    with pytest.raises(HeldoutTaskError, match="held out"):
        assert_trainable(ts.tasks("heldout", 1)[0])


def test_registry_lists_and_rejects() -> None:
    assert {i.name for i in list_task_sets()} == {"arithmetic", "games", "gsm8k", "humaneval", "jsonl"}
    with pytest.raises(UnknownTaskSetError, match="arithmetic"):
        load_task_set("mmlu")
    with pytest.raises(ValueError, match="no option"):
        load_task_set("arithmetic", digitz=3)
    assert load_task_set("arithmetic", digits=3, ops="+-").tasks("train", 1)[0].answer


def test_gsm8k_needs_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STROP_GSM8K", raising=False)
    with pytest.raises(TaskFileError, match="STROP_GSM8K"):
        load_task_set("gsm8k")


@pytest.mark.skipif(not GSM8K.is_file(), reason="needs ../shared/data/gsm8k/train.jsonl")
def test_gsm8k_real_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STROP_GSM8K", str(GSM8K))
    ts = load_task_set("gsm8k", seed=1)
    train, held = ts.tasks("train"), ts.tasks("heldout")
    assert len(train) + len(held) == 7473 and 500 < len(held) < 1000
    assert not {t.prompt for t in train} & {t.prompt for t in held}
    assert {t.id for t in held} == {t.id for t in load_task_set("gsm8k", seed=7).tasks("heldout")}
    for t in train[:200]:
        assert "<<" not in t.reference_solution and t.reference_steps
        assert ts.verify(t, t.reference_solution).correct
    t = train[0]
    assert ts.verify(t, f"The answer is $\\boxed{{{t.answer}.0}}$").correct
    assert not ts.verify(t, f"#### {float(t.answer) + 1}").correct
    assert ts.verify(t, "hmm").extracted is None


def test_gsm8k_strips_calculator_and_rejects_bad_lines(tmp_path: Path) -> None:
    f = tmp_path / "g.jsonl"
    f.write_text(json.dumps({"question": "q?", "answer": "2*3 = <<2*3=6>>6 so\n#### 1,006"}) + "\n")
    ts = load_task_set("gsm8k", path=f, assign="heldout")
    (t,) = ts.tasks("heldout")
    assert t.reference_steps == ["2*3 = 6 so"] and t.answer == "1006"
    assert ts.verify(t, "that makes 1,006 dollars").correct
    f.write_text('{"question": "q", "answer": "no marker"}\n')
    with pytest.raises(TaskFileError, match=":1:"):
        load_task_set("gsm8k", path=f).tasks("train")


def test_jsonl_answer_types(tmp_path: Path) -> None:
    f = tmp_path / "mine.jsonl"
    rows = [
        {"id": "cap", "prompt": "Capital of France?", "answer": "Paris", "split": "train"},
        {
            "id": "col",
            "prompt": "Sky colour?",
            "answer": "blue",
            "choices": ["red", "blue"],
            "split": "train",
        },
        {"id": "n", "prompt": "2+2?", "answer": 4, "split": "heldout", "steps": ["2+2=4"]},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    exact = load_task_set("jsonl", path=f, answer_type="exact")
    cap = next(t for t in exact.tasks("train") if t.id.endswith("cap"))
    assert exact.verify(cap, "I think\n#### paris.").correct
    assert not exact.verify(cap, "#### Lyon").correct
    f2 = tmp_path / "choice.jsonl"
    f2.write_text(json.dumps(rows[1]))
    choice = load_task_set("jsonl", path=f2, answer_type="choice")
    (col,) = choice.tasks("train")
    assert col.answer == "B" and "B. blue" in col.prompt
    assert choice.verify(col, "The answer is (B)").correct
    assert choice.verify(col, "It must be blue.").correct
    assert not choice.verify(col, "#### A").correct
    number = load_task_set("jsonl", path=f, answer_type="number")
    (n,) = number.tasks("heldout")
    assert number.verify(n, "#### 4.0").correct and n.reference_steps == ["2+2=4"]
    with pytest.raises(TaskFileError, match="choices"):
        load_task_set("jsonl", path=f, answer_type="choice").tasks("train")
