"""The `grpo` kind's settings: TRL's `GRPOConfig` fields, the rollout's sampling and the critics that score it.

Kept apart from the trainer so that a recipe validates its settings without importing TRL: the `loss_type`
values are read from TRL's source file (`allowed_loss_types`), not by importing it.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from strop.critics.base import Critic
from strop.training.settings import BatchSize, GradAccum, LoggingSteps, LrScheduler, TrainerSettings

# TRL 1.16's values, used only if its source cannot be read (see `allowed_loss_types`).
_FALLBACK_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")


@functools.cache
def allowed_loss_types() -> tuple[str, ...]:
    """The `loss_type` values the installed TRL accepts, read from `GRPOConfig`'s own help text.

    Read from the source file, not by importing TRL: settings are validated when a recipe loads, and importing
    TRL (transformers, torch) takes seconds to tens of seconds.
    """
    import re

    try:
        spec = importlib.util.find_spec("trl")
        root = Path(next(iter(spec.submodule_search_locations)))  # type: ignore[union-attr, arg-type]
        tree = ast.parse((root / "trainer" / "grpo_config.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "loss_type":
                call = node.value
                assert isinstance(call, ast.Call)
                meta = next(k.value for k in call.keywords if k.arg == "metadata")
                help_text = ast.literal_eval(meta)["help"]
                part = re.search(r"Supported values are (.*?)\.\s", help_text)
                values = tuple(re.findall(r"'([a-z_]+)'", part.group(1))) if part else ()
                if values:
                    return values
    except (
        OSError,
        SyntaxError,
        StopIteration,
        AssertionError,
        KeyError,
        ValueError,
        TypeError,
        AttributeError,
    ):
        # An unreadable or reshaped TRL source: fall back to the values of the TRL version strop pins.
        return _FALLBACK_LOSS_TYPES
    return _FALLBACK_LOSS_TYPES


def _verifier(task_set: Any, engine: Any) -> Critic:
    from strop.critics.verifier import VerifierCritic

    return VerifierCritic(task_set)


# Critics a reward can name in settings: name -> factory(task_set, policy engine). LLM critics join here.
CRITICS: dict[str, Callable[[Any, Any], Critic]] = {"verifier": _verifier}


class RewardSpec(BaseModel):
    """One reward: a critic and its weight in the sum TRL turns into advantages."""

    model_config = ConfigDict(extra="forbid")

    critic: str = Field(
        "verifier",
        description="Critic that scores each sample (its Critique.reward): 'verifier' "
        "(the task set's ground truth).",
    )
    weight: float = Field(
        1.0, description="Weight of this critic's reward in the total (TRL `reward_weights`)."
    )

    @field_validator("critic")
    @classmethod
    def _known_critic(cls, v: str) -> str:
        if v not in CRITICS:
            raise ValueError(f"unknown critic {v!r}; known critics: {', '.join(sorted(CRITICS))}")
        return v


class GRPOSettings(TrainerSettings):
    """GRPO hyper-parameters (the shared ones in `training.settings`); they map onto TRL's `GRPOConfig` (and
    the stage loop's sampling)."""

    num_generations: int = Field(
        8,
        ge=2,
        description="Samples per task (the GRPO group); the stage's loop samples this many (its `n`).",
    )
    temperature: float = Field(
        0.8,
        gt=0,
        le=10.0,
        description="Sampling temperature of the rollouts; TRL divides "
        "the logits by the same value when it scores them.",
    )
    max_completion_length: int = Field(
        64, ge=1, description="Most new tokens per sample (the loop's `max_tokens`)."
    )
    batch_size: BatchSize = 16
    grad_accum: GradAccum = 4
    generation_batch_size: int | None = Field(
        None,
        validate_default=True,
        description="Completions sampled per generation, i.e. (tasks per generation) x num_generations, all sent "
        "to the engine at once; None: batch_size x grad_accum (one generation per optimizer step). "
        "Must hold whole groups (a multiple of num_generations) and whole micro-batches.",
    )
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides `epochs` when set.")
    lr_scheduler: LrScheduler = "constant"
    loss_type: str = Field(
        "dapo",
        description="TRL loss formulation: dapo (token-level, no length bias), grpo, "
        "dr_grpo, bnpo, cispo, sapo, luspo, vespo.",
    )
    beta: float = Field(
        0.0,
        ge=0,
        description="KL coefficient against the parent model; 0 loads no reference "
        "model (faster, less memory).",
    )
    epsilon: float = Field(0.2, gt=0, description="Lower clipping range of the importance ratio.")
    epsilon_high: float | None = Field(
        None, gt=0, description="Upper clipping range (DAPO's clip-higher, e.g. 0.28); None: same as epsilon."
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description="Divide advantages by the reward std of the group, of the whole batch, or not at all "
        "(Dr. GRPO).",
    )
    num_iterations: int = Field(
        1, ge=1, description="Optimisation passes over each generation batch (GRPO's mu)."
    )
    mask_truncated_completions: bool = Field(
        False, description="Leave samples cut at max_completion_length out of the loss (DAPO)."
    )
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec()],
        min_length=1,
        description="Critics whose weighted rewards score each sample; the first one "
        "also decides which samples failed and critiques them for revival.",
    )
    revive_all_negative: bool = Field(
        False,
        description="When all samples of a task fail, revise one failed answer "
        "with the first critic's critique and let correct revisions "
        "replace failed samples (arXiv 2505.11595).",
    )
    revisions: int = Field(
        1,
        ge=1,
        le=16,
        description="Revisions sampled for an all-negative group; each correct one "
        "replaces a failed sample (at most num_generations - 1).",
    )
    revision_prompt: str = Field(
        "Your answer is wrong: {critique}. Solve the problem again and give the corrected answer.",
        description="The user turn that asks for a revision after the failed answer; {critique} is filled in.",
    )
    logging_steps: LoggingSteps = 1

    @field_validator("loss_type")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        allowed = allowed_loss_types()
        if v not in allowed:
            raise ValueError(f"unknown loss_type {v!r}; TRL accepts: {', '.join(allowed)}")
        return v

    @field_validator("generation_batch_size")
    @classmethod
    def _whole_groups(cls, v: int | None, info: ValidationInfo) -> int | None:
        d = info.data
        if not {"num_generations", "batch_size", "grad_accum"} <= d.keys():
            return v  # an earlier field failed; pydantic reports that one
        g, b = d["num_generations"], d["batch_size"]
        if v is None:
            total = b * d["grad_accum"]
            if total % g:
                raise ValueError(
                    f"batch_size x grad_accum = {b} x {d['grad_accum']} = {total} completions per generation is not "
                    f"a multiple of num_generations ({g}): a generation must hold whole groups; set "
                    f"generation_batch_size, or batch_size/grad_accum"
                )
            return v
        if v < 1:
            raise ValueError(f"generation_batch_size must be at least 1, got {v}")
        if v % g:
            raise ValueError(
                f"generation_batch_size ({v}) is not a multiple of num_generations ({g}): a generation "
                "must hold whole groups"
            )
        if v % b:
            raise ValueError(
                f"generation_batch_size ({v}) is not a multiple of batch_size ({b}): a generation must "
                "split into whole micro-batches"
            )
        return v

    @field_validator("revision_prompt")
    @classmethod
    def _has_critique(cls, v: str) -> str:
        if "{critique}" not in v:
            raise ValueError("revision_prompt must contain {critique}, where the critic's text goes")
        return v

    @property
    def completions_per_generation(self) -> int:
        return self.generation_batch_size or self.batch_size * self.grad_accum
