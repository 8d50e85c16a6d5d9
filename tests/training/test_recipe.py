from pathlib import Path

import pytest

from strop.training.recipe import Recipe, RecipeError, load_recipe

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_recipe_is_valid_and_documented() -> None:
    r = load_recipe(REPO / "recipes" / "star-arithmetic.toml")
    assert r.roles == {"policy": "smollm2-135m"} and len(r.stages) == 1
    stage = r.stages[0]
    assert stage.loop == "best_of_n" and stage.tasks.name == "arithmetic" and stage.config["n"] == 8
    assert stage.train is not None and stage.train.kind == "sft" and stage.train.settings["epochs"] == 2
    assert stage.eval is not None and stage.eval.margin == 0.02

    def undocumented(model: type) -> list[str]:
        return [name for name, f in model.model_fields.items() if not f.description]

    from strop.agents.evaluators import list_evaluators
    from strop.agents.loops.best_of_n import BestOfNConfig
    from strop.training.recipe import CycleOverride, EngineSettings, Stage, TaskSettings, TrainSettings
    from strop.training.settings import LoraSettings
    from strop.training.sft import SFTSettings

    for m in (
        Recipe,
        Stage,
        CycleOverride,
        TaskSettings,
        TrainSettings,
        *(e.settings for e in list_evaluators()),
        EngineSettings,
        SFTSettings,
        LoraSettings,
        BestOfNConfig,
    ):
        assert undocumented(m) == [], m.__name__


def test_every_shipped_recipe_loads() -> None:
    for path in sorted((REPO / "recipes").glob("*.toml")):
        load_recipe(path)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.toml"
    p.write_text(text)
    return p


STAGE = """name = "x"
[roles]
policy = "tiny"
[[stages]]
name = "a"
loop = "best_of_n"
[stages.train]
kind = "sft"
role = "policy"
[stages.eval]
margin = 0.0
"""


def test_the_first_recipe_form_reads_as_one_best_of_n_sft_stage(tmp_path: Path) -> None:
    r = load_recipe(
        _write(
            tmp_path,
            """name = "old"
model = "tiny"
[tasks]
options = { digits = 1 }
[collect]
n = 3
concurrency = 7
[train]
epochs = 1
[promotion]
margin = 0.1
""",
        )
    )
    assert r.roles == {"policy": "tiny"}
    [stage] = r.stages
    assert (stage.loop, stage.concurrency, stage.config["n"], stage.tasks.options) == (
        "best_of_n",
        7,
        3,
        {"digits": 1},
    )
    assert stage.train.kind == "sft" and stage.train.settings == {"epochs": 1} and stage.eval.margin == 0.1


def test_a_valid_staged_recipe_loads(tmp_path: Path) -> None:
    r = load_recipe(_write(tmp_path, STAGE))
    assert r.stages[0].train.sources == ["self"] and r.weights_of("policy") == "policy"


def test_a_shared_role_resolves_to_the_weights_it_uses(tmp_path: Path) -> None:
    r = load_recipe(_write(tmp_path, STAGE.replace('policy = "tiny"', 'policy = "tiny"\ncritic = "policy"')))
    assert r.weights_of("critic") == "policy"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (
            STAGE.replace('loop = "best_of_n"', 'loop = "nope"'),
            r"stages\[0\]\.loop: unknown loop 'nope'; known loops: .*best_of_n",
        ),
        (
            STAGE.replace('role = "policy"', 'role = "critic"'),
            r"stages\[0\]\.train\.role: unknown role 'critic'",
        ),
        (
            STAGE.replace('policy = "tiny"', 'policy = "tiny"\njudge = "policy"'),
            r"roles\.judge: unknown role",
        ),
        (
            STAGE.replace('kind = "sft"', 'kind = "ppo"'),
            r"stages\[0\]\.train\.kind: unknown trainer kind 'ppo'",
        ),
        (
            STAGE.replace("[stages.eval]\nmargin = 0.0\n", ""),
            r"stages\[0\]\.eval: stage 'a' trains role 'policy' but no stage evaluates it",
        ),
        (
            STAGE.replace('loop = "best_of_n"', 'loop = "best_of_n"\nconfig = { temprature = 0.7 }'),
            r"stages\[0\]\.config\.temprature: unknown field",
        ),
        (
            STAGE.replace('loop = "best_of_n"', 'loop = "best_of_n"\nconfig = { n = 0 }'),
            r"stages\[0\]\.config\.n: .*greater than or equal to 1",
        ),
        (
            STAGE.replace('role = "policy"\n', 'role = "policy"\nsettings = { epochs = "two" }\n'),
            r"stages\[0\]\.train\.settings\.epochs: .*number.*'two'",
        ),
        (
            STAGE.replace('role = "policy"\n', 'role = "policy"\nsources = ["b"]\n'),
            r"stages\[0\]\.train\.sources: 'b' is not",
        ),
        (STAGE + STAGE[STAGE.index("[[stages]]") :], r"stages\[1\]\.name: stage name 'a' is used twice"),
        (
            STAGE.replace('[stages.train]\nkind = "sft"\nrole = "policy"\n', ""),
            r"stages\[0\]\.eval: this stage trains nothing",
        ),
        (
            'name = "x"\n[roles]\ncritic = "tiny"\n[[stages]]\nname = "a"\n',
            r"roles\.policy: every recipe needs a policy",
        ),
        (
            STAGE.replace('policy = "tiny"', 'policy = "critic"\ncritic = "policy"'),
            r"roles\.(policy|critic): .*cycle",
        ),
        ('name = "x"\nstages = []\n[roles]\npolicy = "tiny"\n', r"stages: List should have at least 1 item"),
        (STAGE.replace("[stages.eval]", "[stages.evaluation]"), r"stages\[0\]\.evaluation: unknown field"),
    ],
)
def test_a_bad_recipe_fails_before_any_work_with_the_field_named(
    tmp_path: Path, text: str, field: str
) -> None:
    with pytest.raises(RecipeError, match=field):
        load_recipe(_write(tmp_path, text))


def test_unknown_field_is_named_in_the_first_form_too(tmp_path: Path) -> None:
    p = _write(tmp_path, 'name = "x"\nmodel = "tiny"\n[collect]\ntemprature = 0.7\n')
    with pytest.raises(RecipeError, match=r"stages\[0\]\.config\.temprature: unknown field"):
        load_recipe(p)


def test_missing_field_and_missing_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"roles: Field required"):
        load_recipe(_write(tmp_path, 'name = "x"\n'))
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.toml")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(_write(tmp_path, "name = \n"))
