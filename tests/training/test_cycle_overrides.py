"""Per-cycle loop config (`[[stages.overrides]]`): the schema and its errors, which cycle runs which config, and
an evolution that runs a SCRIT warm-up round then a validated one, on scripted engines. The real path with the
tiny model is in tests/training/test_scrit_evolve.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from strop.training.recipe import RecipeError, load_recipe, recipe_from_dict

STAGE = """name = "x"
[roles]
policy = "tiny"
[[stages]]
name = "a"
loop = "best_of_n"
config = { n = 4, temperature = 0.8, seed = 0 }
[stages.train]
kind = "sft"
role = "policy"
[stages.eval]
margin = 0.0
"""
OVERRIDE = "[[stages.overrides]]\ncycles = [1]\nconfig = { n = 8 }\n"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.toml"
    p.write_text(text)
    return p


def _with(*overrides: str) -> str:
    at = STAGE.index("[stages.train]")
    return STAGE[:at] + "".join(overrides) + STAGE[at:]


def test_each_cycle_runs_the_stage_config_updated_by_the_overrides_that_list_it(tmp_path: Path) -> None:
    text = _with(
        OVERRIDE,
        "[[stages.overrides]]\ncycles = [1, 3]\nconfig = { temperature = 1.0 }\n",
    )
    [stage] = load_recipe(_write(tmp_path, text)).stages
    assert stage.config_for(0) == stage.config == {"n": 4, "temperature": 0.8, "seed": 0}  # evaluation's
    assert stage.config_for(1) == {"n": 8, "temperature": 1.0, "seed": 0}
    assert stage.config_for(2) == stage.config
    assert stage.config_for(3) == {"n": 4, "temperature": 1.0, "seed": 0}
    assert stage.config_for(4) == stage.config  # cycles past the list (`--cycles 4`) run the stage's own


def test_a_recipe_without_overrides_keeps_its_evolution_id(tmp_path: Path) -> None:
    """The fingerprint leaves defaults out, so runs made before overrides existed are resumed, not orphaned."""
    plain = load_recipe(_write(tmp_path, STAGE))
    assert "overrides" not in plain.model_dump_json(exclude_defaults=True)
    assert "overrides" in load_recipe(_write(tmp_path, _with(OVERRIDE))).model_dump_json(
        exclude_defaults=True
    )


@pytest.mark.parametrize(
    ("override", "error"),
    [
        (
            "[[stages.overrides]]\ncycles = [1]\nconfig = { temprature = 0.7 }\n",
            r"stages\[0\]\.overrides\[0\]\.config\.temprature: unknown field",
        ),
        (
            "[[stages.overrides]]\ncycles = [1]\nconfig = { n = 0 }\n",
            r"stages\[0\]\.overrides\[0\]\.config\.n: .*greater than or equal to 1",
        ),
        (
            "[[stages.overrides]]\ncycles = [0]\nconfig = { n = 8 }\n",
            r"stages\[0\]\.overrides\[0\]\.cycles: cycles are distinct numbers from 1",
        ),
        (
            "[[stages.overrides]]\ncycles = [2, 2]\nconfig = { n = 8 }\n",
            r"stages\[0\]\.overrides\[0\]\.cycles: cycles are distinct numbers from 1",
        ),
        (
            "[[stages.overrides]]\ncycles = []\nconfig = { n = 8 }\n",
            r"stages\[0\]\.overrides\[0\]\.cycles: List should have at least 1 item",
        ),
        (
            "[[stages.overrides]]\ncycles = [1]\nconfig = {}\n",
            r"stages\[0\]\.overrides\[0\]\.config: Dictionary should have at least 1 item",
        ),
        (
            "[[stages.overrides]]\nconfig = { n = 8 }\n",
            r"stages\[0\]\.overrides\[0\]\.cycles: Field required",
        ),
        (
            "[[stages.overrides]]\ncycle = 1\ncycles = [1]\nconfig = { n = 8 }\n",
            r"stages\[0\]\.overrides\[0\]\.cycle: unknown field",
        ),
        (
            OVERRIDE + "[[stages.overrides]]\ncycles = [2, 1]\nconfig = { n = 2, seed = 3 }\n",
            r"stages\[0\]\.overrides\[1\]: sets n in cycle 1, as overrides\[0\] does; give each field one value",
        ),
    ],
)
def test_a_bad_override_is_refused_with_the_field_named(tmp_path: Path, override: str, error: str) -> None:
    with pytest.raises(RecipeError, match=error):
        load_recipe(_write(tmp_path, _with(override)))


def test_an_override_that_needs_a_role_the_recipe_lacks_is_refused() -> None:
    """Roles are checked per cycle's config: self-correction asks for the critic only for critic feedback."""
    data = {
        "name": "x",
        "roles": {"policy": "tiny"},
        "stages": [
            {
                "name": "a",
                "loop": "self_correct",
                "overrides": [{"cycles": [2], "config": {"feedback": "critic"}}],
            }
        ],
    }
    with pytest.raises(RecipeError, match=r"stages\[0\]\.loop: loop 'self_correct' needs role 'critic'"):
        recipe_from_dict(data)
    data["roles"] = {"policy": "tiny", "critic": "policy"}
    assert recipe_from_dict(data).stages[0].config_for(2)["feedback"] == "critic"


def test_the_warm_scrit_recipe_warms_up_without_validation_then_validates() -> None:
    r = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "scrit-warm-arithmetic.toml")
    [stage] = r.stages
    assert r.cycles == 3 and r.weights_of("critic") == "critic"  # the critic's own lineage
    by_cycle = [
        (stage.config_for(k)["validate"], stage.config_for(k)["critiques_per_solution"]) for k in (1, 2, 3)
    ]
    assert by_cycle == [(False, 2), (True, 8), (True, 8)]


async def test_an_evolution_runs_the_warm_up_config_in_cycle_1_and_records_each_rounds_critiques(
    tmp_path: Path,
) -> None:
    """Scripted students (one right, one wrong solution) and a critic that always says 'correct': every
    critique parses; validation keeps the ones on right solutions. Cycle 1 keeps every parsed one of 1 critique
    per solution, cycle 2 the validated ones of 3."""
    from strop.memory import Store
    from strop.memory.records import ModelStatus, ModelVersionRecord
    from strop.sandbox.tasks import ArithmeticTaskSet, Split
    from strop.training.evolve import Evolution
    from tests.agents.loops.fakes import ScriptedEngine

    ts = ArithmeticTaskSet(steps=2)
    tasks = {t.prompt: t for t in ts.tasks(Split.TRAIN, 8)}

    def answer(prompt: str, i: int) -> str:
        if "Student's solution:" in prompt:
            return "Verdict: correct"
        task = tasks[prompt]
        steps = "\n".join(f"Step {j}: {s}" for j, s in enumerate(task.reference_steps, 1))
        return f"{steps}\n#### {task.answer}" if i % 2 == 0 else f"Step 1: 1 + 1 = 3\n#### {task.answer}1"

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    base = store.register_model(
        ModelVersionRecord(name="dummy", lineage="dummy", path=str(tmp_path), status=ModelStatus.BASE)
    )
    recipe = {
        "name": "warm",
        "cycles": 2,
        "output_dir": str(tmp_path / "run"),
        "roles": {"policy": "dummy", "critic": "policy"},
        "stages": [
            {
                "name": "scrit",
                "loop": "scrit",
                "tasks": {"name": "arithmetic", "options": {"steps": 2}, "train_per_cycle": 4, "heldout": 4},
                "config": {"n_solutions": 2, "critiques_per_solution": 3, "shots": 0, "seed": 0},
                "overrides": [{"cycles": [1], "config": {"validate": False, "critiques_per_solution": 1}}],
            }
        ],
    }
    evo = Evolution(recipe_from_dict(recipe), store, progress=False)
    evo.engines["policy"] = ScriptedEngine(answer, version=base.id)
    rows = await evo.run()
    runs = [store.get_run(evo.collect_run_id(k, 0)) for k in (1, 2)]
    assert [r.config["loop"]["validate_critiques"] for r in runs] == [False, True]
    assert [r.config["loop"]["critiques_per_solution"] for r in runs] == [1, 3]
    one, two = (store.list_episodes(r.id) for r in runs)
    assert {len(e.critiques) for e in one} == {2} and {len(e.critiques) for e in two} == {6}
    assert sum(e.outcome["correct"] for e in one) == 8  # every parsed critique, right solution or not
    assert sum(e.outcome["correct"] for e in two) == 12  # the 3 on each right solution
    assert [r.collection for r in rows] == [
        "critiques 8: parsed 8, validated 4, kept 8/8 (100%) by parsing (validation off); examples 8",
        "critiques 24: parsed 24, validated 12, kept 12/24 (50%) by validation; examples 4",
    ]
    table = (tmp_path / "run" / "table.md").read_text()
    assert "kept 8/8" in table and "kept 12/24" in table
    store.close()
