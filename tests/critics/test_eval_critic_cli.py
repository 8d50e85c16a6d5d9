"""`strop eval-critic` on the real tiny model: a built labelled set, a ProcessBench-format file, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from strop.cli import app


@pytest.mark.slow
def test_eval_critic_on_a_built_set_and_on_a_processbench_file(tiny_model_path: Path, tmp_path: Path) -> None:
    from strop.memory import Store

    db = str(tmp_path / "s.db")
    runner = CliRunner()
    out = runner.invoke(
        app,
        [
            "eval-critic",
            "--critic",
            "tiny",
            "-o",
            "steps=2",
            "--n-items",
            "6",
            "--max-tokens",
            "16",
            "--shots",
            "0",
            "--db",
            db,
        ],
    )
    assert out.exit_code == 0, out.output
    assert "F1" in out.output and "arithmetic[steps=2]/critic/" in out.output
    metrics = Store(db).get_model("tiny").metrics
    assert metrics["arithmetic[steps=2]/critic/n_tasks"] == 6
    assert metrics["arithmetic[steps=2]/critic/unparsed"] <= 6

    bench = tmp_path / "gsm8k_pb.json"
    bench.write_text(
        json.dumps(
            [
                {
                    "id": "gsm8k-0",
                    "generator": "x",
                    "problem": "Ann has 2 apples and buys 3. How many?",
                    "steps": ["2 + 3 = 6", "So she has 6."],
                    "final_answer_correct": False,
                    "label": 0,
                },
                {
                    "id": "gsm8k-1",
                    "generator": "x",
                    "problem": "Bo has 4 pens and loses 1. How many?",
                    "steps": ["4 - 1 = 3", "So he has 3."],
                    "final_answer_correct": True,
                    "label": -1,
                },
            ]
        )
    )
    out = runner.invoke(
        app,
        [
            "eval-critic",
            "--critic",
            "tiny",
            "--tasks",
            str(bench),
            "--max-tokens",
            "16",
            "--shots",
            "0",
            "--db",
            db,
        ],
    )
    assert out.exit_code == 0, out.output
    metrics = Store(db).get_model("tiny").metrics
    assert metrics["processbench:gsm8k_pb/critic/n_tasks"] == 2
    assert "processbench:gsm8k_pb/critic/correction_acc" not in metrics  # ProcessBench items carry no answer


def test_eval_critic_names_what_is_wrong(tmp_path: Path, tiny_model_path: Path) -> None:
    runner = CliRunner()
    db = str(tmp_path / "s.db")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": 1, "problem": "p", "steps": "not a list", "label": 0}]))
    out = runner.invoke(app, ["eval-critic", "--critic", "tiny", "--tasks", str(bad), "--db", db])
    assert out.exit_code != 0 and "steps" in out.output
    out = runner.invoke(
        app, ["eval-critic", "--critic", "tiny", "--tasks", str(tmp_path / "none.json"), "--db", db]
    )
    assert out.exit_code != 0 and "no such file" in out.output
    out = runner.invoke(app, ["eval-critic", "--critic", "tiny", "--kinds", "typo", "--db", db])
    assert out.exit_code != 0 and "corruption kinds" in out.output
    out = runner.invoke(app, ["eval-critic", "--critic", "no-such-model", "--db", db])
    assert out.exit_code != 0 and "no-such-model" in out.output


@pytest.mark.slow
def test_eval_critic_as_a_prm_scores_every_step(tiny_model_path: Path, tmp_path: Path) -> None:
    """--prm runs the real step scorer on the tiny model: one Yes/No per step prefix, stored per item."""
    from strop.memory import Store

    db = str(tmp_path / "s.db")
    out = CliRunner().invoke(
        app, ["eval-critic", "--critic", "tiny", "-o", "steps=2", "--n-items", "6", "--prm", "--db", db]
    )
    assert out.exit_code == 0, out.output
    assert "process reward model" in out.output and "arithmetic[steps=2]/prm/" in out.output
    store = Store(db)
    metrics = store.get_model("tiny").metrics
    prefix = "arithmetic[steps=2]/prm"
    assert metrics[f"{prefix}/n_tasks"] == 6 and 0.0 <= metrics[f"{prefix}/step_acc"] <= 1.0
    assert metrics[f"{prefix}/n_steps"] >= 6  # each item has at least one labelled step
    assert "AUC" in out.output  # the ranking column (headers wrap in a narrow terminal)
    assert not any(k.startswith("arithmetic[steps=2]/critic/") for k in metrics)  # a PRM's scores stay apart
    [run] = [r for r in store.list_runs() if r.loop == "critic_eval"]
    episodes = store.list_episodes(run.id)
    parsed = [e for e in episodes if e.outcome["verdict"] != "unparsed"]
    for e in parsed:  # one label per step of the judged solution
        assert len(e.outcome["step_labels"]) == e.critiques[0].text.count("P(correct)")
    out = CliRunner().invoke(
        app, ["eval-critic", "--critic", "tiny", "--prm", "--threshold", "1.5", "--db", db]
    )
    assert out.exit_code != 0 and "--threshold" in out.output
