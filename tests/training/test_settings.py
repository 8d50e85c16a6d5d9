"""The trainer kinds' settings share one base: the shared fields are declared and described once, each kind keeps
its own defaults (a recipe trains as it did before the base existed), and every field is documented for the CLI
and recipes."""

from __future__ import annotations

import pytest

from strop.training.settings import OfflineTrainerSettings, TrainerSettings
from strop.training.trainers import get_trainer

KINDS = ("sft", "dpo", "pg", "grpo")


@pytest.mark.parametrize("name", KINDS)
def test_each_kind_extends_the_base_and_describes_the_shared_fields_as_it_does(name: str) -> None:
    settings = get_trainer(name).settings
    assert issubclass(settings, TrainerSettings)
    assert issubclass(settings, OfflineTrainerSettings) == (name != "grpo")  # grpo claims no examples
    fields = settings.model_fields
    assert all(f.description for f in fields.values())
    for key, shared in OfflineTrainerSettings.model_fields.items():
        if key in fields:
            assert fields[key].description == shared.description, key
            assert fields[key].metadata == shared.metadata, key  # the same constraints (gt=0...)


def test_the_defaults_that_differ_per_kind_are_kept() -> None:
    defaults = {name: get_trainer(name).settings() for name in KINDS}
    table = {
        name: (s.epochs, s.learning_rate, s.batch_size, s.grad_accum, s.lr_scheduler, s.logging_steps)
        for name, s in defaults.items()
    }
    assert table == {
        "sft": (2.0, 2e-4, 8, 1, "linear", 5),
        "dpo": (1.0, 5e-5, 8, 1, "linear", 5),
        "pg": (1.0, 1e-4, 8, 1, "constant", 5),
        "grpo": (1.0, 1e-4, 16, 4, "constant", 1),
    }
    assert {s.lora.r for s in defaults.values() if s.lora} == {16} and not any(
        s.merge for s in defaults.values()
    )


def test_a_redeclared_field_keeps_the_shared_constraint() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="epochs"):
        get_trainer("sft").parse_settings({"epochs": 0})
    with pytest.raises(ValidationError, match="batch_size"):
        get_trainer("grpo").parse_settings({"batch_size": 0})
