"""`strop eval-critic` on a ProcessBench file with one solution too long for the tiny model's context: the
item is skipped with its reason, the rest are scored, tokens are counted (the progress line's tok/s); a file of
only such items stops with one line. `--n-items` samples a file, seeded and stratified, instead of taking its
first items (ProcessBench's GSM8K split lists every erroneous solution first)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from strop.cli import app
from strop.critics.benchmark import LabelledSetError, load_processbench, sample_labelled

LONG = [
    f"Step {i}: we add {i} and {i} to get {2 * i}, carefully checking each digit of the sum."
    for i in range(300)
]


def _item(i: int, erroneous: bool) -> dict[str, object]:
    return {
        "id": f"x-{i}",
        "generator": "test",
        "problem": "What is 2 + 2?",
        "steps": ["2 + 2 = 5."] if erroneous else ["2 + 2 = 4."],
        "final_answer_correct": not erroneous,
        "label": 0 if erroneous else -1,
    }


def _bench(path: Path, *, with_long: bool = True) -> Path:
    """The faults bar's file: six short items, erroneous and correct in turn, and one far too long."""
    items = [_item(i, erroneous=i % 2 == 0) for i in range(6)]
    long = {"id": "too-long", "generator": "test", "problem": "What is 2 + 2?", "steps": LONG, "label": -1}
    path.write_text(json.dumps([*items[:2], long, *items[2:]] if with_long else [long]))
    return path


def test_an_over_long_item_is_skipped_with_its_reason_and_the_rest_are_scored(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    from strop.agents.runner import run_summary
    from strop.memory import Store

    db = str(tmp_path / "s.db")
    args = ["eval-critic", "--critic", "tiny", "--max-tokens", "16", "--db", db, "--tasks"]
    out = CliRunner().invoke(app, [*args, str(_bench(tmp_path / "pb.json"))], env={"COLUMNS": "300"})
    assert out.exit_code == 0, out.output
    assert "traceback" not in out.output.lower()
    assert "6 of 7 labelled solutions scored: 3 erroneous, 3 correct" in out.output
    assert "skipped: 1, too long for the context (not scored)" in out.output
    assert "context window of 1024 tokens" in out.output  # the reason, as the engine gave it
    store = Store(db)
    metrics = store.get_model("tiny").metrics
    assert metrics["processbench:pb/critic/n_tasks"] == 7 and metrics["processbench:pb/critic/n_scored"] == 6
    assert (
        metrics["processbench:pb/critic/skipped"] == 1 and metrics["processbench:pb/critic/n_erroneous"] == 3
    )
    [run] = [r for r in store.list_runs() if r.loop == "critic_eval"]
    # The progress line's tok/s is tokens over time: every scored critique counts what it sampled.
    summary = asyncio.run(run_summary(store, run.id))
    assert summary.tokens > 0 and summary.failed == 1
    assert all(ep.outcome["tokens"] > 0 for ep in store.list_episodes(run.id) if ep.status == "finished")

    only_long = _bench(tmp_path / "long.json", with_long=False)
    out = CliRunner().invoke(app, [*args, str(only_long)], env={"COLUMNS": "300"})
    assert out.exit_code == 1, out.output
    lines = [line for line in out.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "every episode" in lines[0] and "too long for the context" in lines[0]
    assert isinstance(out.exception, SystemExit)  # exited on purpose: no exception escaped the command


def _published_order(tmp_path: Path) -> list:  # type: ignore[type-arg]
    """ProcessBench's GSM8K split as published: its 207 erroneous solutions first, then 193 correct ones."""
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("\n".join(json.dumps(_item(i, erroneous=i < 207)) for i in range(400)))
    return load_processbench(path)


def test_n_items_draws_a_seeded_sample_that_keeps_the_mix(tmp_path: Path) -> None:
    items = _published_order(tmp_path)
    assert not any(not i.erroneous for i in items[:100])  # what truncation used to score: no correct solution
    for n in (2, 10, 100, 207):
        sample = sample_labelled(items, n, seed=0)
        wrong = sum(i.erroneous for i in sample)
        assert len(sample) == n and len({i.id for i in sample}) == n
        assert abs(wrong - n * 207 / 400) <= 1 and 0 < wrong < n  # the file's mix, both classes present
        assert [items.index(i) for i in sample] == sorted(items.index(i) for i in sample)  # file order
    assert sample_labelled(items, 10, seed=0) == sample_labelled(items, 10, seed=0)
    assert sample_labelled(items, 10, seed=0) != sample_labelled(items, 10, seed=1)
    assert sample_labelled(items, 400, seed=3) == items == sample_labelled(items, 900, seed=3)
    lopsided = items[:99] + items[-1:]  # 99 erroneous, 1 correct: the rare class still gets one
    assert sum(not i.erroneous for i in sample_labelled(lopsided, 5, seed=0)) == 1
    with pytest.raises(LabelledSetError):
        sample_labelled(items, 0)


def test_n_items_on_a_file_scores_both_classes(tiny_model_path: Path, tmp_path: Path) -> None:
    from strop.memory import Store

    path = tmp_path / "gsm8k.jsonl"
    path.write_text("\n".join(json.dumps(_item(i, erroneous=i < 207)) for i in range(400)))
    db = str(tmp_path / "s.db")
    out = CliRunner().invoke(
        app,
        [
            "eval-critic",
            "--critic",
            "tiny",
            "--tasks",
            str(path),
            "--n-items",
            "4",
            "--max-tokens",
            "16",
            "--shots",
            "0",
            "--db",
            db,
        ],
        env={"COLUMNS": "300"},
    )
    assert out.exit_code == 0, out.output
    assert "4 labelled solutions scored: 2 erroneous, 2 correct" in out.output
    metrics = Store(db).get_model("tiny").metrics
    assert metrics["processbench:gsm8k/critic/n_correct"] == 2 and "processbench:gsm8k/critic/f1" in metrics
