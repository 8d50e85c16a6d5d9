"""Imitation warm start (`game_demos`): a fixed teacher's moves become SFT examples prompted exactly as the
selfplay loop prompts the policy. Control flow through the runner and a real store (SQLite and PostgreSQL):
the prompts are the selfplay loop's own requests in the same games, completions parse as legal moves, the
teacher's seat alternates, outcomes add up, seeded runs repeat and a crashed run resumes mid-game. Then the real
path: the examples feed a real SFT job on the tiny model unchanged. Bad configs name the choices; the shipped
warm-start recipe loads, and its self-play stage is the cold-start recipe's."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from strop.agents.engines.base import Completion, FinishReason, GenerationRequest, as_requests
from strop.agents.loops import game_demos as gd
from strop.agents.loops import selfplay as sp
from strop.agents.loops.registry import LoopResources, get_loop
from strop.agents.runner import RunFailedError, Runner
from strop.memory import Store
from strop.memory.records import (
    EpisodeRecord,
    ExampleKind,
    ExampleRecord,
    ModelStatus,
    ModelVersionRecord,
    RunRecord,
)
from strop.sandbox.games import get_adapter, make_game
from strop.sandbox.tasks import Split
from strop.sandbox.tasks.games import GameTaskSet
from strop.training.recipe import RecipeError, load_recipe

REPO = Path(__file__).resolve().parents[3]
GAMES = GameTaskSet()


async def _run(
    store: Store,
    cfg: gd.GameDemosConfig,
    *,
    run_id: str = "demos",
    n: int = 2,
    split: Split = Split.TRAIN,
    tasks: GameTaskSet = GAMES,
) -> list[EpisodeRecord]:
    graph = gd.SPEC.make(LoopResources(engines={}, task_set=tasks, store=store), cfg)
    await Runner(store, concurrency=2, progress=False).run(
        graph, tasks.tasks(split, n), RunRecord(id=run_id, loop=gd.LOOP_NAME)
    )
    return store.list_episodes(run_id)


def _examples_by_move(ep: EpisodeRecord) -> dict[tuple[int, int], ExampleRecord]:
    """(game index, turn) -> the example of that teacher move (example ids are stable_id(eid, 'sft', i, turn))."""
    from strop.agents.loops.base import stable_id

    by_id = {e.id: e for e in ep.examples}
    return {
        (s.metadata["game_index"], s.metadata["turn"]): by_id[
            stable_id(ep.id, "sft", s.metadata["game_index"], s.metadata["turn"])
        ]
        for s in ep.steps
        if s.role == "teacher"
    }


def _walk(ep: EpisodeRecord) -> None:
    """Replays every game of `ep` from its seed, checking each teacher example against the position it was in."""
    examples = _examples_by_move(ep)
    for i, res in enumerate(ep.outcome["results"]):
        game = make_game("tictactoe", res["seed"])
        adapter = get_adapter("tictactoe")
        for s in (s for s in ep.steps if s.metadata["game_index"] == i):
            view = game.view()
            assert (view.seat, view.turn) == (s.metadata["seat"], s.metadata["turn"])
            if s.role == "teacher":
                e = examples[(i, s.metadata["turn"])]
                assert e.kind == ExampleKind.SFT and e.payload["prompt"] == view.messages
                [completion] = e.payload["completion"]
                assert completion == {"role": "assistant", "content": s.text}
                assert adapter.parse(completion["content"]) in view.legal_moves  # a legal move, as parsed
            assert game.submit(s.text).outcome == "legal"
        assert game.result is not None and list(game.result.rewards) == res["rewards"]


# ------------------------------------------------------------------------------------------------ control flow
async def test_examples_are_the_teachers_legal_moves_in_alternating_seats(store: Store) -> None:
    cfg = gd.GameDemosConfig(games_per_task=4, seed=0)
    episodes = await _run(store, cfg, n=3)
    assert len(episodes) == 3
    for ep in episodes:
        _walk(ep)
        o = ep.outcome
        assert [r["teacher_seats"] for r in o["results"]] == [
            [0],
            [1],
            [0],
            [1],
        ]  # alternating, in seed pairs
        assert o["results"][0]["seed"] == o["results"][1]["seed"] != o["results"][2]["seed"]
        teacher = [s for s in ep.steps if s.role == "teacher"]
        assert all(s.metadata["seat"] == s.metadata["game_index"] % 2 for s in teacher)
        assert all(s.model_version == "teacher:heuristic" and s.token_ids is None for s in teacher)
        assert all(
            s.metadata["player"] == "random" and s.model_version is None
            for s in ep.steps
            if s.role == "opponent"
        )
        assert o["n"] == o["correct"] == o["examples"] == len(teacher) == len(ep.examples) > 0 and o["pass"]
        assert o["wins"] + o["draws"] + o["losses"] == o["games"] == 4
        assert {
            k: sum(r[k] for r in o["by_seat"].values()) for k in ("wins", "draws", "losses", "games")
        } == {"wins": o["wins"], "draws": o["draws"], "losses": o["losses"], "games": 4}
        returns = [r["rewards"][r["teacher_seats"][0]] for r in o["results"]]
        assert ep.reward == pytest.approx(sum(returns) / 4) == o["teacher_return"]
        assert o["wins"] == sum(x == 1.0 for x in returns) and o["losses"] == sum(x == -1.0 for x in returns)
        for s in ep.steps:  # every move credited with its own seat's final return; zero-sum games
            r = o["results"][s.metadata["game_index"]]
            assert s.reward == r["rewards"][s.metadata["seat"]] and sum(r["rewards"]) == 0
    # The heuristic beats a random mover (186-14-0 over 200 games in docs/games.md): it should win most here.
    assert sum(ep.outcome["wins"] for ep in episodes) >= 8


class _Capturing:
    """A policy engine for the selfplay loop that answers each prompt with the demo teacher's move there and
    keeps the messages it was shown."""

    def __init__(self, moves: dict[str, str]) -> None:
        self.moves = moves
        self.shown: list[list[dict[str, Any]]] = []

    @property
    def model_version(self) -> str:
        return "capturing"

    async def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        out = []
        for r in as_requests(requests):
            messages = [m.model_dump() for m in r.messages or []]
            self.shown.append(messages)
            text = self.moves[json.dumps(messages)]
            out.append(
                [
                    Completion(
                        text=text,
                        prompt_token_ids=[1],
                        token_ids=[1],
                        logprobs=[-0.1],
                        finish_reason=FinishReason.STOP,
                        model_version="capturing",
                    )
                ]
            )
        return out

    async def close(self) -> None:
        return None


async def test_prompts_are_what_the_selfplay_loop_shows_the_policy(store: Store) -> None:
    """The selfplay loop against the same random opponent, its policy playing the teacher's moves, is shown
    exactly the demos' prompts, in the same games."""
    cfg = gd.GameDemosConfig(games_per_task=2, seed=0)
    demos = await _run(store, cfg, n=2)
    for ep in demos:
        moves: dict[str, str] = {}
        for e in ep.examples:
            key = json.dumps(e.payload["prompt"])
            assert (
                moves.setdefault(key, e.payload["completion"][0]["content"])
                == e.payload["completion"][0]["content"]
            )
        engine = _Capturing(moves)
        graph = sp.SPEC.make(
            LoopResources(engines={"policy": engine}, task_set=GAMES, store=store),
            sp.SelfPlayConfig(opponent="random", games_per_task=2, seed=0),
        )
        task = next(t for t in GAMES.tasks(Split.TRAIN, 2) if t.id == ep.task_id)
        await Runner(store, concurrency=1, progress=False).run(
            graph, [task], RunRecord(id=f"sp-{ep.id}", loop="selfplay")
        )
        [played] = store.list_episodes(f"sp-{ep.id}")
        assert sorted(map(json.dumps, engine.shown)) == sorted(
            json.dumps(e.payload["prompt"]) for e in ep.examples
        )
        assert [(s.metadata["game_index"], s.metadata["turn"], s.text) for s in played.steps] == [
            (s.metadata["game_index"], s.metadata["turn"], s.text) for s in ep.steps
        ]
        assert [r["rewards"] for r in played.outcome["results"]] == [
            r["rewards"] for r in ep.outcome["results"]
        ]


async def test_teacher_in_both_seats_random_teacher_and_a_completion_template(store: Store) -> None:
    [both] = await _run(store, gd.GameDemosConfig(opponent="teacher", games_per_task=3), run_id="both", n=1)
    assert [r["teacher_seats"] for r in both.outcome["results"]] == [[0, 1]] * 3
    assert all(s.role == "teacher" for s in both.steps) and len(both.examples) == len(both.steps)
    assert both.outcome["wins"] == both.outcome["losses"] and both.reward == 0.0  # it beats itself as often
    _walk(both)

    [rnd] = await _run(store, gd.GameDemosConfig(teacher="random", opponent="heuristic"), run_id="rnd", n=1)
    assert {s.model_version for s in rnd.steps if s.role == "teacher"} == {"teacher:random"}
    assert {s.metadata["player"] for s in rnd.steps if s.role == "opponent"} == {"heuristic"}
    _walk(rnd)

    [wrapped] = await _run(
        store, gd.GameDemosConfig(completion_template="I take {move}."), run_id="wrap", n=1
    )
    texts = [e.payload["completion"][0]["content"] for e in wrapped.examples]
    assert texts and all(t.startswith("I take [") and t.endswith("].") for t in texts)
    _walk(wrapped)  # the wrapped text still parses as the legal move it stands for

    bad = gd.GameDemosConfig(completion_template="{move} or [9]")  # the game would read another move
    with pytest.raises(ValueError, match="reads as '\\[9\\]'"):
        gd.completion_of(bad, "tictactoe", "[4]")
    # Every game fails at its first teacher move, before any example is kept: the run stops, saying why.
    with pytest.raises(RunFailedError, match=re.escape("completion_template '{move} or [9]'")):
        await _run(store, bad, run_id="bad", n=1)


async def test_heldout_games_emit_nothing(store: Store) -> None:
    [ep] = await _run(store, gd.GameDemosConfig(), run_id="held", n=1, split=Split.HELDOUT)
    assert ep.examples == [] and ep.outcome["examples"] == 0 and ep.outcome["n"] > 0


async def test_seeded_runs_repeat_and_another_seed_plays_other_games(store: Store) -> None:
    def played(eps: list[EpisodeRecord]) -> list[Any]:
        # examples come back in id order: compare them by the move they demonstrate
        return [
            ([s.text for s in ep.steps], {k: e.payload for k, e in _examples_by_move(ep).items()}, ep.outcome)
            for ep in eps
        ]

    cfg = gd.GameDemosConfig(games_per_task=4, seed=7)
    a = await _run(store, cfg, run_id="a", n=3)
    b = await _run(store, cfg, run_id="b", n=3)
    c = await _run(store, cfg.model_copy(update={"seed": 8}), run_id="c", n=3)
    assert played(a) == played(b) and played(a) != played(c)


async def test_a_crashed_run_resumes_mid_game_with_the_same_moves(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner checkpoints after every move node: a crash mid-game continues from the last move made, and
    the position-seeded players make the moves an uninterrupted run makes."""
    cfg = gd.GameDemosConfig(games_per_task=2, seed=3)
    real = gd.fixed_player
    calls: list[int] = []

    def counting(crash_at: int | None) -> Any:
        def player(*args: Any) -> Any:
            calls.append(1)
            if crash_at is not None and len(calls) == crash_at:
                raise RuntimeError("crash mid-game")
            return real(*args)

        return player

    reference = await _run(store, cfg, run_id="ref", n=1)
    monkeypatch.setattr(gd, "fixed_player", counting(crash_at=7))
    with pytest.raises(ExceptionGroup) as crashed:  # the runner's task group
        await _run(store, cfg, run_id="resumed", n=1)
    assert "crash mid-game" in repr(crashed.value.exceptions)
    assert store.list_episodes("resumed") == []
    calls.clear()
    monkeypatch.setattr(gd, "fixed_player", counting(crash_at=None))
    resumed = await _run(store, cfg, run_id="resumed", n=1)
    total = sum(len(ep.steps) for ep in reference)
    assert len(calls) == total - 6  # three move nodes (one move in each of the 2 games) were kept, not redone
    assert [s.text for s in resumed[0].steps] == [s.text for s in reference[0].steps]
    assert {k: e.payload for k, e in _examples_by_move(resumed[0]).items()} == {
        k: e.payload for k, e in _examples_by_move(reference[0]).items()
    }


# -------------------------------------------------------------------------------------------------- bad config
def test_an_unknown_teacher_or_opponent_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="unknown teacher 'stockfish': use one of heuristic, random"):
        gd.GameDemosConfig(teacher="stockfish")
    with pytest.raises(
        ValidationError, match="unknown opponent 'alphazero': use one of random, heuristic, teacher"
    ):
        get_loop("game-demos").parse_config({"opponent": "alphazero"})
    with pytest.raises(ValidationError, match="use an even number"):
        gd.GameDemosConfig(games_per_task=3)
    with pytest.raises(ValidationError, match="must use \\{move\\}"):
        gd.GameDemosConfig(completion_template="[4]")
    with pytest.raises(ValidationError, match="no other field"):
        gd.GameDemosConfig(completion_template="{move} {why}")
    text = (REPO / "recipes" / "selfplay-tictactoe-warm.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('teacher = "heuristic"', 'teacher = "minimax"'))
    with pytest.raises(RecipeError, match=r"stages\[0\]\.config\.teacher.*use one of heuristic, random"):
        load_recipe(bad)


# ---------------------------------------------------------------------------------------------------- recipes
def test_the_warm_start_recipe_loads_and_its_selfplay_stage_is_the_cold_starts() -> None:
    warm = load_recipe(REPO / "recipes" / "selfplay-tictactoe-warm.toml")
    cold = load_recipe(REPO / "recipes" / "selfplay-tictactoe.toml")
    assert warm.cycles == 1 and warm.roles == cold.roles == {"policy": "smollm2-135m"}
    demos, selfplay = warm.stages
    assert (demos.name, demos.loop, selfplay.name, selfplay.loop) == (
        "demos",
        "game_demos",
        "selfplay",
        "selfplay",
    )
    cfg = gd.GameDemosConfig.model_validate(demos.config)
    assert (cfg.teacher, cfg.opponent) == ("heuristic", "random")
    assert demos.train is not None and demos.train.kind == "sft" and demos.train.role == "policy"
    assert demos.train.settings["epochs"] == 2 and demos.train.settings["learning_rate"] == 2e-4
    assert demos.tasks == selfplay.tasks.model_copy(update={"train_per_cycle": demos.tasks.train_per_cycle})
    # The same gate and transfer measurement; only the warm start keeps a candidate that ties.
    assert demos.eval is not None and demos.eval.promote_on_tie
    assert demos.eval.model_copy(update={"promote_on_tie": False}) == selfplay.eval == cold.stages[0].eval
    assert (
        demos.eval is not None and demos.eval.target == "game" and demos.eval.metric == "vs_random/win_rate"
    )
    [c] = cold.stages
    assert (selfplay.tasks, selfplay.train, selfplay.concurrency) == (c.tasks, c.train, c.concurrency)
    assert selfplay.config == {**c.config, "baseline_namespace": "selfplay-tictactoe-warm"}
    assert selfplay.config["rae"] is True
    # The warm start's LoRA is the one self-play continues.
    assert demos.train.settings["lora"] == selfplay.train.settings["lora"]  # type: ignore[union-attr]


def test_a_game_demos_stage_defaults_to_the_game_gate() -> None:
    from strop.training.recipe import recipe_from_dict

    stage = {"name": "d", "loop": "game_demos", "train": {"kind": "sft"}, "eval": {"margin": 0.0}}
    ev = recipe_from_dict({"name": "r", "roles": {"policy": "tiny"}, "stages": [stage]}).stages[0].eval
    assert ev is not None and ev.target == "game" and ev.gate_metric() == "vs_random/win_rate"
    spec = get_loop("game-demos")
    assert spec.needed_roles() == () and spec.example_kinds == (ExampleKind.SFT,)


# ---------------------------------------------------------------------------------- the real path: tiny model
@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_the_examples_train_the_tiny_model_with_a_real_sft_job(
    db_url: str, tiny_model_path: Path, tmp_path: Path
) -> None:
    from strop.training.jobs import train_candidate

    store = Store(db_url)
    try:
        episodes = await _run(store, gd.GameDemosConfig(games_per_task=2, seed=0), run_id="demos", n=2)
        emitted = sum(ep.outcome["examples"] for ep in episodes)
        assert emitted == store.count_examples(kind=ExampleKind.SFT) > 0
        parent = store.register_model(
            ModelVersionRecord(
                name="tiny", lineage="tiny", path=str(tiny_model_path), status=ModelStatus.BASE
            )
        )
        # The tiny model's byte-level tokenizer makes a TicTacToe prompt ~720 tokens: keep the move in the window.
        settings = {
            "epochs": 1,
            "batch_size": 8,
            "learning_rate": 1e-3,
            "max_length": 1024,
            "lora": {"r": 4, "alpha": 8},
            "logging_steps": 1,
        }
        res = train_candidate(
            store, parent, kind="sft", settings=settings, output_dir=tmp_path / "cand", run_ids=["demos"]
        )
        assert res.examples == emitted and res.candidate.status == ModelStatus.CANDIDATE
        assert math.isfinite(res.train_loss) and res.train_loss > 0  # the completions were in the window
        assert (tmp_path / "cand" / "adapter_config.json").is_file()
        from strop.memory.examples import default_consumer

        assert (
            store.count_examples(kind=ExampleKind.SFT, unconsumed_by=default_consumer("policy", "sft")) == 0
        )
    finally:
        store.close()


def test_strop_run_game_demos_loads_no_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path
) -> None:
    """`strop run game-demos` collects without an engine (the loop has no roles)."""
    from strop.agents import runner as runner_module
    from strop.cli import app

    def no_engine(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("game_demos needs no engine")

    monkeypatch.setattr(runner_module, "load_version_engine", no_engine)
    db = tmp_path / "s.db"
    out = CliRunner().invoke(
        app,
        [
            "run",
            "game-demos",
            "-m",
            "tiny",
            "-t",
            "games",
            "--episodes",
            "2",
            "--set",
            "games_per_task=2",
            "--db",
            str(db),
        ],
    )
    assert out.exit_code == 0, out.output
    assert "2 episodes" in out.output and "SFT examples" in out.output


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_warm_start_stage_hands_its_promoted_policy_to_self_play(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """The warm-start recipe's shape on the tiny model: `demos` collects with no engine and trains the policy
    with SFT, gated on games; `selfplay` then starts from the version `demos` promoted."""
    from strop.training.evolve import Evolution, StagePhase

    games = '{ name = "games", train_per_cycle = 2, heldout = 1 }'
    lora = "lora = { r = 4, alpha = 8, dropout = 0.0 }"
    recipe = tmp_path / "warm.toml"
    recipe.write_text(f'''name = "tiny-warm"
cycles = 1
output_dir = "{tmp_path / "run"}"

[roles]
policy = "tiny"

[[stages]]
name = "demos"
loop = "game_demos"
tasks = {games}
config = {{ games_per_task = 2, seed = 0 }}
train = {{ kind = "sft", role = "policy", settings = {{ epochs = 1, batch_size = 8, learning_rate = 1e-3, max_length = 1024, {lora} }} }}
eval = {{ margin = 0.0, promote_on_tie = true, max_tokens = 8, opponents = ["random"] }}

[[stages]]
name = "selfplay"
loop = "selfplay"
tasks = {games}
config = {{ games_per_task = 2, max_tokens = 8, seed = 0, baseline_namespace = "tiny-warm" }}
train = {{ kind = "pg", role = "policy", settings = {{ epochs = 1, batch_size = 4, learning_rate = 1e-3, temperature = 1.0, {lora} }} }}
eval = {{ margin = 0.0, max_tokens = 8, opponents = ["random"] }}
''')
    store = Store(f"sqlite:///{tmp_path / 'warm.db'}")
    try:
        evo = Evolution(load_recipe(recipe), store, progress=False)
        assert evo.evaluator(0).name == "game" and evo.metric(0) == "tictactoe/vs_random/win_rate"
        rows = await evo.run()
        assert [r.phase for r in rows[-2:]] == [StagePhase.DONE, StagePhase.DONE]
        collect = store.get_run(evo.collect_run_id(1, 0))
        assert collect is not None and collect.model_ids == []  # no engine served the demos
        demos = store.list_episodes(evo.collect_run_id(1, 0))
        emitted = sum(ep.outcome["examples"] for ep in demos)
        warm = store.get_model(evo.candidate_id(1, 0))
        assert warm is not None and warm.metrics["examples"] == emitted > 0
        handed = store.get_run(evo.stage_run_id(1, 1))
        assert warm.status == ModelStatus.PROMOTED  # promote_on_tie: a candidate that does not lose is kept
        assert handed is not None and handed.config["versions"]["policy"] == warm.id
        selfplay = store.get_model(evo.candidate_id(1, 1))
        assert selfplay is not None and selfplay.parent_id == warm.id and selfplay.adapter_path
    finally:
        store.close()
