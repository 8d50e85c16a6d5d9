"""Self-play (SPIRAL): zero-sum bookkeeping, RAE baselines kept in the store across runs, forfeits, fixed
opponents and held-out games, with a scripted player whose games are known move by move; then the real path,
the tiny model through the runner and a real store, including a SIGKILL mid-game and a rerun."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from strop.agents.loops import selfplay as sp
from strop.agents.loops.rae import MemoryBaselines
from strop.agents.loops.registry import LoopResources
from strop.agents.loops.selfplay_record import episode_of
from strop.agents.runner import Runner
from strop.memory import Store
from strop.memory.records import AdvantagePayload, EpisodeRecord, ExampleKind, RunRecord
from strop.sandbox.tasks import Split
from strop.sandbox.tasks.games import GameTaskSet
from tests.agents.loops.fakes import ScriptedEngine
from tests.worker_scripts import run_here

GAMES = GameTaskSet()
DRAW = [0, 1, 2, 4, 3, 5, 7, 6, 8]  # a TicTacToe game that fills the board without a line


def _empty(prompt: str) -> list[int]:
    return [int(c) for c in re.search(r"Empty cells: ([\d, ]+)", prompt).group(1).split(",")]  # type: ignore[union-attr]


def first_empty(prompt: str, i: int) -> str:
    """Seat 0 takes 0, 2, 4, 6 and wins on the diagonal at move 7."""
    return f"I take [{_empty(prompt)[0]}]"


def to_a_draw(prompt: str, i: int) -> str:
    return f"[{DRAW[9 - len(_empty(prompt))]}]"


async def _run(
    store: Store,
    answer: Callable[[str, int], str],
    cfg: sp.SelfPlayConfig,
    *,
    run_id: str = "sp",
    n: int = 2,
    split: Split = Split.TRAIN,
) -> list[EpisodeRecord]:
    graph = sp.SPEC.make(
        LoopResources(engines={"policy": ScriptedEngine(answer)}, task_set=GAMES, store=store), cfg
    )
    await Runner(store, concurrency=1, progress=False).run(
        graph, GAMES.tasks(split, n), RunRecord(id=run_id, loop="selfplay")
    )
    return store.list_episodes(run_id)


def test_plan_games_in_self_play_and_against_an_opponent() -> None:
    task = GAMES.tasks(Split.TRAIN, 1)[0]
    own = sp.plan_games(task, sp.SelfPlayConfig(games_per_task=3))
    assert [g["policy_seats"] for g in own] == [[0, 1]] * 3
    assert own[0]["record"]["seed"] == task.metadata["seed"] and len({g["record"]["seed"] for g in own}) == 3
    vs = sp.plan_games(task, sp.SelfPlayConfig(games_per_task=4, opponent="random"))
    assert [g["policy_seats"] for g in vs] == [[0], [1], [0], [1]]
    assert (
        vs[0]["record"]["seed"]
        == vs[1]["record"]["seed"]
        != vs[2]["record"]["seed"]
        == vs[3]["record"]["seed"]
    )
    with pytest.raises(ValueError, match="unknown opponent"):
        sp.build_graph(ScriptedEngine(first_empty), sp.SelfPlayConfig(opponent="stockfish"))
    with pytest.raises(ValueError, match="names no game"):
        sp.plan_games(task.model_copy(update={"metadata": {}}), sp.SelfPlayConfig())
    assert (
        sp.match_of(task.model_copy(update={"metadata": {}}), sp.SelfPlayConfig(game="kuhn_poker"))[0]
        == "kuhn_poker"
    )


async def test_zero_sum_bookkeeping_and_rae_advantages(store: Store) -> None:
    cfg = sp.SelfPlayConfig(games_per_task=2, seed=0, baseline_namespace="ttt")
    episodes = await _run(store, first_empty, cfg)
    b = {"0": 0.0, "1": 0.0}  # the baselines as the loop should have moved them, game by game
    for ep in episodes:
        assert ep.outcome["games"] == 2 and ep.outcome["seat_wins"] == [2, 0] and ep.outcome["n"] == 14
        assert ep.reward == 0.0  # the policy's mean return over the seats it played: both, so zero
        assert ep.outcome["correct"] == 14 and ep.outcome["illegal"] == ep.outcome["unparseable"] == 0
        by_game: dict[int, list] = {0: [], 1: []}
        for s in ep.steps:
            by_game[s.metadata["game_index"]].append(s)
        for g, steps in by_game.items():
            assert [s.metadata["seat"] for s in steps] == [0, 1, 0, 1, 0, 1, 0]
            returns = {s.metadata["seat"]: s.reward for s in steps}
            assert (
                returns == {0: 1.0, 1: -1.0} and sum(returns.values()) == 0
            )  # zero-sum, both seats credited
            assert ep.outcome["baselines"] == {**ep.outcome["baselines"], f"{g}/0": pytest.approx(b["0"])}
            for s in steps:
                seat = str(s.metadata["seat"])
                assert s.value == pytest.approx(b[seat]) and s.metadata["advantage"] == pytest.approx(
                    s.reward - b[seat]
                )
            for seat, ret in (("0", 1.0), ("1", -1.0)):
                b[seat] = 0.95 * b[seat] + 0.05 * ret
        assert len(ep.examples) == 14 and {e.kind for e in ep.examples} == {ExampleKind.GAME_TURN}
        steps = {(s.metadata["game_index"], s.metadata["turn"]): s for s in ep.steps}
        for e in ep.examples:
            p = AdvantagePayload.model_validate(e.payload)
            s = steps[(p.metadata["game_index"], p.metadata["turn"])]
            assert p.advantage == pytest.approx(s.metadata["advantage"]) and p.reward == s.reward
            assert p.completion_ids == s.token_ids and p.metadata["seat"] == s.metadata["seat"]
    stored = {x.role: x for x in store.list_baselines("ttt", "tictactoe")}
    assert stored["0"].count == stored["1"].count == 4
    assert stored["0"].value == pytest.approx(b["0"]) and stored["1"].value == pytest.approx(-b["0"])


async def test_baselines_continue_across_runs_and_a_reopened_store(db_url: str) -> None:
    cfg = sp.SelfPlayConfig(baseline_namespace="carry", seed=0)
    store = Store(db_url)
    await _run(store, first_empty, cfg, run_id="a", n=2)
    after = store.get_baseline("carry", "tictactoe", "0")
    store.close()
    again = Store(db_url)
    [first, _] = await _run(again, first_empty, cfg, run_id="b", n=2)
    assert after is not None and after.count == 2
    assert first.steps[0].value == pytest.approx(after.value)  # the new run starts where the old one stopped
    assert again.get_baseline("carry", "tictactoe", "0").count == 4  # type: ignore[union-attr]
    # Without a namespace each run keeps its own baselines (keyed by run id).
    await _run(again, first_empty, sp.SelfPlayConfig(seed=0), run_id="c", n=1)
    assert again.get_baseline("c", "tictactoe", "0").count == 1  # type: ignore[union-attr]
    again.close()


async def test_without_rae_the_advantage_is_the_return_and_zero_advantages_are_dropped(store: Store) -> None:
    [won] = await _run(store, first_empty, sp.SelfPlayConfig(rae=False), run_id="won", n=1)
    assert {e.payload["advantage"] for e in won.examples} == {1.0, -1.0} and store.list_baselines() == []
    [drawn] = await _run(store, to_a_draw, sp.SelfPlayConfig(rae=False), run_id="drawn", n=1)
    assert drawn.outcome["draws"] == 1 and len(drawn.steps) == 9 and drawn.examples == []
    [kept] = await _run(
        store, to_a_draw, sp.SelfPlayConfig(rae=False, skip_zero_advantage=False), run_id="kept", n=1
    )
    assert len(kept.examples) == 9 and {e.payload["advantage"] for e in kept.examples} == {0.0}


async def test_an_illegal_or_unparseable_move_loses_and_is_counted(store: Store) -> None:
    [ep] = await _run(store, lambda p, i: "[4]", sp.SelfPlayConfig(), run_id="illegal", n=1)
    last = ep.steps[-1]
    assert len(ep.steps) == 2 and last.metadata["outcome"] == "illegal" and "taken" in last.metadata["reason"]
    assert (ep.steps[0].reward, last.reward) == (1.0, -1.0) and ep.outcome["illegal"] == 1
    assert ep.outcome["correct"] == 1 and ep.outcome["pass"] is False
    [ep] = await _run(store, lambda p, i: "no idea", sp.SelfPlayConfig(), run_id="unparseable", n=1)
    assert len(ep.steps) == 1 and ep.outcome["unparseable"] == 1 and ep.steps[0].reward == -1.0
    assert ep.outcome["results"][0]["forfeited_by"] == 0 and ep.outcome["seat_wins"] == [0, 1]


async def test_against_a_fixed_opponent_only_the_policy_seat_is_played_and_trained(store: Store) -> None:
    cfg = sp.SelfPlayConfig(opponent="heuristic", games_per_task=2, seed=0, baseline_namespace="vs")
    [ep] = await _run(store, first_empty, cfg, run_id="vs", n=1)
    for s in ep.steps:
        policy = s.metadata["seat"] == s.metadata["game_index"]  # game 0: policy in seat 0; game 1: seat 1
        assert (s.role == "assistant") == policy and (s.token_ids is not None) == policy
        assert s.metadata["player"] == ("policy" if policy else "heuristic")
    assert len(ep.examples) == sum(s.role == "assistant" for s in ep.steps)
    assert ep.outcome["by_seat"]["0"]["games"] == ep.outcome["by_seat"]["1"]["games"] == 1
    assert ep.reward == ep.outcome["by_seat"]["0"]["wins"] + ep.outcome["by_seat"]["1"]["wins"] - 1
    assert {b.count for b in store.list_baselines("vs")} == {1}
    # The heuristic is seeded by position: the same episode again plays the same games.
    [twin] = await _run(store, first_empty, cfg, run_id="vs2", n=1)
    assert [s.text for s in twin.steps] == [s.text for s in ep.steps]


async def test_heldout_games_neither_update_baselines_nor_emit(store: Store) -> None:
    [ep] = await _run(
        store, first_empty, sp.SelfPlayConfig(baseline_namespace="h"), run_id="h", n=1, split=Split.HELDOUT
    )
    assert ep.examples == [] and store.list_baselines("h") == [] and ep.steps[0].value is None


async def test_a_record_node_run_twice_replays_its_baseline_updates() -> None:
    """A kill after the baselines moved but before the checkpoint: the rerun must not move them again."""
    graph = sp.build_graph(ScriptedEngine(first_empty), sp.SelfPlayConfig(games_per_task=2)).compile()
    task = GAMES.tasks(Split.TRAIN, 1)[0]
    state = await graph.ainvoke({"task": task.model_dump(mode="json"), "run_id": "r", "episode_id": "e"})
    table = MemoryBaselines()
    cfg = sp.SelfPlayConfig(games_per_task=2)
    first = await episode_of(state, cfg, table, loop="selfplay")
    again = await episode_of(state, cfg, table, loop="selfplay")
    assert [s.metadata["advantage"] for s in again.steps] == [s.metadata["advantage"] for s in first.steps]
    assert {k: v[1] for k, v in table.values.items()} == {
        ("r", "tictactoe", "0"): 2,
        ("r", "tictactoe", "1"): 2,
    }


# ------------------------------------------------------------------------------------ the tiny model, for real
@pytest.mark.parametrize("opponent", [None, "random"])
async def test_the_tiny_model_plays_through_the_runner_into_the_store(
    db_url: str, tiny_model_path: Path, opponent: str | None
) -> None:
    from strop.agents.engines import load_engine

    store = Store(db_url)
    engine = load_engine("tiny")
    cfg = sp.SelfPlayConfig(
        games_per_task=2, max_tokens=8, seed=0, opponent=opponent, skip_zero_advantage=False
    )
    try:
        graph = sp.SPEC.make(LoopResources(engines={"policy": engine}, task_set=GAMES, store=store), cfg)
        res = await Runner(store, concurrency=4, progress=False).run(
            graph, GAMES.tasks(Split.TRAIN, 3), RunRecord(id="tiny", loop="selfplay")
        )
    finally:
        await engine.close()
    episodes = store.list_episodes("tiny")
    assert res.episodes == 3 and res.samples == sum(ep.outcome["n"] for ep in episodes) > 0
    for ep in episodes:
        policy = [s for s in ep.steps if s.role == "assistant"]
        assert len(ep.examples) == len(policy) == ep.outcome["n"]
        for s in policy:
            assert s.prompt_token_ids and s.token_ids and len(s.logprobs or []) == len(s.token_ids)
            assert s.model_version == engine.model_version
        by_id = {(s.metadata["game_index"], s.metadata["turn"]): s for s in policy}
        for e in ep.examples:
            p = AdvantagePayload.model_validate(e.payload)
            s = by_id[(p.metadata["game_index"], p.metadata["turn"])]
            assert (p.prompt_ids, p.completion_ids, p.logprobs) == (
                s.prompt_token_ids,
                s.token_ids,
                s.logprobs,
            )
        for r in ep.outcome["results"]:
            assert sum(r["rewards"]) == 0
    assert sum(b.count for b in store.list_baselines("tiny")) == sum(
        len(r["policy_seats"]) for ep in episodes for r in ep.outcome["results"]
    )
    store.close()


WORKER = '''
import asyncio, json, os, signal, sys
from strop.agents.engines import load_engine
from strop.agents.loops import selfplay as sp
from strop.agents.runner import Runner
from strop.memory import Store
from strop.memory.records import RunRecord
from strop.sandbox.tasks import Split
from strop.sandbox.tasks.games import GameTaskSet

class Counting:
    """The tiny engine; counts requests, and dies at the start of the second generate call when told to."""
    def __init__(self, engine, die):
        self.engine, self.die, self.calls, self.requests = engine, die, 0, 0
    @property
    def model_version(self):
        return self.engine.model_version
    async def generate(self, requests):
        self.calls += 1
        if self.die and self.calls == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        self.requests += len(requests)
        return await self.engine.generate(requests)
    async def close(self):
        await self.engine.close()

async def main(db, mode):
    store = Store(db)
    if mode == "die-after-rae":  # the baselines moved and committed, the record node's checkpoint not yet written
        update = store.aupdate_baselines
        async def update_then_die(updates):
            out = await update(updates)
            os.kill(os.getpid(), signal.SIGKILL)
            return out
        store.aupdate_baselines = update_then_die
    ts = GameTaskSet()
    engine = Counting(load_engine("tiny"), mode == "die-mid-game")
    cfg = sp.SelfPlayConfig(opponent="random", games_per_task=2, max_tokens=8, seed=0, baseline_namespace="kill")
    graph = sp.build_graph(engine, cfg, baselines=store)
    run = RunRecord(id="sp-kill", loop=sp.LOOP_NAME)
    await Runner(store, concurrency=1, progress=False).run(graph, ts.tasks(Split.TRAIN, 3), run)
    print(json.dumps({"requests": engine.requests}))
    await engine.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
'''


def _played(db_url: str) -> tuple[list, list]:
    store = Store(db_url)
    episodes = sorted(store.list_episodes("sp-kill"), key=lambda e: e.task_id)
    games = [
        [(s.text, s.token_ids, s.reward, s.value, s.metadata["advantage"]) for s in ep.steps]
        for ep in episodes
    ]
    baselines = [(b.role, round(b.value, 9), b.count) for b in store.list_baselines("kill")]
    store.close()
    return games, baselines


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigkill_mid_game_or_after_the_baseline_update_then_rerun_plays_the_same_games(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}

    def worker(db: str, mode: str) -> subprocess.CompletedProcess[str]:
        if not mode.startswith("die"):  # only the dying runs need a process of their own
            return run_here(script, db, mode)
        return subprocess.run(
            [sys.executable, str(script), db, mode], capture_output=True, text=True, env=env, timeout=180
        )

    reference = f"sqlite:///{tmp_path / 'reference.db'}"
    done = worker(reference, "run")
    assert done.returncode == 0, done.stderr
    expected = _played(reference)
    requests = json.loads(done.stdout.strip().splitlines()[-1])["requests"]
    assert len(expected[0]) == 3 and expected[1] and requests >= 4

    for mode in ("die-mid-game", "die-after-rae"):
        db = f"sqlite:///{tmp_path / f'{mode}.db'}"
        killed = worker(db, mode)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert _played(db)[0] == []  # nothing half-written
        rerun = worker(db, "run")
        assert rerun.returncode == 0, rerun.stderr
        # Same games, same advantages, and the baselines moved exactly once per (game, seat).
        assert _played(db) == expected, mode
        if mode == "die-mid-game":  # the first move was checkpointed: the rerun does not ask for it again
            assert json.loads(rerun.stdout.strip().splitlines()[-1])["requests"] == requests - 1
