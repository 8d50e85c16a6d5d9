"""Game evaluation: win/draw/loss per seat against fixed opponents (stored, resumable, recorded on the model
version), the Elo fit over pairwise series, model players, and `strop eval-game` on the tiny model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from strop.agents.game_eval import EngineOpponent, GameEvalConfig, elo_ratings, evaluate_games, play_match
from strop.memory import Store
from strop.memory.records import ModelStatus, ModelVersionRecord
from strop.sandbox.games import RandomOpponent, SeriesResult, play_series
from strop.sandbox.tasks.games import GameTaskSet
from tests.agents.loops.fakes import ScriptedEngine
from tests.agents.loops.test_selfplay import first_empty


def _series(wins: int, draws: int, losses: int) -> SeriesResult:
    return SeriesResult(games=wins + draws + losses, wins=wins, draws=draws, losses=losses)


def test_elo_fits_the_expected_score() -> None:
    # 75% against b is 400*log10(3) ~ 191 points, whoever is listed first, draws counting half.
    r = elo_ratings({("a", "b"): _series(700, 100, 200)}, anchor="b", prior_games=0.0)
    assert r["b"] == 1000.0 and r["a"] - r["b"] == pytest.approx(400 * math.log10(3), abs=0.1)
    r = elo_ratings({("b", "a"): _series(200, 100, 700)}, anchor="b", prior_games=0.0)
    assert r["a"] - r["b"] == pytest.approx(400 * math.log10(3), abs=0.1)
    # Transitive: a over b and b over c by 75% each puts a about twice as far above c.
    r = elo_ratings(
        {("a", "b"): _series(75, 0, 25), ("b", "c"): _series(75, 0, 25)},
        anchor=None,
        anchor_rating=1500.0,
        prior_games=0.0,
    )
    assert r["a"] - r["c"] == pytest.approx(2 * 400 * math.log10(3), abs=0.5)
    assert sum(r.values()) / 3 == pytest.approx(1500.0)
    # A perfect record stays finite thanks to the prior; more games widen the gap.
    few = elo_ratings({("a", "random"): _series(10, 0, 0)})
    many = elo_ratings({("a", "random"): _series(100, 0, 0)})
    assert 1000 < few["a"] < many["a"] < 3000 and few["random"] == 1000.0


async def test_evaluation_counts_each_seat_records_metrics_and_resumes(store: Store) -> None:
    store.register_model(
        ModelVersionRecord(id="m", name="m", lineage="m", path="/m", status=ModelStatus.BASE)
    )
    engine = ScriptedEngine(first_empty)
    cfg = GameEvalConfig(n_tasks=6)
    res = await evaluate_games(engine, GameTaskSet(), store=store, model_id="m", config=cfg)
    assert res.label == "tictactoe" and res.n_tasks == 6 and res.episodes_run == 12
    for opp in ("random", "heuristic"):
        for seat in ("0", "1"):
            row = res.counts["tictactoe"][opp][seat]
            assert row["games"] == 6 and row["wins"] + row["draws"] + row["losses"] == 6
    # Heuristic blocks and wins against a player that always takes the first empty cell, from either seat.
    assert res.counts["tictactoe"]["heuristic"]["0"]["losses"] == 6
    metrics = store.get_model("m").metrics  # type: ignore[union-attr]
    assert metrics["tictactoe/vs_heuristic/win_rate"] == 0.0 and metrics["tictactoe/n_tasks"] == 6
    assert metrics["tictactoe/illegal_rate"] == 0.0
    seats = [metrics[f"tictactoe/vs_random/seat{s}/win_rate"] for s in (0, 1)]
    assert metrics["tictactoe/vs_random/win_rate"] == pytest.approx(sum(seats) / 2)
    series = res.series("random")
    assert series.games == 12 and series.wins == round(12 * metrics["tictactoe/vs_random/win_rate"])
    calls = len(engine.calls)
    again = await evaluate_games(engine, GameTaskSet(), store=store, model_id="m", config=cfg)
    assert again.episodes_run == 0 and len(engine.calls) == calls and again.metrics() == res.metrics()


async def test_illegal_moves_are_counted_against_the_policy(store: Store) -> None:
    store.register_model(
        ModelVersionRecord(id="bad", name="bad", lineage="bad", path="/b", status=ModelStatus.BASE)
    )
    res = await evaluate_games(
        ScriptedEngine(lambda p, i: "pass"),
        GameTaskSet(),
        store=store,
        model_id="bad",
        config=GameEvalConfig(n_tasks=2, opponents=["random"]),
    )
    sc = res.scores()
    assert sc["illegal_rate"] == 1.0 and sc["vs_random/loss_rate"] == 1.0
    assert res.series("random").forfeits == 4


async def test_play_match_batches_a_series_and_agrees_with_play_series() -> None:
    a, b = (
        EngineOpponent(ScriptedEngine(first_empty), "first"),
        EngineOpponent(ScriptedEngine(lambda p, i: f"[{_last_empty(p)}]"), "last"),
    )
    together = await play_match("tictactoe", a, b, 6, seed=3)
    one_by_one = await play_series("tictactoe", a, b, 6, seed=3)
    assert together == one_by_one and together.games == 6
    vs_random = await play_match("tictactoe", a, RandomOpponent(1), 4)
    assert vs_random.games == 4 and vs_random.forfeits == 0


def _last_empty(prompt: str) -> int:
    import re

    return int(re.search(r"Empty cells: ([\d, ]+)", prompt).group(1).split(",")[-1])  # type: ignore[union-attr]


def test_eval_game_cli_on_the_tiny_model(tmp_path: Path, tiny_model_path: Path) -> None:
    from strop.cli import app

    db = tmp_path / "g.db"
    result = CliRunner().invoke(
        app,
        [
            "eval-game",
            "-m",
            "tiny",
            "--n-tasks",
            "2",
            "--elo-games",
            "4",
            "--max-tokens",
            "8",
            "--db",
            str(db),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "seat 0 W/D/L" in result.output and "Elo at tictactoe" in result.output
    assert "illegal or unparseable moves" in result.output
    store = Store(str(db))
    metrics = store.get_model("tiny").metrics  # type: ignore[union-attr]
    assert {
        "tictactoe/vs_random/win_rate",
        "tictactoe/vs_heuristic/seat1/loss_rate",
        "tictactoe/illegal_rate",
    } <= set(metrics)
    assert 0 < metrics["tictactoe/elo"] < 3000  # recorded for `strop report`
    store.close()
    bad = CliRunner().invoke(
        app, ["eval-game", "-m", "tiny", "-g", "kuhn_poker", "-o", "rounds=0", "--db", str(db)]
    )
    assert bad.exit_code == 1 and "rounds" in bad.output
