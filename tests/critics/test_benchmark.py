"""The critic benchmark's data and metrics: corruptions, step labels, ProcessBench files, sets and scores.

Corruptions are checked against an independent recomputation of 'a op b = c' chains (not the module's own
parser), and the scores against hand-computed cases.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from pathlib import Path

import pytest

from strop.critics.base import Critique, CritiqueVerdict
from strop.critics.benchmark import (
    NO_REFERENCE,
    LabelledSetError,
    LabelledSolutionSet,
    build_labelled_set,
    labelled_from_task,
    labels_from_store,
    load_processbench,
)
from strop.critics.benchmark_scores import correction_scores, processbench_scores, step_label_scores
from strop.critics.corruption import corrupt
from strop.critics.equations import equations
from strop.critics.labelling import LabelledSolution, label_solution, reference
from strop.critics.steps import split_steps
from strop.sandbox.tasks import ArithmeticTaskSet, Split, Task, TaskSet

KINDS = ("calculation", "operand", "copy", "drop")
_STEP = re.compile(r"^\(?(-?\d+)\)? ([-+*]) \(?(-?\d+)\)? = (-?\d+)$")


def _chain(steps: list[str]) -> list[tuple[int, str, int, int]]:
    """Each step as (a, op, b, c), read with a plain regex: the test's own check, not the module's parser."""
    out = []
    for s in steps:
        m = _STEP.match(s)
        assert m, f"not an 'a op b = c' step: {s!r}"
        out.append((int(m[1]), m[2], int(m[3]), int(m[4])))
    return out


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _operands(task: Task) -> set[int]:
    return {int(x) for x in re.findall(r"\d+", str(task.metadata["expression"]))}


def _tasks(steps: int, n: int = 12) -> list[Task]:
    return ArithmeticTaskSet(ops=("+", "-", "*"), steps=steps).tasks(Split.HELDOUT, n)


# --- corruption -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_corruption_puts_one_known_error_and_carries_it_through(kind: str, steps: int) -> None:
    made = 0
    for seed, task in enumerate(_tasks(steps)):
        item = corrupt(task, kind, random.Random(seed))
        if item is None:
            continue
        made += 1
        ref, bad = _chain(task.reference_steps), _chain(item.steps)
        w = item.first_wrong_step
        assert w is not None and item.erroneous and item.source == f"corrupt:{kind}"
        assert item.task == task and item.final_answer_correct is False
        a, op, b, c = bad[w - 1]
        if kind == "drop":
            assert len(bad) == len(ref) - 1 and w < len(ref)
            # The step after the dropped one keeps its own operation but starts from the quantity before it.
            assert (op, b) == (ref[w][1], ref[w][2])
            assert a == (ref[w - 2][3] if w > 1 else ref[0][0]) and _apply(a, op, b) == c
        else:
            assert len(bad) == len(ref) and bad[: w - 1] == ref[: w - 1] and bad[w - 1] != ref[w - 1]
        if kind == "calculation":
            assert (a, op, b) == ref[w - 1][:3] and 0 < abs(c - _apply(a, op, b)) <= 3
        if kind == "operand":
            assert _apply(a, op, b) == c and op == ref[w - 1][1]
            assert {a, b} - _operands(task) and (w == 1 or a == bad[w - 2][3])
        if kind == "copy":
            assert w >= 2 and a != bad[w - 2][3] and _apply(a, op, b) == c and (op, b) == ref[w - 1][1:3]
        # Every later step is computed correctly from the wrong value it was handed.
        for k in range(w, len(bad)):
            assert bad[k][0] == bad[k - 1][3] and _apply(*bad[k][:3]) == bad[k][3]
        assert item.answer == str(bad[-1][3]) != task.answer
        assert split_steps(item.solution) == (item.steps, item.answer)
        # A policy-style check finds the same step, except a dropped step: the rest checks, so it is unlabellable.
        labelled = label_solution(task, item.solution)
        if kind == "drop":
            assert labelled is None
        else:
            assert labelled is not None and labelled.first_wrong_step == w
    assert made >= 8, f"{kind} applied to only {made} of 12 {steps}-step problems"


def test_kinds_that_need_two_steps_do_not_apply_to_one() -> None:
    task = _tasks(1, 1)[0]
    assert corrupt(task, "drop", random.Random(0)) is None
    assert corrupt(task, "copy", random.Random(0)) is None
    for kind in ("calculation", "operand"):
        item = corrupt(task, kind, random.Random(0))
        assert item is not None and item.first_wrong_step == 1 and item.answer != task.answer


def test_corruption_is_deterministic_for_a_seed_and_refuses_unknown_kinds() -> None:
    task = _tasks(3, 1)[0]
    assert corrupt(task, "calculation", random.Random(7)) == corrupt(task, "calculation", random.Random(7))
    with pytest.raises(ValueError, match="calculation"):
        corrupt(task, "typo", random.Random(0))


def test_reference_is_labelled_correct() -> None:
    task = _tasks(2, 1)[0]
    item = reference(task)
    assert item.source == "reference" and item.first_wrong_step is None and not item.erroneous
    assert item.steps == task.reference_steps and item.answer == task.answer and item.final_answer_correct


NATALIA = Task(
    id="gsm8k/heldout/natalia",
    set_name="gsm8k",
    split=Split.HELDOUT,
    prompt="Natalia sold clips to 48 of her friends in April, and then she sold half as many clips to her "
    "friends in May. How many clips did Natalia sell altogether in April and May?",
    answer="72",
    reference_steps=[
        "Natalia sold 48/2 = 24 clips in May.",
        "Natalia sold 48+24 = 72 clips altogether in April and May.",
    ],
)


@pytest.mark.parametrize("kind", KINDS)
def test_gsm8k_references_are_corrupted_in_their_prose(kind: str) -> None:
    item = corrupt(NATALIA, kind, random.Random(0))
    assert item is not None and item.answer not in (None, "72") and item.final_answer_correct is False
    w = item.first_wrong_step
    assert w is not None
    assert all(e.holds for s in item.steps[w:] for e in equations(s))
    assert all(s.startswith("Natalia sold ") for s in item.steps)
    last = equations(item.steps[-1])[-1]
    assert str(last.rhs) == item.answer
    if kind == "drop":
        # Without halving, May's 24 becomes April's 48: the remaining step is the first wrong one.
        assert item.steps == ["Natalia sold 48+48 = 96 clips altogether in April and May."] and w == 1
    if kind == "copy":
        assert w == 2 and item.steps[0] == NATALIA.reference_steps[0] and "48+24" not in item.steps[1]
    if kind == "calculation":
        assert not equations(item.steps[w - 1])[0].holds
    if kind == "operand":
        assert equations(item.steps[w - 1])[0].holds and "48" not in item.steps[w - 1].split("=")[0]


def test_gsm8k_step_without_an_equation_makes_every_kind_refuse() -> None:
    task = NATALIA.model_copy(
        update={"reference_steps": ["She sold half as many in May, so 24.", "48+24 = 72"]}
    )
    assert all(corrupt(task, kind, random.Random(0)) is None for kind in KINDS)


# --- labelling policy solutions ---------------------------------------------------------------------------

ARITH = Task(
    id="arithmetic/heldout/t",
    set_name="arithmetic",
    split=Split.HELDOUT,
    prompt="What is ((12 + 34) * 3) - 5?",
    answer="133",
    reference_steps=["12 + 34 = 46", "46 * 3 = 138", "138 - 5 = 133"],
    metadata={"expression": "((12 + 34) * 3) - 5"},
)


def test_a_solution_whose_steps_all_check_is_labelled_correct() -> None:
    item = label_solution(
        ARITH, "Step 1: 12 + 34 = 46\nStep 2: 46 * 3 = 138\nStep 3: 138 - 5 = 133\n#### 133"
    )
    assert item is not None and item.first_wrong_step is None and item.final_answer_correct is True
    assert item.steps == ARITH.reference_steps and item.answer == "133" and item.source == "policy"
    # One step may do two operations; the intermediate result is usable later in the same step.
    two = label_solution(ARITH, "12 + 34 = 46, and 46 * 3 = 138\n138 - 5 = 133\n#### 133")
    assert two is not None and two.first_wrong_step is None


@pytest.mark.parametrize(
    ("text", "wrong"),
    [
        ("Step 1: 12 + 34 = 46\nStep 2: 46 * 3 = 139\nStep 3: 139 - 5 = 134\n#### 134", 2),  # false equation
        (
            "Step 1: 12 + 35 = 47\nStep 2: 47 * 3 = 141\nStep 3: 141 - 5 = 136\n#### 136",
            1,
        ),  # 35: not in the problem
        (
            "Step 1: 12 + 34 = 46\nStep 2: 64 * 3 = 192\nStep 3: 192 - 5 = 187\n#### 187",
            2,
        ),  # 64: copied wrong
        (
            "Step 1: 12 + 34 = 46\nStep 2: 46 * 3 = 140\nSo the answer is 135.\n#### 135",
            2,
        ),  # prose after: fine
    ],
)
def test_the_first_wrong_step_is_found_by_recomputation(text: str, wrong: int) -> None:
    item = label_solution(ARITH, text)
    assert item is not None and item.first_wrong_step == wrong and item.final_answer_correct is False


@pytest.mark.parametrize(
    "text",
    [
        "First add the two numbers.\n12 + 34 = 47\n47 * 3 = 141\n#### 136",  # a step before the error is prose
        "12 + 34 = 46\n46 * 3 = 138\n138 - 5 = 133\n#### 134",  # every step checks, yet the answer is wrong
        "",
    ],
)
def test_solutions_whose_error_cannot_be_placed_are_unlabellable(text: str) -> None:
    assert label_solution(ARITH, text) is None


def test_a_number_from_nowhere_is_a_wrong_step_even_when_the_answer_is_right() -> None:
    item = label_solution(ARITH, "12 + 34 = 46\n46 + 92 = 138\n138 - 5 = 133\n#### 133")
    assert item is not None and item.first_wrong_step == 2 and item.final_answer_correct is True


def test_gsm8k_style_policy_solution_is_checked_by_its_equations() -> None:
    good = label_solution(NATALIA, "She sold 48/2 = 24 clips in May.\nIn total 48 + 24 = 72 clips.\n#### 72")
    bad = label_solution(NATALIA, "She sold 48/2 = 24 clips in May.\nIn total 48 + 24 = 70 clips.\n#### 70")
    assert good is not None and good.first_wrong_step is None
    assert bad is not None and bad.first_wrong_step == 2


# --- ProcessBench files -------------------------------------------------------------------------------------

PB = [
    {
        "id": "gsm8k-0",
        "generator": "Qwen2-7B",
        "problem": "What is 2 + 3 * 4?",
        "steps": ["First 3 * 4 = 12.", "Then 2 + 12 = 15.\nSo the answer is \\boxed{15}."],
        "final_answer_correct": False,
        "label": 1,
    },
    {
        "id": "gsm8k-1",
        "generator": "Llama",
        "problem": "What is 1 + 1?",
        "steps": ["1 + 1 = 2, \\boxed{2}"],
        "final_answer_correct": True,
        "label": -1,
    },
]


def test_processbench_json_and_jsonl_give_the_same_items(tmp_path: Path) -> None:
    (tmp_path / "pb.json").write_text(json.dumps(PB))
    (tmp_path / "pb.jsonl").write_text("\n".join(json.dumps(e) for e in PB) + "\n\n")
    items = load_processbench(tmp_path / "pb.json")
    assert items == load_processbench(str(tmp_path / "pb.jsonl"))
    first, second = items
    assert first.first_wrong_step == 2 and first.erroneous and second.first_wrong_step is None
    assert (
        first.task.id == "processbench/gsm8k-0"
        and first.task.answer == ""
        and first.task.split == Split.HELDOUT
    )
    assert first.source == "processbench" and first.final_answer_correct is False and first.answer is None
    assert first.task.metadata["generator"] == "Qwen2-7B"
    # A step written over two lines stays one step, so the numbering critics see matches the label.
    assert first.steps[1] == "Then 2 + 12 = 15. So the answer is \\boxed{15}."
    assert split_steps(first.solution)[0] == first.steps
    assert len({i.id for i in items}) == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"label": 2}, "label"),
        ({"label": "1"}, "label"),
        ({"steps": "one"}, "steps"),
        ({"problem": None}, "problem"),
    ],
)
def test_a_malformed_processbench_entry_names_file_entry_and_field(
    tmp_path: Path, change: dict, field: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([PB[0], {**PB[1], **change}]))
    with pytest.raises(LabelledSetError, match=rf"bad\.json: entry 1: field '{field}'"):
        load_processbench(path)


def test_processbench_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(PB[0]) + "\n{not json\n")
    with pytest.raises(LabelledSetError, match=r"bad\.jsonl: line 2"):
        load_processbench(path)
    missing = {k: v for k, v in PB[1].items() if k != "label"}
    path.write_text(json.dumps(PB[0]) + "\n" + json.dumps(missing) + "\n")
    with pytest.raises(LabelledSetError, match="line 2: field 'label'"):
        load_processbench(path)
    with pytest.raises(LabelledSetError, match="no such file"):
        load_processbench(tmp_path / "absent.json")


# --- building a labelled set ----------------------------------------------------------------------------------


def test_build_labelled_set_is_deterministic_balanced_and_held_out() -> None:
    ts = ArithmeticTaskSet(ops=("+", "-", "*"), steps=3)
    items = build_labelled_set(ts, n=20, seed=3)
    assert [i.id for i in items] == [i.id for i in build_labelled_set(ts, n=20, seed=3)]
    assert [i.id for i in items] != [i.id for i in build_labelled_set(ts, n=20, seed=4)]
    assert len(items) == 20 and len({i.id for i in items}) == 20
    assert sum(not i.erroneous for i in items) == 10
    assert {i.source for i in items} == {"reference", *(f"corrupt:{k}" for k in KINDS)}
    heldout = {t.id for t in ts.tasks(Split.HELDOUT, None)}
    assert all(i.task.id in heldout and i.task.split == Split.HELDOUT for i in items)
    assert len({i.task.id for i in items}) == 20  # one item per problem
    skewed = build_labelled_set(ts, n=10, seed=0, correct_share=0.2, kinds=("copy",))
    assert sum(not i.erroneous for i in skewed) == 2 and {i.source for i in skewed} == {
        "reference",
        "corrupt:copy",
    }


def test_build_labelled_set_skips_kinds_that_do_not_apply_and_appends_extra() -> None:
    ts = ArithmeticTaskSet(ops=("+", "-", "*"), steps=1)
    extra = [label_solution(ARITH, "12 + 34 = 46\n46 * 3 = 139\n139 - 5 = 134\n#### 134")]
    assert extra[0] is not None
    items = build_labelled_set(ts, n=8, seed=0, extra=[*extra, *extra])
    assert len(items) == 9 and items[-1] == extra[0]  # a repeated extra item is kept once
    assert {i.source for i in items[:8]} == {"reference", "corrupt:calculation", "corrupt:operand"}


class _LeakySet:
    """A task set whose held-out split wrongly includes a training task."""

    name = "leaky"

    def tasks(self, split: Split, n: int | None = None) -> list[Task]:
        train = ARITH.model_copy(update={"id": "arithmetic/train/x", "split": Split.TRAIN})
        return [train, ARITH] if split == Split.HELDOUT else [train]

    def verify(self, task: Task, output: str) -> object:
        raise NotImplementedError


def test_build_labelled_set_never_uses_a_training_task() -> None:
    items = build_labelled_set(_LeakySet(), n=1, correct_share=0.0)  # type: ignore[arg-type]
    assert [i.task.id for i in items] == [ARITH.id]
    with pytest.raises(LabelledSetError, match="only 1 of 2 items"):
        build_labelled_set(_LeakySet(), n=2)  # type: ignore[arg-type]


# --- the set as a TaskSet ---------------------------------------------------------------------------------


def test_labelled_solution_set_round_trips_and_verifies(tmp_path: Path) -> None:
    (tmp_path / "pb.json").write_text(json.dumps(PB))
    items = build_labelled_set(ArithmeticTaskSet(steps=2), n=4, seed=1) + load_processbench(
        tmp_path / "pb.json"
    )
    ts = LabelledSolutionSet(items, name="bench")
    assert isinstance(ts, TaskSet) and ts.name == "bench"
    tasks = ts.tasks(Split.HELDOUT)
    assert ts.tasks(Split.TRAIN) == [] and len(ts.tasks("heldout", 2)) == 2
    for item, task in zip(items, tasks, strict=True):
        assert task.id == item.id and task.split == Split.HELDOUT and task.prompt == item.task.prompt
        assert task.answer == item.task.answer and task.reference_steps == item.task.reference_steps
        assert task.metadata["first_wrong_step"] == item.first_wrong_step
        assert task.metadata["problem_id"] == item.task.id and task.metadata["solution_steps"] == item.steps
        assert labelled_from_task(task) == item == LabelledSolutionSet.labelled_from_task(task)
        json.dumps(task.metadata)  # stored with the episode
    arith = tasks[0]
    assert ts.verify(arith, f"Step 1: ...\n#### {arith.answer}").correct
    wrong = ts.verify(arith, "#### 1.5")
    assert not wrong.correct and wrong.reward == 0.0 and wrong.reason == f"expected {arith.answer}, got 1.5"
    assert ts.verify(arith, "no idea").reason == "no answer found"
    pb = ts.verify(tasks[-1], "#### 2")
    assert not pb.correct and pb.reason == NO_REFERENCE
    with pytest.raises(LabelledSetError, match="not a labelled-solution task"):
        labelled_from_task(ARITH)
    with pytest.raises(LabelledSetError, match="more than once"):
        LabelledSolutionSet([items[0], items[0]])


# --- metrics --------------------------------------------------------------------------------------------------


_ids = itertools.count()


def _item(label: int | None, answer: str = "133", n_steps: int = 3) -> LabelledSolution:
    task = ARITH.model_copy(update={"answer": answer})
    steps = [f"step {k}" for k in range(1, n_steps + 1)]
    return LabelledSolution(
        id=f"item-{next(_ids)}",
        task=task,
        steps=steps,
        answer="134" if label else "133",
        first_wrong_step=label,
        source="test",
    )


def _crit(verdict: str, step: int | None = None, corrected: str | None = None) -> Critique:
    return Critique(verdict=CritiqueVerdict(verdict), first_wrong_step=step, corrected_solution=corrected)


def test_processbench_scores_by_hand() -> None:
    items = [_item(2), _item(1), _item(3), _item(None), _item(None)]
    critiques = [
        _crit("incorrect", 2),  # right step: found
        _crit("incorrect", 2),  # wrong step: missed
        _crit("unparsed"),  # never a pass
        _crit("correct"),  # accepted
        _crit("incorrect", 1),  # a right solution rejected
    ]
    s = processbench_scores(items, critiques)
    assert s["acc_erroneous"] == pytest.approx(1 / 3) and s["acc_correct"] == pytest.approx(1 / 2)
    assert s["f1"] == pytest.approx(0.4)
    assert (s["n_erroneous"], s["n_correct"], s["unparsed"]) == (3, 2, 1)
    # A 'correct' verdict that still points at a step does not accept; a found step needs an incorrect verdict.
    odd = processbench_scores([_item(None), _item(2)], [_crit("correct", 2), _crit("correct", 2)])
    assert odd["acc_correct"] == 0.0 and odd["acc_erroneous"] == 0.0 and odd["f1"] == 0.0
    only_wrong = processbench_scores([_item(1)], [_crit("incorrect", 1)])
    assert (
        only_wrong["acc_erroneous"] == 1.0 and only_wrong["acc_correct"] is None and only_wrong["f1"] is None
    )
    with pytest.raises(ValueError, match="one critique per item"):
        processbench_scores([_item(1)], [])


def test_step_label_scores_by_hand() -> None:
    # _item has three steps. Labelled: steps before the first wrong one (right) and that one (wrong); none after.
    items = [_item(2), _item(None), _item(1), _item(3)]
    labels = [
        [True, False, True],  # step 1 right, step 2 flagged: 2/2 (step 3 carries no label)
        [True, True, False],  # right solution, step 3 wrongly flagged: 2/3
        None,  # unparsed: its one labelled step missed
        [True, True],  # wrong length: its three labelled steps missed
    ]
    s = step_label_scores(items, labels)
    assert s["n_steps"] == 2 + 3 + 1 + 3
    assert s["step_acc"] == pytest.approx(4 / 9)
    assert s["step_acc_wrong"] == pytest.approx(
        1 / 3
    )  # first wrong steps: item 1 flagged, items 3 and 4 missed
    # Saying Yes to everything gets every right step and no wrong one.
    yes = step_label_scores(items, [[True] * 3 for _ in items])
    assert yes["step_acc_wrong"] == 0.0 and yes["step_acc"] == pytest.approx(6 / 9)
    # AUC ranks: right steps (0.9, 0.4 | 0.8, 0.6, 0.2 | 0.7, 0.3) against first wrong ones (0.5 | 0.1 | 0.7).
    probs = [[0.9, 0.5, 0.0], [0.8, 0.6, 0.2], [0.1, 0.9, 0.9], [0.7, 0.3, 0.7]]
    auc = step_label_scores(items, labels, probs)["step_auc"]
    right, wrong = [0.9, 0.8, 0.6, 0.2, 0.7, 0.3], [0.5, 0.1, 0.7]
    want = sum((r > w) + 0.5 * (r == w) for r in right for w in wrong) / 18
    assert auc == pytest.approx(want) and 0.5 < auc < 1.0
    assert step_label_scores(items, labels, [None] * 4)["step_auc"] is None  # nothing to rank


def test_correction_scores_by_hand() -> None:
    unknown = _item(2, answer="")  # a ProcessBench-like item: no answer, not counted
    items = [_item(2), _item(1), _item(3), _item(None), _item(None), unknown]
    critiques = [
        _crit("incorrect", 2, corrected="Step 1: fixed\n#### 133"),  # fixed
        _crit("correct"),  # accepts a wrong solution: ends wrong
        _crit("unparsed", corrected="#### 133"),  # unparsed never passes, whatever it carries
        _crit("correct"),  # keeps a right solution
        _crit("incorrect", 1, corrected="#### 120"),  # 'corrects' a right solution into a wrong one
        _crit("correct"),
    ]
    s = correction_scores(items, critiques)
    assert s["correction_acc"] == pytest.approx(2 / 5) and s["n"] == 5
    assert s["fixed"] == pytest.approx(1 / 3) and s["kept"] == pytest.approx(1 / 2)
    assert (s["n_erroneous"], s["n_correct"]) == (3, 2)
    seen: list[str] = []
    custom = correction_scores(items[:1], critiques[:1], lambda item, text: bool(seen.append(text)))
    assert seen == ["Step 1: fixed\n#### 133"] and custom["correction_acc"] == 0.0
    none = correction_scores([unknown], [_crit("correct")])
    assert none == {
        "correction_acc": None,
        "fixed": None,
        "kept": None,
        "n": 0,
        "n_erroneous": 0,
        "n_correct": 0,
    }


# --- policy solutions from the store ---------------------------------------------------------------------------


def test_labels_from_store_takes_held_out_best_of_n_answers_once(sqlite_url: str) -> None:
    from strop.memory.records import EpisodeRecord, RunRecord, StepRecord
    from strop.memory.store import Store

    ts = ArithmeticTaskSet(steps=2)
    held, train = ts.tasks(Split.HELDOUT, 1)[0], ts.tasks(Split.TRAIN, 1)[0]
    right, wrong = reference(held).solution, reference(held).solution.replace(held.answer, "1")
    store = Store(sqlite_url)
    try:
        run = store.create_run(RunRecord(loop="best_of_n"))
        texts = [right, right, wrong, "I think it is 5"]
        store.write_episode(
            EpisodeRecord(
                run_id=run.id,
                task_id=held.id,
                loop="best_of_n",
                steps=[StepRecord(index=i, text=t) for i, t in enumerate(texts)],
            )
        )
        store.write_episode(
            EpisodeRecord(
                run_id=run.id,
                task_id=train.id,
                loop="best_of_n",
                steps=[StepRecord(index=0, text=reference(train).solution)],
            )
        )
        items = labels_from_store(store, [run.id], ts)
        assert [(i.task.id, i.first_wrong_step) for i in items] == [(held.id, None), (held.id, 2)]
        assert all(i.source == "policy" for i in items)
        assert len(labels_from_store(store, None, ts, limit=1)) == 1
        assert labels_from_store(store, ["other-run"], ts) == []
    finally:
        store.close()
