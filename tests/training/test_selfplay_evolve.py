"""SPIRAL through the real path: a self-play stage on the tiny model plays TicTacToe against itself, the `pg`
trainer kind trains a candidate on the moves' RAE advantages with real TRL, and the gate is greedy win rate
against a random mover on held-out seeds (with arithmetic transfer measured beside it); plus the recipe
checks that name a wrong game gate, and the shipped SmolLM2 recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from strop.training.recipe import RecipeError, load_recipe

REPO = Path(__file__).resolve().parents[2]


def sp_recipe(tmp_path: Path, *, config: str = "", evaluation: str = "") -> Path:
    text = f'''name = "tiny-spiral"
cycles = 1
output_dir = "{tmp_path / "run"}"

[roles]
policy = "tiny"

[[stages]]
name = "spiral"
loop = "selfplay"
concurrency = 8
tasks = {{ name = "games", train_per_cycle = 3, heldout = 2 }}
config = {{ games_per_task = 2, temperature = 1.0, max_tokens = 8, seed = 0, baseline_namespace = "tiny-spiral"{config} }}

[stages.train]
kind = "pg"
role = "policy"
settings = {{ epochs = 1, batch_size = 4, learning_rate = 1e-3, temperature = 1.0, lora = {{ r = 4, alpha = 8 }} }}

[stages.eval]
margin = 0.0
{evaluation}
'''
    p = tmp_path / "spiral.toml"
    p.write_text(text)
    return p


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_selfplay_stage_trains_on_game_moves_and_gates_on_win_rate(
    db_url: str, tmp_path: Path, tiny_model_path: Path
) -> None:
    from strop.memory import Store
    from strop.memory.records import ExampleKind, Role
    from strop.training.evolve import Evolution, StagePhase

    store = Store(db_url)
    recipe = sp_recipe(
        tmp_path, evaluation='transfer = { name = "arithmetic", heldout = 4 }\ntransfer_max_tokens = 16'
    )
    evo = Evolution(load_recipe(recipe), store, progress=False)
    assert evo.evaluator(0).name == "game" and evo.metric(0) == "tictactoe/vs_random/win_rate"
    assert evo.extra_metric(0) == ("transfer acc", "arithmetic/heldout/pass@1")
    rows = await evo.run()
    episodes = store.list_episodes(evo.collect_run_id(1, 0))
    assert len(episodes) == 3 and all(ep.outcome["games"] == 2 for ep in episodes)
    emitted = sum(e.outcome["examples"] for e in episodes)
    assert emitted > 0 and emitted == store.count_examples(Role.POLICY, ExampleKind.GAME_TURN)
    baselines = store.list_baselines("tiny-spiral", "tictactoe")
    assert sum(b.count for b in baselines) == 3 * 2 * 2  # tasks x games x seats
    base = store.get_model(evo.bases["policy"].id)
    cand = store.get_model(evo.candidate_id(1, 0))
    assert cand is not None and cand.metrics["examples"] == emitted and cand.metrics.get("decision")
    for version in (base, cand):
        assert version.metrics["tictactoe/n_tasks"] == 2
        assert {
            "tictactoe/vs_random/seat0/win_rate",
            "tictactoe/vs_heuristic/score",
            "tictactoe/illegal_rate",
            "arithmetic/heldout/pass@1",
        } <= set(version.metrics)
    assert (
        rows[-1].phase == StagePhase.DONE
        and rows[-1].policy_accuracy == cand.metrics["arithmetic/heldout/pass@1"]
    )
    table = (tmp_path / "run" / "table.md").read_text()
    assert "transfer acc" in table and "held-out score" in table
    store.close()


def test_a_wrong_game_gate_is_named(tmp_path: Path) -> None:
    for metric in ("illegal_rate", "vs_stockfish/win_rate", "pass@1"):
        with pytest.raises(RecipeError, match="not a game metric"):
            load_recipe(sp_recipe(tmp_path, evaluation=f'metric = "{metric}"'))
    with pytest.raises(RecipeError, match="not a game metric"):
        load_recipe(
            sp_recipe(tmp_path, evaluation='opponents = ["random"]\nmetric = "vs_heuristic/win_rate"')
        )
    r = load_recipe(sp_recipe(tmp_path, evaluation='metric = "vs_heuristic/seat1/score"'))
    assert r.stages[0].eval is not None and r.stages[0].eval.gate_metric() == "vs_heuristic/seat1/score"


def test_the_shipped_recipes_differ_only_in_rae() -> None:
    on = load_recipe(REPO / "recipes" / "selfplay-tictactoe.toml")
    off = load_recipe(REPO / "recipes" / "selfplay-tictactoe-norae.toml")
    assert on.roles == off.roles == {"policy": "smollm2-135m"}
    a, b = on.stages[0], off.stages[0]
    assert a.config["rae"] is True and b.config["rae"] is False
    assert (a.tasks, a.train, a.eval) == (b.tasks, b.train, b.eval)
