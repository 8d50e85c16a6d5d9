"""The critic evaluator (`target = "critic"`): the critic benchmark, as a written critique or as a PRM.

Labelled held-out solutions (half right, half with one corrupted step) are judged by the critic role; the
gate reads first-wrong-step F1 (or step accuracy, correction...). The default for every stage that trains the
critic role. When the critic shares the policy's weights, the policy's held-out pass@1 is measured beside it,
so a critic gain bought by a policy loss shows in the table.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from strop.agents.critic_eval import CriticEvalConfig, critic_metric_prefix, evaluate_critic, labelled_set
from strop.agents.evaluators import register_evaluator
from strop.agents.evaluators.answers import answers_prefix, evaluate_answers
from strop.agents.evaluators.base import (
    EvalContext,
    EvalSettings,
    EvaluatorDefaults,
    FieldCheckError,
    how,
    pct,
    record_seconds,
)
from strop.memory.records import ModelVersionRecord

CRITIC_METRICS = ("f1", "acc_erroneous", "acc_correct", "correction_acc")


class CriticSettings(EvalSettings):
    """The critic benchmark on labelled held-out solutions (its size is the stage's `tasks.heldout`)."""

    target: Literal["critic"] = Field("critic", description="The critic benchmark.")
    metric: str | None = Field(
        None,
        description="Metric the gate compares: 'f1' (default), 'acc_erroneous', 'acc_correct' or "
        "'correction_acc'.",
    )
    seed: int = Field(0, description="Seed of the labelled set (its size is `tasks.heldout`).")
    critic_max_tokens: int = Field(160, ge=16, description="Most tokens per critique.")
    critic_kind: Literal["generative", "prm"] | None = Field(
        None,
        description="How the benchmark asks the critic, 'generative' (a written step-wise critique) or 'prm' "
        "(one Yes/No per step prefix, scores under <set>/prm/). Default: the loop's `critic_kind` where it has "
        "one (the sneaky loop), else generative.",
    )
    policy_accuracy: bool = Field(
        True,
        description="Also measure the policy's held-out pass@1 when the critic shares its weights, so a critic "
        "gain bought by a policy loss shows in the table.",
    )
    k: int | None = Field(None, ge=2, description="Policy accuracy beside it: also record pass@k.")
    max_tokens: int | None = Field(
        None, ge=1, description="Policy accuracy beside it: most new tokens per answer (default the loop's)."
    )
    system_prompt: str | None = Field(
        None, description="Policy accuracy beside it: system message (default the loop's)."
    )

    def default_metric(self) -> str:
        return "f1"

    @model_validator(mode="after")
    def _metric(self) -> CriticSettings:
        if self.gate_metric() not in CRITIC_METRICS:
            raise FieldCheckError(
                "metric",
                f"metric {self.gate_metric()!r} is not a critic metric; use one of {', '.join(CRITIC_METRICS)}",
            )
        return self


def critic_kind(ctx: EvalContext) -> Literal["generative", "prm"]:
    """The eval's `critic_kind`, else the loop's (the sneaky loop's Yes/No critic is a 'prm'), else generative."""
    if ctx.settings.critic_kind is not None:
        return ctx.settings.critic_kind
    return "prm" if ctx.loop_default("critic_kind") == "prm" else "generative"


class CriticEvaluator(EvaluatorDefaults):
    """First-wrong-step F1 (generative) or step accuracy (PRM) of the critic role on a labelled set."""

    name = "critic"
    settings = CriticSettings
    score_label = "score"

    def metric_prefix(self, ctx: EvalContext) -> str:
        return critic_metric_prefix(ctx.label, critic_kind(ctx))

    def extra_metric(self, ctx: EvalContext) -> tuple[str, str] | None:
        return "policy acc", f"{answers_prefix(ctx.label)}/pass@1"

    async def evaluate(self, version: ModelVersionRecord, ctx: EvalContext) -> None:
        s: CriticSettings = ctx.settings
        # The critic is asked as its loop asks it (same worked examples), so its training prompts match.
        cfg = CriticEvalConfig(
            n_items=ctx.heldout,
            seed=s.seed,
            max_tokens=s.critic_max_tokens,
            kind=critic_kind(ctx),
            shots=ctx.loop_default("shots", default=1),
        )
        res = await evaluate_critic(
            ctx.serve(version),
            labelled_set(ctx.task_set, cfg, ctx.label),
            store=ctx.store,
            model_id=version.id,
            label=ctx.label,
            config=cfg,
            runner=ctx.runner(),
        )
        record_seconds(ctx, version, "critic_eval_seconds", res.seconds, res.episodes_run)
        sc = res.scores
        ctx.say(
            f"{version.name}: {ctx.label} critic F1 {pct(sc.get('f1'))} (first wrong step found "
            f"{pct(sc.get('acc_erroneous'))}, right accepted {pct(sc.get('acc_correct'))}), correction "
            f"{pct(sc.get('correction_acc'))}, unparsed {sc.get('unparsed')}/{res.n_items} "
            f"({how(res.seconds, res.episodes_run)})"
        )
        if s.policy_accuracy and ctx.shares_weights(ctx.role, "policy"):
            await evaluate_answers(
                version, ctx, k=s.k, max_tokens=s.max_tokens, system_prompt=s.system_prompt
            )


register_evaluator(CriticEvaluator())
