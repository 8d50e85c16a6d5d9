"""The self-correction evaluator (`target = "self_correct"`): greedy K-turn conversations on held-out tasks.

Per feedback kind: accuracy at turn 1 and at the last turn, wrong-to-right and right-to-wrong shares (SCoRe's
Δ). The gate reads the first feedback kind. The default of the self-correction loop.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from strop.agents.evaluators import register_evaluator
from strop.agents.evaluators.base import (
    EvalContext,
    EvalSettings,
    EvaluatorDefaults,
    FieldCheckError,
    how,
    pct,
    record_seconds,
)
from strop.agents.loops.registry import LoopResources
from strop.agents.loops.self_correct import Feedback, critic_for
from strop.agents.self_correct_eval import (
    SelfCorrectEvalConfig,
    evaluate_self_correction,
    self_correct_metric_prefix,
)
from strop.memory.records import ModelVersionRecord

SELF_CORRECT_METRICS = ("acc_last", "acc_t1", "net", "delta_i2c")
# the loop config fields an evaluation conversation copies, so it asks as the loop trained
_LOOP_FIELDS = ("max_tokens", "system_prompt", "instruction", "critic_max_tokens", "critic_shots")


class SelfCorrectSettings(EvalSettings):
    """Greedy K-turn conversations on held-out tasks, per feedback kind."""

    target: Literal["self_correct"] = Field("self_correct", description="Self-correction conversations.")
    metric: str | None = Field(
        None,
        description="Metric the gate compares, of the first feedback kind: 'acc_last' (default), 'acc_t1', "
        "'net', 'delta_i2c'.",
    )
    feedback: list[Feedback] | None = Field(
        None,
        description="Feedback kinds to measure (intrinsic, critic, oracle, execution); the gate reads the "
        "first. Default: the loop's own feedback.",
    )
    turns: int | None = Field(None, ge=2, le=8, description="Turns per conversation (default the loop's).")
    max_tokens: int | None = Field(None, ge=1, description="Most new tokens per turn (default the loop's).")
    system_prompt: str | None = Field(None, description="System message (default the loop's).")

    def default_metric(self) -> str:
        return "acc_last"

    @model_validator(mode="after")
    def _metric(self) -> SelfCorrectSettings:
        if self.gate_metric() not in SELF_CORRECT_METRICS:
            raise FieldCheckError(
                "metric",
                f"metric {self.gate_metric()!r} is not a self_correct metric; use one of "
                f"{', '.join(SELF_CORRECT_METRICS)}",
            )
        return self


def eval_config(ctx: EvalContext) -> SelfCorrectEvalConfig:
    s: SelfCorrectSettings = ctx.settings
    loop = ctx.loop_config
    return SelfCorrectEvalConfig(
        n_tasks=ctx.heldout,
        feedback=s.feedback or [getattr(loop, "feedback", "intrinsic")],
        turns=s.turns or getattr(loop, "turns", 2),
        **{f: getattr(loop, f) for f in _LOOP_FIELDS if hasattr(loop, f)},
        **({"max_tokens": s.max_tokens} if s.max_tokens else {}),
        **({"system_prompt": s.system_prompt} if s.system_prompt else {}),
    )


class SelfCorrectEvaluator(EvaluatorDefaults):
    """Turn-1 and last-turn accuracy of greedy self-correction conversations."""

    name = "self_correct"
    settings = SelfCorrectSettings
    score_label = "acc"

    def metric_prefix(self, ctx: EvalContext) -> str:
        return f"{self_correct_metric_prefix(ctx.label)}/{eval_config(ctx).feedback[0]}"

    async def evaluate(self, version: ModelVersionRecord, ctx: EvalContext) -> None:
        """Critic feedback comes from the critic role: the evaluated weights themselves when the critic shares
        them, else the critic role's starting version (so every candidate is judged by the same critic)."""
        cfg = eval_config(ctx)
        served = ctx.serve(version)
        critic = None
        if "critic" in cfg.feedback:
            engine = served if ctx.shares_weights("critic", ctx.role) else ctx.serve_role("critic", None)
            critic = critic_for(
                LoopResources(engines={"critic": engine}, task_set=ctx.task_set),
                cfg.loop_config(Feedback.CRITIC),
            )
        res = await evaluate_self_correction(
            served,
            ctx.task_set,
            store=ctx.store,
            model_id=version.id,
            label=ctx.label,
            config=cfg,
            critic=critic,
            runner=ctx.runner(),
        )
        record_seconds(ctx, version, "eval_seconds", res.seconds, res.episodes_run)
        for fb, sc in res.scores.items():
            ctx.say(
                f"{version.name}: {ctx.label} self-correction ({fb}) turn 1 {pct(sc['acc_t1'])} -> turn "
                f"{cfg.turns} {pct(sc['acc_last'])}, wrong->right {pct(sc['delta_i2c'])}, right->wrong "
                f"{pct(sc['delta_c2i'])} on {res.n_tasks} tasks ({how(res.seconds, res.episodes_run)})"
            )


register_evaluator(SelfCorrectEvaluator())
