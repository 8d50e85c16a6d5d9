"""The seam contract: a package outside strop registers a loop, its evaluator and a trainer kind with its own
settings (tests/contract/plugin.py, public names only), and `strop evolve` runs a recipe on them for real (the
tiny model, the store, TRL), with no edit to strop's `training/`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

RECIPE = """name = "contract"
cycles = 1
output_dir = "{out}"

[roles]
policy = "tiny"

[[stages]]
name = "retry"
loop = "retry_until_right"
concurrency = 16

[stages.tasks]
name = "arithmetic"
train_per_cycle = 8
heldout = 8

[stages.config]
tries = 3

[stages.train]
kind = "brief_sft"

[stages.train.settings]
epochs = 1
batch_size = 8
learning_rate = 1e-3
max_answer_chars = {chars}
lora = {{ r = 4, alpha = 8 }}

[stages.eval]
margin = 0.0
{eval}
"""


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the plugin into copies of the registries, so other tests see strop's own entries only."""
    from strop.agents import evaluators
    from strop.agents.loops import registry as loops
    from strop.training import trainers

    monkeypatch.setattr(loops, "LOOPS", loops.LOOPS.copy())
    monkeypatch.setattr(trainers, "TRAINERS", trainers.TRAINERS.copy())
    monkeypatch.setattr(evaluators, "EVALUATORS", evaluators.EVALUATORS.copy())
    from tests.contract import plugin as package

    package.register()


def _recipe(tmp_path: Path, *, chars: int = 60, evaluation: str = "max_tokens = 16") -> Path:
    p = tmp_path / "contract.toml"
    p.write_text(RECIPE.format(out=tmp_path / "run", chars=chars, eval=evaluation))
    return p


def test_a_recipe_on_the_plugin_is_validated_against_its_models(plugin: None, tmp_path: Path) -> None:
    from strop import get_loop, load_recipe
    from strop.training.recipe import RecipeError

    r = load_recipe(_recipe(tmp_path))
    assert get_loop("retry-until-right").evaluator == "brevity"
    assert type(r.stages[0].eval).__name__ == "BrevitySettings" and r.stages[0].eval.max_tokens == 16
    # A wrong field is named against the plugin's own models, not strop's.
    with pytest.raises(RecipeError, match=r"stages\[0\]\.eval\.k: unknown field"):
        load_recipe(_recipe(tmp_path, evaluation="k = 4"))
    with pytest.raises(RecipeError, match=r"stages\[0\]\.train\.settings\.max_answer_chars"):
        load_recipe(_recipe(tmp_path, chars=0))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_strop_evolve_runs_the_plugin(plugin: None, tiny_model_path: Path, tmp_path: Path) -> None:
    from strop import Store
    from strop.cli import app

    db = f"sqlite:///{tmp_path / 'contract.db'}"
    res = CliRunner().invoke(app, ["evolve", "--recipe", str(_recipe(tmp_path)), "--db", db, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "brevity pass@1" in res.output  # the plugin's evaluator measured the base and the candidate
    store = Store(db)
    try:
        [collect] = [r for r in store.list_runs() if r.loop == "retry_until_right"]
        episodes = store.list_episodes(collect.id)
        assert len(episodes) == 8 and all(1 <= len(e.steps) <= 3 for e in episodes)
        [cand] = [m for m in store.list_models() if m.name == "contract-c1"]
        prefix = "arithmetic/heldout/brevity"
        assert {f"{prefix}/pass@1", f"{prefix}/tokens", f"{prefix}/n_tasks"} <= set(cand.metrics)
        solved = sum(e.outcome["correct"] for e in episodes)
        assert 0 < cand.metrics["brief_examples"] <= solved  # trained by the plugin's kind, on its filter
        assert cand.adapter_path and Path(cand.adapter_path, "adapter_config.json").is_file()
        assert cand.metrics.get("decision")
    finally:
        store.close()
    assert (
        "held-out pass@1 (brevity) on 8 arithmetic tasks" in res.output
    )  # the evaluator's gate, in the title
    assert (tmp_path / "run" / "table.md").is_file()
