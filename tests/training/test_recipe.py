from pathlib import Path

import pytest

from strop.training.recipe import Recipe, RecipeError, load_recipe

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_recipe_is_valid_and_documented() -> None:
    r = load_recipe(REPO / "recipes" / "star-arithmetic.toml")
    assert r.model == "smollm2-135m" and r.tasks.name == "arithmetic" and r.collect.n == 8
    assert r.train.lora is not None and r.train.epochs == 2

    def undocumented(model: type) -> list[str]:
        return [name for name, f in model.model_fields.items() if not f.description]

    from strop.training.promotion import PromotionSettings
    from strop.training.recipe import CollectSettings, EngineSettings, EvalSettings, TaskSettings
    from strop.training.sft import LoraSettings, SFTSettings

    for m in (Recipe, TaskSettings, CollectSettings, EvalSettings, EngineSettings, SFTSettings, LoraSettings,
              PromotionSettings):
        assert undocumented(m) == [], m.__name__


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.toml"
    p.write_text(text)
    return p


def test_unknown_field_is_named(tmp_path: Path) -> None:
    p = _write(tmp_path, 'name = "x"\nmodel = "tiny"\n[collect]\ntemprature = 0.7\n')
    with pytest.raises(RecipeError, match=r"collect\.temprature: unknown field"):
        load_recipe(p)


def test_wrong_type_is_named(tmp_path: Path) -> None:
    p = _write(tmp_path, 'name = "x"\nmodel = "tiny"\n[train]\nepochs = "two"\n')
    with pytest.raises(RecipeError, match=r"train\.epochs: .*number.*'two'"):
        load_recipe(p)


def test_missing_field_and_missing_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"model: Field required"):
        load_recipe(_write(tmp_path, 'name = "x"\n'))
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.toml")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(_write(tmp_path, "name = \n"))
