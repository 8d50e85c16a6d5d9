"""Recipes: which models improve, through which loops, trained how, judged how. One TOML file.

A recipe names **roles** and lists **stages**:
- a role (`policy`, `critic`, `generator`) is a model lineage in the registry. `critic = "policy"` means one
  set of weights plays both roles (self-critique); a model name gives the role its own lineage with its own
  promotions.
- a stage runs a registered loop (`strop loops list`) with its config on a task set, trains one role on the
  examples its own runs emitted (or other stages' runs, when `train.sources` says so) with a trainer kind,
  and evaluates that role's candidate with a gate that decides its promotion. A cycle runs the stages in
  order; the next stage sees the versions the previous one promoted.

The flat form of the first recipes (`model`, `[collect]`, `[train]`, `[eval]`, `[promotion]`) is still read:
it is one best-of-N stage training the policy with SFT (`legacy_to_stages`).

Every field is validated by pydantic with `extra="forbid"`, and the loop config and trainer settings by the
loop's and the trainer kind's own models, so a typo, a wrong type, an unknown loop or role, or a trainer
setting TRL would refuse fails before any work starts, with the field named (`stages[0].config.temprature`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from strop.agents.evaluators.base import EvalSettings
from strop.agents.scale import ScaleSettings
from strop.memory.records import ExampleKind, Role
from strop.training.launch import LaunchSettings
from strop.training.recipe_errors import FieldError, format_validation_error


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and the field."""


class TaskSettings(BaseModel):
    """Which tasks a stage practises on and is judged by."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("arithmetic", description="Task set name for `load_task_set` (see `strop tasks list`).")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Options for the task set, e.g. {digits = 2}."
    )
    train_per_cycle: int = Field(
        96, ge=1, description="Training tasks taken in each cycle; each cycle takes fresh ones."
    )
    heldout: int = Field(100, ge=1, description="Held-out tasks for evaluation (the same ones every cycle).")


class TrainSettings(LaunchSettings):
    """What a stage trains: which role, with which trainer kind, on which examples, launched how (in this
    process, or under `accelerate launch`: the `LaunchSettings` fields launcher, num_processes and
    accelerate_config)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field("sft", description="Trainer kind: sft, dpo, grpo, pg (see training/trainers.py).")
    role: str = Field(
        "policy", description="The role whose model is trained and, if it passes the gate, promoted."
    )
    example_kinds: list[ExampleKind] | None = Field(
        None,
        description="Example kinds to train on; default: what the trainer kind consumes (sft for sft, pair for dpo).",
    )
    sources: list[str] = Field(
        default_factory=lambda: ["self"],
        description="Whose examples: 'self' (this stage's runs, all cycles so far), other stage names, or 'any' "
        "(every unconsumed example in the store, whoever wrote it).",
    )
    consumer: str | None = Field(
        None,
        description="Consumer name for exactly-once claims; default '<role>:<kind>'. Two stages with one "
        "consumer never train on the same example.",
    )
    settings: dict[str, Any] = Field(
        default_factory=dict, description="The trainer kind's hyper-parameters (e.g. SFTSettings for sft)."
    )


class CycleOverride(BaseModel):
    """Loop config that differs in some cycles (a warm-up round, a last round), over the stage's own."""

    model_config = ConfigDict(extra="forbid")

    cycles: list[int] = Field(
        min_length=1,
        description="The cycles (from 1) that run with this override, e.g. [1] for a warm-up round; any other "
        "cycle runs the stage's own config.",
    )
    config: dict[str, Any] = Field(
        min_length=1,
        description="Loop config fields that replace the stage's `config` ones in those cycles; each cycle's "
        "merged config is validated against the loop's model.",
    )

    @field_validator("cycles")
    @classmethod
    def _cycles(cls, v: list[int]) -> list[int]:
        if any(c < 1 for c in v) or len(set(v)) != len(v):
            raise ValueError("cycles are distinct numbers from 1 (the first cycle is 1), e.g. cycles = [1]")
        return v


class Stage(BaseModel):
    """One step of a cycle: a loop collects, a trainer trains a role, an evaluation gates its promotion."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="Stage name, unique in the recipe; keys its runs and models, and `sources`."
    )
    loop: str = Field("best_of_n", description="Registered loop to run (see `strop loops list`).")
    config: dict[str, Any] = Field(
        default_factory=dict, description="The loop's config (see `strop loops show LOOP`)."
    )
    overrides: list[CycleOverride] = Field(
        default_factory=list,
        description="Per-cycle changes to `config` ([[stages.overrides]] cycles = [1], config = {...}); "
        "evaluation always uses the stage's own config.",
    )
    tasks: TaskSettings = Field(
        default_factory=TaskSettings, description="Tasks to practise on and evaluate with."
    )
    concurrency: int = Field(
        64, ge=1, description="Episodes in flight at once (the engine batches across them)."
    )
    train: TrainSettings | None = Field(
        None, description="What this stage trains; none for a stage that only collects."
    )
    eval: SerializeAsAny[EvalSettings] | None = Field(
        None,
        description="Evaluation and promotion gate for the trained role: the settings of the evaluator "
        "`target` names (default the loop's, see `strop loops show LOOP`; 'critic' for the critic role).",
    )

    @field_validator("eval", mode="before")
    @classmethod
    def _evaluator_settings(cls, value: Any, info: ValidationInfo) -> Any:
        """Validate `[stages.eval]` against its evaluator's own model, so a wrong field is named against it."""
        if not isinstance(value, dict):
            return value
        from strop.agents.evaluators import UnknownEvaluatorError, get_evaluator

        target = value.get("target") or _default_evaluator(info.data.get("loop"), info.data.get("train"))
        try:
            evaluator = get_evaluator(str(target))
        except UnknownEvaluatorError as e:
            raise FieldError("target", str(e)) from None
        try:
            return evaluator.settings.model_validate(value)
        except ValidationError as e:
            raise FieldError.of(e) from None

    @model_validator(mode="after")
    def _one_value_per_cycle(self) -> Stage:
        for j, o in enumerate(self.overrides):
            for i, earlier in enumerate(self.overrides[:j]):
                cycles, keys = set(o.cycles) & set(earlier.cycles), o.config.keys() & earlier.config.keys()
                if cycles and keys:
                    raise FieldError(
                        f"overrides[{j}]",
                        f"sets {', '.join(sorted(keys))} in cycle {min(cycles)}, as overrides[{i}] does; "
                        "give each field one value per cycle",
                    )
        return self

    def config_for(self, cycle: int) -> dict[str, Any]:
        """The loop config cycle `cycle` runs with: `config` updated by the overrides that list the cycle
        (cycle 0, the evaluation's, is always the stage's own)."""
        out = dict(self.config)
        for o in self.overrides:
            if cycle in o.cycles:
                out.update(o.config)
        return out


class EngineSettings(BaseModel):
    """The engines that serve the roles."""

    model_config = ConfigDict(extra="forbid")

    backend: str = Field(
        "hf", description="Engine backend: hf (transformers) or vllm; training needs local weights."
    )
    max_batch_size: int = Field(64, ge=1, description="Most sequences per batched forward pass.")


class Recipe(BaseModel):
    """A self-improvement recipe: roles, and the stages each cycle runs, `cycles` times."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="Recipe name; names the run folder and keys resumption (same name = same run)."
    )
    roles: dict[str, str] = Field(
        description="Role -> starting model (registry name/id, cache name or folder), or another role's name to "
        "share its weights, e.g. {policy = 'smollm2-135m', critic = 'policy'}."
    )
    stages: list[Stage] = Field(min_length=1, description="Stages run in order in every cycle.")
    cycles: int = Field(2, ge=1, description="Cycles to run (`strop evolve --cycles` overrides).")
    db: str | None = Field(None, description="Store URL or SQLite path; None means $STROP_DB or ./strop.db.")
    output_dir: str | None = Field(
        None, description="Run folder for models, table and plot; default runs/<name>."
    )
    engine: EngineSettings = Field(
        default_factory=EngineSettings, description="The engines serving the roles."
    )
    scale: ScaleSettings = Field(
        default_factory=ScaleSettings,
        description="Rollout workers for the stages' collection: [scale] workers = N "
        "local processes, or Ray actors with ray = 'auto' (docs/scale.md); default: collect in this process.",
    )

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        check_recipe(self)
        return self

    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")

    def weights_of(self, role: str) -> str:
        """The role whose weights `role` uses ('critic' -> 'policy' under `critic = "policy"`)."""
        seen = [role]
        while self.roles.get(role) in self.roles:
            role = self.roles[role]
            if role in seen:
                raise ValueError(f"roles: {' -> '.join([*seen, role])} is a cycle")
            seen.append(role)
        return role

    def stage_index(self, name: str) -> int:
        return next(i for i, s in enumerate(self.stages) if s.name == name)


def _default_evaluator(loop: Any, train: Any) -> str:
    """The evaluator a stage uses when its eval names none: its loop's, for the role it trains."""
    from strop.agents.loops.registry import LoopSpec, UnknownLoopError, get_loop

    role = train.role if isinstance(train, TrainSettings) else str(Role.POLICY)
    try:
        return get_loop(str(loop or Stage.model_fields["loop"].default)).evaluator_for(role)
    except UnknownLoopError:  # reported against `loop` by check_recipe; meanwhile a spec's default
        return str(LoopSpec.__dataclass_fields__["evaluator"].default)


def check_recipe(r: Recipe) -> None:
    """What pydantic's types cannot say: names that must exist, roles that must be evaluated."""
    from strop.agents.loops.registry import UnknownLoopError, get_loop
    from strop.training.trainers import UnknownTrainerError, get_trainer

    known_roles = {str(x) for x in Role}
    for role in r.roles:
        if role not in known_roles:
            raise FieldError(f"roles.{role}", f"unknown role; roles are {', '.join(sorted(known_roles))}")
    if "policy" not in r.roles:
        raise FieldError(
            "roles.policy", "every recipe needs a policy (e.g. roles = { policy = 'smollm2-135m' })"
        )
    for role in r.roles:
        try:
            r.weights_of(role)
        except ValueError as e:
            raise FieldError(f"roles.{role}", str(e)) from None
    names = [s.name for s in r.stages]
    for i, stage in enumerate(r.stages):
        at = f"stages[{i}]"
        if stage.name in names[:i]:
            raise FieldError(
                f"{at}.name", f"stage name {stage.name!r} is used twice; stage names must be unique"
            )
        try:
            spec = get_loop(stage.loop)
        except UnknownLoopError as e:
            raise FieldError(f"{at}.loop", str(e)) from None
        configs = [(f"{at}.config", stage.config)]  # the stage's own, then each override merged over it
        configs += [
            (f"{at}.overrides[{j}].config", {**stage.config, **o.config})
            for j, o in enumerate(stage.overrides)
        ]
        for where, values in configs:
            try:
                loop_cfg = spec.parse_config(values)
            except ValidationError as e:
                raise FieldError(where, "\n" + format_validation_error(e, prefix=f"{where}.")) from None
            for role in spec.needed_roles(loop_cfg):
                if str(role) not in r.roles:
                    raise FieldError(
                        f"{at}.loop",
                        f"loop {spec.name!r} needs role {str(role)!r}; add it under [roles] "
                        f'({role} = "policy" to share the policy\'s weights)',
                    )
        if stage.train is None:
            if stage.eval is not None:
                raise FieldError(
                    f"{at}.eval",
                    "this stage trains nothing, so it has no candidate to evaluate; "
                    "add [stages.train] or remove [stages.eval]",
                )
            continue
        t = stage.train
        if t.role not in r.roles:
            raise FieldError(
                f"{at}.train.role",
                f"unknown role {t.role!r}; the recipe's roles are "
                f"{', '.join(sorted(r.roles))} (add it under [roles])",
            )
        try:
            kind = get_trainer(t.kind)
        except UnknownTrainerError as e:
            raise FieldError(f"{at}.train.kind", str(e)) from None
        try:
            kind.parse_settings(t.settings)
        except ValidationError as e:
            raise FieldError(
                f"{at}.train.settings", "\n" + format_validation_error(e, prefix=f"{at}.train.settings.")
            ) from None
        if t.distributed and kind.online:
            raise FieldError(
                f"{at}.train.launcher",
                f"trainer kind {kind.name!r} collects its own rollouts in the "
                "evolve process and cannot run under accelerate; use launcher = "
                "'local' (sft, dpo and pg can be launched)",
            )
        for src in t.sources:
            if src not in ("self", "any") and src not in names:
                raise FieldError(
                    f"{at}.train.sources",
                    f"{src!r} is not 'self', 'any' or a stage name ({', '.join(names)})",
                )
        if stage.eval is None:
            raise FieldError(
                f"{at}.eval",
                f"stage {stage.name!r} trains role {t.role!r} but no stage evaluates it, so "
                "its candidate could never be promoted; add [stages.eval] (e.g. margin = 0.02)",
            )


def legacy_to_stages(data: dict[str, Any]) -> dict[str, Any]:
    """The first recipe form (one model, best-of-N collection, SFT) as a one-stage recipe."""
    if "stages" in data or "model" not in data:
        return data
    data = dict(data)
    collect = dict(data.pop("collect", {}))
    concurrency = collect.pop("concurrency", 64)
    config = {"seed": 0, "max_tokens": 48, **collect}
    ev = dict(data.pop("eval", {}))
    promotion = dict(data.pop("promotion", {}))
    stage = {
        "name": data.get("name", "stage"),
        "loop": "best_of_n",
        "config": config,
        "tasks": data.pop("tasks", {}),
        "concurrency": concurrency,
        "train": {"kind": "sft", "role": "policy", "settings": data.pop("train", {})},
        "eval": {**ev, **promotion},
    }
    data["roles"] = {"policy": data.pop("model")}
    data["stages"] = [stage]
    return data


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
    return recipe_from_dict(data, source=str(p))


def recipe_from_dict(data: dict[str, Any], *, source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(legacy_to_stages(data))
    except ValidationError as e:
        raise RecipeError(f"{source}: invalid recipe:\n{format_validation_error(e)}") from e
