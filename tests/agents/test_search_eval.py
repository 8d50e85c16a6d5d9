"""Search against sampling at equal budgets: the pickers on hand-made episodes, and `strop eval-search` on the
tiny model (every method at every budget, recorded on the model version, a plot written)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from strop.agents.search_eval import METHODS, majority_pick
from strop.cli import app
from strop.memory.records import CritiqueRecord, EpisodeRecord, StepRecord


def _episode(answers: list[tuple[str | None, bool]]) -> EpisodeRecord:
    steps = [
        StepRecord(id=f"s{i}", index=i, text=f"#### {a}", metadata={"extracted": a})
        for i, (a, _) in enumerate(answers)
    ]
    # stored critiques come back in id order, not sample order
    crits = [
        CritiqueRecord(
            id=f"c{9 - i}",
            step_id=f"s{i}",
            critic_version="verifier",
            verdict="correct" if ok else "incorrect",
        )
        for i, (_, ok) in enumerate(answers)
    ]
    return EpisodeRecord(
        id="e",
        run_id="r",
        task_id="t",
        loop="best_of_n",
        steps=steps,
        critiques=sorted(crits, key=lambda c: c.id),
    )


def test_majority_vote_picks_the_most_common_answer() -> None:
    assert majority_pick(_episode([("5", True), ("6", False), ("6", False)])) is False
    assert majority_pick(_episode([("6", False), ("5", True), ("5", True), (None, False)])) is True
    assert majority_pick(_episode([(None, False)])) is False


def test_eval_search_compares_every_method_at_every_budget(tiny_model_path: Path, tmp_path: Path) -> None:
    from strop.memory import Store

    db = str(tmp_path / "s.db")
    png = tmp_path / "search.png"
    out = CliRunner().invoke(
        app,
        [
            "eval-search",
            "--model",
            "tiny",
            "--budgets",
            "64,128",
            "--n-tasks",
            "3",
            "--max-tokens",
            "24",
            "--plot",
            str(png),
            "--db",
            db,
        ],
    )
    assert out.exit_code == 0, out.output
    assert all(m in out.output for m in METHODS) and png.stat().st_size > 0
    metrics = Store(db).get_model("tiny").metrics
    assert {f"arithmetic/heldout/search/{m}@{b}" for m in METHODS for b in (64, 128)} <= set(metrics)
    bad = CliRunner().invoke(app, ["eval-search", "--model", "tiny", "--budgets", "lots", "--db", db])
    assert bad.exit_code != 0 and "--budgets lots" in bad.output
