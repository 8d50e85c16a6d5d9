"""Self-correction evaluation: the metrics against hand-computed outcomes, and `strop eval-self-correct` on
the real tiny model (stored, recorded on the model version, resumed from the store) and with bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from strop.agents.self_correct_eval import score_episodes
from strop.cli import app


def test_metrics_from_outcomes() -> None:
    outcomes = [  # 5 conversations: 2 right at turn 1, 3 at the last turn; 2 fixed, 1 broken
        {"n": 2, "first_correct": 1, "last_correct": 2, "i2c": 1, "c2i": 0},
        {"n": 3, "first_correct": 1, "last_correct": 1, "i2c": 1, "c2i": 1},
    ]
    s = score_episodes(outcomes)
    assert s == pytest.approx(
        {"acc_t1": 0.4, "acc_last": 0.6, "delta_i2c": 0.4, "delta_c2i": 0.2, "net": 0.2}
    )
    assert s["net"] == pytest.approx(s["delta_i2c"] - s["delta_c2i"])
    assert score_episodes([])["acc_last"] == 0.0


@pytest.mark.slow
def test_eval_self_correct_records_each_feedback_kind(tiny_model_path: Path, tmp_path: Path) -> None:
    from strop.memory import Store

    db = str(tmp_path / "s.db")
    args = [
        "eval-self-correct",
        "--model",
        "tiny",
        "--feedback",
        "intrinsic,oracle,critic",
        "--n-tasks",
        "4",
        "--max-tokens",
        "12",
        "--db",
        db,
    ]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "wrong->right" in out.output and "arithmetic/heldout/self_correct/" in out.output
    metrics = Store(db).get_model("tiny").metrics
    for fb in ("intrinsic", "oracle", "critic"):
        assert metrics[f"arithmetic/heldout/self_correct/{fb}/n_tasks"] == 4
    again = CliRunner().invoke(app, args)  # every conversation is in the store: nothing is generated again
    assert again.exit_code == 0 and "self-correct eval" not in again.output  # no progress bar: nothing ran
    assert again.output.split("revising")[1] == out.output.split("revising")[1]


def test_eval_self_correct_names_bad_input(tiny_model_path: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    out = CliRunner().invoke(app, ["eval-self-correct", "-m", "tiny", "--feedback", "telepathy", "--db", db])
    assert out.exit_code != 0 and "unknown kind telepathy" in out.output
    out = CliRunner().invoke(
        app, ["eval-self-correct", "-m", "tiny", "--feedback", "execution", "--n-tasks", "1", "--db", db]
    )
    assert out.exit_code != 0 and "not a code task" in out.output
