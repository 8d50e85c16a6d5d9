"""SCoRe through the real path: a self-correction stage on the tiny model collects two-turn conversations,
the `pg` trainer kind trains a candidate on their per-turn advantages with real TRL, and the gate is greedy
turn-2 accuracy on held-out tasks; plus the recipe checks that name a wrong self-correction setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from strop.training.recipe import RecipeError, load_recipe


def sc_recipe(
    tmp_path: Path, *, config: str = "", train: str = "", evaluation: str = "", roles: str = ""
) -> Path:
    text = f'''name = "tiny-score"
cycles = 1
output_dir = "{tmp_path / "run"}"

[roles]
policy = "tiny"
{roles}

[[stages]]
name = "score"
loop = "self_correct"
concurrency = 8
tasks = {{ name = "arithmetic", train_per_cycle = 6, heldout = 6 }}
config = {{ n = 4, temperature = 1.0, max_tokens = 16, stage = 2, seed = 0{config} }}

[stages.train]
kind = "pg"
role = "policy"
settings = {{ epochs = 1, batch_size = 4, learning_rate = 1e-3, temperature = 1.0, lora = {{ r = 4, alpha = 8 }}{train} }}

[stages.eval]
margin = 0.0
{evaluation}
'''
    p = tmp_path / "score.toml"
    p.write_text(text)
    return p


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_score_stage_trains_on_turn_advantages_and_gates_on_turn_two(
    db_url: str, tmp_path: Path, tiny_model_path: Path
) -> None:
    from strop.memory import Store
    from strop.memory.records import ExampleKind, Role
    from strop.training.evolve import Evolution, StagePhase

    store = Store(db_url)
    evo = Evolution(
        load_recipe(sc_recipe(tmp_path, evaluation='feedback = ["intrinsic", "oracle"]')),
        store,
        progress=False,
    )
    assert evo.evaluator(0).name == "self_correct"
    assert evo.metric(0) == "arithmetic/heldout/self_correct/intrinsic/acc_last"
    rows = await evo.run()
    episodes = store.list_episodes(evo.collect_run_id(1, 0))
    assert len(episodes) == 6 and all(len(e.steps) == 8 for e in episodes)  # 4 conversations x 2 turns
    base = store.get_model(evo.bases["policy"].id)
    for fb in ("intrinsic", "oracle"):
        prefix = f"arithmetic/heldout/self_correct/{fb}"
        assert base.metrics[f"{prefix}/n_tasks"] == 6
        assert base.metrics[f"{prefix}/net"] == pytest.approx(
            base.metrics[f"{prefix}/delta_i2c"] - base.metrics[f"{prefix}/delta_c2i"]
        )
    emitted = sum(e.outcome["examples"] for e in episodes)
    assert emitted == store.count_examples(Role.POLICY, ExampleKind.ADVANTAGE)
    # The tiny model, sampled at temperature 1, gets some turns right and some wrong in every few groups.
    assert emitted > 0 and rows[-1].phase == StagePhase.DONE
    cand = store.get_model(evo.candidate_id(1, 0))
    assert cand is not None and cand.metrics["examples"] == emitted
    assert evo.metric(0) in cand.metrics and cand.metrics.get("decision")


def test_critic_feedback_needs_a_critic_role(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="needs role 'critic'"):
        load_recipe(sc_recipe(tmp_path, config=', feedback = "critic"'))
    load_recipe(sc_recipe(tmp_path, config=', feedback = "critic"', roles='critic = "policy"'))


def test_a_wrong_self_correction_gate_is_named(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="not a self_correct metric"):
        load_recipe(sc_recipe(tmp_path, evaluation='metric = "f1"'))
    with pytest.raises(RecipeError, match=r"stages\[0\]\.eval\.feedback\[0\]: Input should be 'intrinsic'"):
        load_recipe(sc_recipe(tmp_path, evaluation='feedback = ["psychic"]'))
