"""MCTS-DPO through the real path: a search stage on the tiny model writes step pairs from its trees, TRL's
DPOTrainer trains a candidate on them, and held-out pass@1 gates it; the shipped recipe loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from strop.training.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]


def test_the_mcts_dpo_recipe_loads() -> None:
    r = load_recipe(REPO / "recipes" / "mcts-dpo-arithmetic.toml")
    assert r.stages[0].loop == "mcts" and r.stages[0].train is not None and r.stages[0].train.kind == "dpo"


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_mcts_stage_trains_dpo_on_step_pairs(
    sqlite_url: str, tmp_path: Path, tiny_model_path: Path
) -> None:
    from strop.memory import Store
    from strop.memory.records import ExampleKind, Role
    from strop.training.evolve import Evolution, StagePhase

    recipe = tmp_path / "mcts.toml"
    recipe.write_text(f'''name = "tiny-mcts-dpo"
cycles = 1
output_dir = "{tmp_path / "run"}"

[roles]
policy = "tiny"

[[stages]]
name = "mcts"
loop = "mcts"
concurrency = 8
tasks = {{ name = "arithmetic", train_per_cycle = 8, heldout = 8 }}
config = {{ system_prompt = "", budget_tokens = 300, k = 3, temperature = 1.0, max_step_tokens = 24, rollout_max_tokens = 32, min_q_gap = 0.1, emit_values = true, value_min_visits = 1, seed = 0 }}

[stages.train]
kind = "dpo"
role = "policy"
settings = {{ epochs = 1, batch_size = 4, learning_rate = 1e-3, lora = {{ r = 4, alpha = 8 }} }}

[stages.eval]
margin = 0.0
''')
    store = Store(sqlite_url)
    evo = Evolution(load_recipe(recipe), store, progress=False)
    rows = await evo.run()
    episodes = store.list_episodes(evo.collect_run_id(1, 0))
    assert len(episodes) == 8 and all(len(e.steps) == e.outcome["nodes"] > 1 for e in episodes)
    pairs = store.count_examples(Role.POLICY, ExampleKind.PAIR)
    values = store.count_examples(Role.CRITIC, ExampleKind.SFT)
    assert pairs > 0 and values > 0 and pairs + values == sum(e.outcome["examples"] for e in episodes)
    assert rows[-1].phase == StagePhase.DONE
    cand = store.get_model(evo.candidate_id(1, 0))
    assert (
        cand is not None and cand.metrics["examples"] == pairs and "arithmetic/heldout/pass@1" in cand.metrics
    )

    # ReST-MCTS*: the same trees' step values train the critic role into a PRM, from the CLI.
    from typer.testing import CliRunner

    from strop.cli import app

    out = CliRunner().invoke(
        app,
        [
            "train",
            "sft",
            "--model",
            "tiny",
            "--role",
            "critic",
            "--epochs",
            "1",
            "--lora-r",
            "4",
            "--name",
            "tiny-prm",
            "--output-dir",
            str(tmp_path / "prm"),
            "--db",
            sqlite_url,
        ],
    )
    assert out.exit_code == 0, out.output
    prm = store.get_model("tiny-prm")
    assert prm is not None and prm.metrics["examples"] == values
    assert store.count_examples(Role.CRITIC, ExampleKind.SFT, unconsumed_by="critic:sft") == 0
    out = CliRunner().invoke(app, ["train", "sft", "--model", "tiny", "--role", "judge", "--db", sqlite_url])
    assert out.exit_code != 0 and "--role judge" in out.output
