"""Evolve recipes: one TOML file says which model improves on which tasks, and how.

Every field is validated by pydantic with `extra="forbid"`, so a typo or a wrong type fails before any work
starts, with the offending field named (`collect.temprature: unknown field`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from strop.training.promotion import PromotionSettings
from strop.training.sft import SFTSettings


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and the field."""


class TaskSettings(BaseModel):
    """Which tasks the model practises on and is judged by."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("arithmetic", description="Task set name for `sandbox.tasks.load_task_set` (see `strop tasks list`).")
    options: dict[str, Any] = Field(default_factory=dict, description="Options for the task set, e.g. {digits = 2}.")
    train_per_cycle: int = Field(96, ge=1, description="Training tasks sampled in each cycle; each cycle takes fresh ones.")
    heldout: int = Field(100, ge=1, description="Held-out tasks for evaluation (the same ones every cycle).")


class CollectSettings(BaseModel):
    """How answers are sampled for training (the best-of-N loop)."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(8, ge=1, le=256, description="Answers sampled per task.")
    temperature: float = Field(0.8, gt=0.0, le=10.0, description="Sampling temperature for exploration.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(48, ge=1, description="Most new tokens per answer (also used for evaluation).")
    system_prompt: str | None = Field(None, description="System message for every task, in collection, training and evaluation.")
    dedupe_examples: bool = Field(False, description="Keep one SFT example per distinct correct answer of a task.")
    rationalize: bool = Field(
        False, description="STaR rationalization: re-sample tasks with no correct answer with the reference answer as a hint."
    )
    seed: int | None = Field(0, description="Sampling seed (each task gets its own stream); none for fresh randomness.")
    concurrency: int = Field(64, ge=1, description="Episodes in flight at once (the engine batches across them).")


class EvalSettings(BaseModel):
    """How candidates are measured on held-out tasks."""

    model_config = ConfigDict(extra="forbid")

    k: int | None = Field(None, ge=2, description="Also record pass@k with k sampled answers (pass@1 is always greedy).")


class EngineSettings(BaseModel):
    """The engine that serves the policy."""

    model_config = ConfigDict(extra="forbid")

    backend: str = Field("hf", description="Engine backend: hf (transformers) or vllm; training needs local weights.")
    max_batch_size: int = Field(64, ge=1, description="Most sequences per batched forward pass.")


class Recipe(BaseModel):
    """A self-improvement recipe: collect -> train -> evaluate -> promote, `cycles` times."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Recipe name; names the run folder and keys resumption (same name = same run).")
    model: str = Field(description="Starting model: a registry name/id, a cache name ('smollm2-135m', 'tiny') or a folder.")
    cycles: int = Field(2, ge=1, description="Cycles to run (`strop evolve --cycles` overrides).")
    db: str | None = Field(None, description="Store URL or SQLite path; None means $STROP_DB or ./strop.db.")
    output_dir: str | None = Field(None, description="Run folder for models, table and plot; default runs/<name>.")
    tasks: TaskSettings = Field(default_factory=TaskSettings, description="Tasks to practise on and evaluate with.")
    collect: CollectSettings = Field(default_factory=CollectSettings, description="Sampling for training data.")
    train: SFTSettings = Field(default_factory=SFTSettings, description="SFT hyper-parameters (TRL SFTTrainer).")
    eval: EvalSettings = Field(default_factory=EvalSettings, description="Held-out evaluation.")
    promotion: PromotionSettings = Field(default_factory=PromotionSettings, description="The promotion gate.")
    engine: EngineSettings = Field(default_factory=EngineSettings, description="The policy engine.")

    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")


def load_recipe(path: str | Path, **overrides: Any) -> Recipe:
    """Read and validate a recipe file; errors name the file and every bad field."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe file {p} not found; ship one like recipes/star-arithmetic.toml")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{p}: not valid TOML: {e}") from e
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(f"{p}: invalid recipe:\n{format_validation_error(e)}") from e


def format_validation_error(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        field = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = "unknown field (check the spelling; see recipes/star-arithmetic.toml)" if err["type"] == "extra_forbidden" else err["msg"]
        got = "" if err["type"] in ("extra_forbidden", "missing") else f" (got {err.get('input')!r})"
        lines.append(f"  {field}: {msg}{got}")
    return "\n".join(lines)
