"""A game whose engine raises on an accepted move is void (sandbox/games): no draw, no lesson. Self-play keeps
its moves as steps but trains on none of them and moves no baseline; game demonstrations record the game instead
of stopping at a teacher move the engine broke; the game evaluator counts it for neither player."""

from __future__ import annotations

import pytest

from strop.agents.game_eval import GameEvalResult, count_episodes
from strop.agents.loops import game_demos as gd
from strop.agents.loops import selfplay as sp
from strop.agents.loops.registry import LoopResources
from strop.agents.runner import Runner
from strop.memory import Store
from strop.memory.records import RunRecord
from strop.sandbox.games import make_game
from strop.sandbox.tasks import Split
from strop.sandbox.tasks.games import GameTaskSet
from tests.agents.loops.fakes import ScriptedEngine

GAMES = GameTaskSet()


def _break_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """TicTacToe's engine raises on every move (a bug of the game, not of either player)."""

    def broken(self: object, action: str) -> object:
        raise KeyError("engine bug")

    monkeypatch.setattr(type(make_game("tictactoe", seed=0)._env), "step", broken)


async def test_selfplay_trains_on_no_move_of_a_void_game_and_counts_it_apart(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _break_the_engine(monkeypatch)
    cfg = sp.SelfPlayConfig(games_per_task=2, seed=0, baseline_namespace="void")
    graph = sp.SPEC.make(
        LoopResources(engines={"policy": ScriptedEngine(lambda p, i: "[4]")}, task_set=GAMES, store=store),
        cfg,
    )
    await Runner(store, progress=False).run(
        graph, GAMES.tasks(Split.TRAIN, 1), RunRecord(id="v", loop="selfplay")
    )
    [ep] = store.list_episodes("v")
    o = ep.outcome
    assert (o["void"], o["draws"], o["seat_wins"]) == (2, 0, [0, 0]) and all(r["void"] for r in o["results"])
    assert ep.examples == [] and ep.reward == 0.0 and len(ep.steps) == 2  # the moves kept, none trained on
    assert store.list_baselines("void", "tictactoe") == []  # a broken game moves no baseline
    assert o["by_seat"]["0"] == {"games": 0, "wins": 0, "draws": 0, "losses": 0, "void": 2}

    result = GameEvalResult(model_id="m", label="tictactoe", n_tasks=1)
    count_episodes(result, "self", [o])
    assert result.counts == {}  # neither a draw nor anyone's result


async def test_game_demos_records_a_game_the_engine_broke_on_the_teachers_move(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _break_the_engine(monkeypatch)
    graph = gd.SPEC.make(LoopResources(engines={}, task_set=GAMES, store=store), gd.GameDemosConfig(seed=0))
    await Runner(store, progress=False).run(
        graph, GAMES.tasks(Split.TRAIN, 1), RunRecord(id="d", loop=gd.LOOP_NAME)
    )
    [ep] = store.list_episodes("d")
    o = ep.outcome
    assert ep.status == "finished" and o["void"] == 2 and (o["wins"], o["draws"], o["losses"]) == (0, 0, 0)
    assert any(s.role == "teacher" and s.metadata["outcome"] == "engine_error" for s in ep.steps)
    assert ep.examples == [] and o["examples"] == 0 and o["teacher_return"] == 0.0
