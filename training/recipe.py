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

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from strop.agents.scale import ScaleSettings
from strop.memory.records import ExampleKind, Role
from strop.training.launch import LaunchSettings
from strop.training.promotion import PromotionSettings


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


CRITIC_METRICS = ("f1", "acc_erroneous", "acc_correct", "correction_acc")
SELF_CORRECT_METRICS = ("acc_last", "acc_t1", "net", "delta_i2c")
FEEDBACK_KINDS = ("intrinsic", "critic", "oracle", "execution")
# Game target: a rate against one opponent, pooled over seats or of one seat (higher is better).
GAME_METRIC = re.compile(r"vs_(?P<opponent>\w+?)/(?:seat[01]/)?(?:win_rate|score|draw_rate)")


class StageEvalSettings(BaseModel):
    """How a stage judges the candidate of the role it trained, and when the candidate is promoted."""

    model_config = ConfigDict(extra="forbid")

    k: int | None = Field(
        None, ge=2, description="Also record pass@k with k sampled answers (pass@1 is always greedy)."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Most new tokens per answer; default the loop config's max_tokens (else 64)."
    )
    system_prompt: str | None = Field(
        None, description="System message; default the loop config's system_prompt."
    )
    target: Literal["policy", "critic", "self_correct", "game"] | None = Field(
        None,
        description="What is measured: 'policy' (pass@k on held-out tasks), 'critic' (the critic benchmark: "
        "first-wrong-step F1 and correction on labelled held-out solutions), 'self_correct' (greedy K-turn "
        "conversations: accuracy at turn 1 and the last turn, wrong-to-right and right-to-wrong shares, per "
        "feedback kind) or 'game' (greedy games on held-out seeds against fixed opponents, from each seat: "
        "win/draw/loss rates and the illegal-move rate). Default: 'critic' when the stage trains the critic "
        "role, 'self_correct' when its loop is self_correct, 'game' when it is selfplay or game_demos, else "
        "'policy'.",
    )
    metric: str | None = Field(
        None,
        description="Metric the gate compares on held-out data. Policy: 'pass@1' (default) or 'pass@K'. "
        "Critic: 'f1' (default), 'acc_erroneous', 'acc_correct' or 'correction_acc'. Self-correction (of the "
        "first feedback kind): 'acc_last' (default), 'acc_t1', 'net', 'delta_i2c'. Game: 'vs_random/win_rate' "
        "(default: averaged over the two seats), 'vs_heuristic/score' (wins + draws/2), "
        "'vs_random/seat1/win_rate', ...",
    )
    feedback: list[str] | None = Field(
        None,
        description="Self-correction target: feedback kinds to measure (intrinsic, critic, oracle, "
        "execution); the gate reads the first. Default: the loop's own feedback.",
    )
    turns: int | None = Field(
        None, ge=2, le=8, description="Self-correction target: turns per conversation (default the loop's)."
    )
    margin: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="Held-out gain over the parent required to promote (0.02 = 2 points).",
    )
    seed: int = Field(0, description="Critic target: seed of the labelled set (its size is `tasks.heldout`).")
    critic_max_tokens: int = Field(160, ge=16, description="Critic target: most tokens per critique.")
    critic_kind: Literal["generative", "prm"] | None = Field(
        None,
        description="Critic target: how the benchmark asks the critic, 'generative' (a written step-wise "
        "critique) or 'prm' (one Yes/No per step prefix, scores under <set>/prm/). Default: the loop's "
        "`critic_kind` where it has one (the sneaky loop), else generative.",
    )
    policy_accuracy: bool = Field(
        True,
        description="Critic target: also measure the policy's held-out pass@1 when the critic shares its "
        "weights, so a critic gain bought by a policy loss shows in the table.",
    )
    opponents: list[Literal["random", "heuristic"]] | None = Field(
        None, description="Game target: the fixed opponents played (default both, random and heuristic)."
    )
    transfer: TaskSettings | None = Field(
        None,
        description="Game target: also measure greedy held-out pass@1 on this task set (e.g. {name = "
        "'arithmetic', heldout = 100}) for every version, to see whether game play transfers to reasoning "
        "(reported in the table, not gated).",
    )
    transfer_max_tokens: int = Field(64, ge=1, description="Game target: most tokens per transfer answer.")

    def target_of(self, role: str, loop: str = "") -> str:
        if self.target:
            return self.target
        if role == "critic":
            return "critic"
        return {"self_correct": "self_correct", "selfplay": "game", "game_demos": "game"}.get(loop, "policy")

    def gate_metric(self, role: str, loop: str = "") -> str:
        target = self.target_of(role, loop)
        return self.metric or {"critic": "f1", "self_correct": "acc_last", "game": "vs_random/win_rate"}.get(
            target, "pass@1"
        )

    def promotion(self, role: str = "policy", loop: str = "") -> PromotionSettings:
        return PromotionSettings(margin=self.margin, metric=self.gate_metric(role, loop))


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
    tasks: TaskSettings = Field(
        default_factory=TaskSettings, description="Tasks to practise on and evaluate with."
    )
    concurrency: int = Field(
        64, ge=1, description="Episodes in flight at once (the engine batches across them)."
    )
    train: TrainSettings | None = Field(
        None, description="What this stage trains; none for a stage that only collects."
    )
    eval: StageEvalSettings | None = Field(
        None, description="Evaluation and promotion gate for the trained role."
    )


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


class _Field(ValueError):
    """A semantic error at a field path (turned into the same 'field: message' lines as pydantic's)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")


def check_recipe(r: Recipe) -> None:
    """What pydantic's types cannot say: names that must exist, roles that must be evaluated."""
    from strop.agents.loops.registry import UnknownLoopError, get_loop
    from strop.training.trainers import UnknownTrainerError, get_trainer

    known_roles = {str(x) for x in Role}
    for role in r.roles:
        if role not in known_roles:
            raise _Field(f"roles.{role}", f"unknown role; roles are {', '.join(sorted(known_roles))}")
    if "policy" not in r.roles:
        raise _Field("roles.policy", "every recipe needs a policy (e.g. roles = { policy = 'smollm2-135m' })")
    for role in r.roles:
        try:
            r.weights_of(role)
        except ValueError as e:
            raise _Field(f"roles.{role}", str(e)) from None
    names = [s.name for s in r.stages]
    for i, stage in enumerate(r.stages):
        at = f"stages[{i}]"
        if stage.name in names[:i]:
            raise _Field(f"{at}.name", f"stage name {stage.name!r} is used twice; stage names must be unique")
        try:
            spec = get_loop(stage.loop)
        except UnknownLoopError as e:
            raise _Field(f"{at}.loop", str(e)) from None
        try:
            loop_cfg = spec.parse_config(stage.config)
        except ValidationError as e:
            raise _Field(f"{at}.config", "\n" + format_validation_error(e, prefix=f"{at}.config.")) from None
        for role in spec.needed_roles(loop_cfg):
            if str(role) not in r.roles:
                raise _Field(
                    f"{at}.loop",
                    f"loop {spec.name!r} needs role {str(role)!r}; add it under [roles] "
                    f'({role} = "policy" to share the policy\'s weights)',
                )
        if stage.train is None:
            if stage.eval is not None:
                raise _Field(
                    f"{at}.eval",
                    "this stage trains nothing, so it has no candidate to evaluate; "
                    "add [stages.train] or remove [stages.eval]",
                )
            continue
        t = stage.train
        if t.role not in r.roles:
            raise _Field(
                f"{at}.train.role",
                f"unknown role {t.role!r}; the recipe's roles are "
                f"{', '.join(sorted(r.roles))} (add it under [roles])",
            )
        try:
            kind = get_trainer(t.kind)
        except UnknownTrainerError as e:
            raise _Field(f"{at}.train.kind", str(e)) from None
        try:
            kind.parse_settings(t.settings)
        except ValidationError as e:
            raise _Field(
                f"{at}.train.settings", "\n" + format_validation_error(e, prefix=f"{at}.train.settings.")
            ) from None
        if t.distributed and kind.online:
            raise _Field(
                f"{at}.train.launcher",
                f"trainer kind {kind.name!r} collects its own rollouts in the "
                "evolve process and cannot run under accelerate; use launcher = "
                "'local' (sft, dpo and pg can be launched)",
            )
        for src in t.sources:
            if src not in ("self", "any") and src not in names:
                raise _Field(
                    f"{at}.train.sources",
                    f"{src!r} is not 'self', 'any' or a stage name ({', '.join(names)})",
                )
        if stage.eval is None:
            raise _Field(
                f"{at}.eval",
                f"stage {stage.name!r} trains role {t.role!r} but no stage evaluates it, so "
                "its candidate could never be promoted; add [stages.eval] (e.g. margin = 0.02)",
            )
        metric = stage.eval.gate_metric(t.role, spec.name)
        target = stage.eval.target_of(t.role, spec.name)
        allowed = {"critic": CRITIC_METRICS, "self_correct": SELF_CORRECT_METRICS}.get(target)
        if allowed is not None and metric not in allowed:
            raise _Field(
                f"{at}.eval.metric", f"{metric!r} is not a {target} metric; use one of {', '.join(allowed)}"
            )
        if target == "game":
            found = GAME_METRIC.fullmatch(metric)
            played = stage.eval.opponents or ["random", "heuristic"]
            if found is None or found["opponent"] not in played:
                raise _Field(
                    f"{at}.eval.metric",
                    f"{metric!r} is not a game metric of this stage; use "
                    f"vs_OPPONENT/win_rate, vs_OPPONENT/score or "
                    f"vs_OPPONENT/seat0/win_rate with OPPONENT in {', '.join(played)}",
                )
            continue
        for fb in stage.eval.feedback or []:
            if fb not in FEEDBACK_KINDS:
                raise _Field(
                    f"{at}.eval.feedback", f"unknown feedback kind {fb!r}; use {', '.join(FEEDBACK_KINDS)}"
                )
        if allowed is None and not re.fullmatch(r"pass@\d+", metric):
            raise _Field(
                f"{at}.eval.metric",
                f"{metric!r} is not a policy metric; use 'pass@1' or 'pass@K' "
                "(or set eval.target = 'critic' for critic metrics)",
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


def format_validation_error(e: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in e.errors():
        if err["type"] == "value_error" and isinstance(err.get("ctx", {}).get("error"), _Field):
            lines.append(f"  {err['ctx']['error']}")
            continue
        loc = [f"[{x}]" if isinstance(x, int) else str(x) for x in err["loc"]]
        field = prefix + ".".join(loc).replace(".[", "[") if loc else (prefix.rstrip(".") or "(top level)")
        msg = (
            "unknown field (check the spelling; see recipes/star-arithmetic.toml)"
            if err["type"] == "extra_forbidden"
            else err["msg"]
        )
        got = "" if err["type"] in ("extra_forbidden", "missing") else f" (got {err.get('input')!r})"
        lines.append(f"  {field}: {msg}{got}")
    return "\n".join(lines)
