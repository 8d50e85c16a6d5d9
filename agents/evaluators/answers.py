"""The answers evaluator (`target = "policy"`): held-out pass@1 (greedy) and optionally pass@k of the policy.

The default of every loop whose examples train the policy to answer (best-of-N, SCRIT's policy, MCTS, GRPO).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from strop.agents.evaluation import EvalConfig, evaluate, metric_key
from strop.agents.evaluators import register_evaluator
from strop.agents.evaluators.base import (
    EvalContext,
    EvalSettings,
    EvaluatorDefaults,
    FieldCheckError,
    how,
    record_seconds,
)
from strop.memory.records import ModelVersionRecord
from strop.sandbox.tasks.base import Split


class AnswerSettings(EvalSettings):
    """Held-out accuracy of the answers the trained role gives (greedy pass@1; pass@k with `k`)."""

    target: Literal["policy"] = Field("policy", description="Held-out pass@k of the policy's answers.")
    k: int | None = Field(
        None, ge=2, description="Also record pass@k with k sampled answers (pass@1 is always greedy)."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Most new tokens per answer; default the loop config's max_tokens (else 64)."
    )
    system_prompt: str | None = Field(
        None, description="System message; default the loop config's system_prompt."
    )
    metric: str | None = Field(None, description="Metric the gate compares: 'pass@1' (default) or 'pass@K'.")

    def default_metric(self) -> str:
        return "pass@1"

    @model_validator(mode="after")
    def _metric(self) -> AnswerSettings:
        if not re.fullmatch(r"pass@\d+", self.gate_metric()):
            raise FieldCheckError(
                "metric",
                f"metric {self.gate_metric()!r} is not a policy metric; use 'pass@1' or 'pass@K' "
                "(or set target = 'critic' for critic metrics)",
            )
        return self


async def evaluate_answers(
    version: ModelVersionRecord,
    ctx: EvalContext,
    *,
    k: int | None,
    max_tokens: int | None,
    system_prompt: str | None,
) -> None:
    """Greedy pass@1 (and pass@k) of `version` on the stage's held-out tasks, as the loop asks them."""
    cfg = EvalConfig(
        split=Split.HELDOUT,
        n_tasks=ctx.heldout,
        k=k,
        max_tokens=max_tokens or ctx.loop_default("max_tokens", "solution_max_tokens", default=64),
        system_prompt=system_prompt or ctx.loop_default("system_prompt"),
    )
    res = await evaluate(
        ctx.serve(version),
        ctx.task_set,
        store=ctx.store,
        model_id=version.id,
        config=cfg,
        runner=ctx.runner(),
        label=ctx.label,
    )
    record_seconds(ctx, version, "eval_seconds", res.seconds, res.episodes_run)
    ctx.say(
        f"{version.name}: {ctx.label} held-out pass@1 {res.pass_at_1:.1%} on {res.n_tasks} tasks "
        f"({how(res.seconds, res.episodes_run)})"
    )


def answers_prefix(label: str) -> str:
    return metric_key(label, Split.HELDOUT)


class AnswersEvaluator(EvaluatorDefaults):
    """Held-out pass@1/pass@k of the trained role's answers."""

    name = "policy"
    settings = AnswerSettings
    score_label = "acc"

    def metric_prefix(self, ctx: EvalContext) -> str:
        return answers_prefix(ctx.label)

    async def evaluate(self, version: ModelVersionRecord, ctx: EvalContext) -> None:
        s: AnswerSettings = ctx.settings
        await evaluate_answers(version, ctx, k=s.k, max_tokens=s.max_tokens, system_prompt=s.system_prompt)


register_evaluator(AnswersEvaluator())
