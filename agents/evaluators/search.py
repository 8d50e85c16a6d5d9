"""The search evaluator (`target = "search"`): accuracy of search against sampling at equal token budgets.

Greedy, majority of N, PRM reranking and MCTS guided by the PRM, each at each budget of generated tokens per
task (agents/search_eval.py), on held-out tasks. The gate reads one method at one budget, by default MCTS with
the PRM at the smallest budget: it promotes a policy or PRM that makes search better where search is cheapest.
The policy is the trained role's weights when they are the policy's (else the policy's starting version); the
PRM likewise for the critic role.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field, model_validator

from strop.agents.evaluators import register_evaluator
from strop.agents.evaluators.answers import answers_prefix
from strop.agents.evaluators.base import (
    EvalContext,
    EvalSettings,
    EvaluatorDefaults,
    FieldCheckError,
    how,
    pct,
)
from strop.agents.search_eval import METHODS, SearchEvalConfig, evaluate_search
from strop.critics.scorer import StepScorer
from strop.memory.records import ModelVersionRecord


class SearchSettings(EvalSettings):
    """Accuracy per budget of greedy, majority, PRM reranking and MCTS with the PRM (`tasks.heldout` tasks)."""

    target: Literal["search"] = Field("search", description="Search against sampling at equal budgets.")
    metric: str | None = Field(
        None,
        description="'METHOD@BUDGET' the gate compares, METHOD one of greedy, majority, prm-rerank, mcts-prm and "
        "BUDGET one of `budgets`; default mcts-prm at the smallest budget.",
    )
    budgets: list[int] = Field(
        default_factory=lambda: [256, 512, 1024], min_length=1, description="Generated tokens per task."
    )
    max_tokens: int = Field(96, ge=1, description="Most tokens per sampled answer.")
    temperature: float = Field(
        0.8, gt=0.0, description="Sampling temperature of answers and search steps (without a sweep)."
    )
    temperatures: list[float] | None = Field(
        None,
        description="Sweep these temperatures on a seeded sample of `sweep_tasks` training tasks and run each "
        "sampled method on the held-out tasks at its best one (per budget; never tuned on held-out tasks).",
    )
    sweep_tasks: int = Field(16, ge=1, description="Training tasks the temperature sweep samples.")
    sweep_seed: int = Field(0, description="Seed of the sweep's sample of training tasks.")
    k: int = Field(3, ge=1, description="MCTS: candidate steps per expansion.")
    max_step_tokens: int = Field(32, ge=1, description="MCTS: most tokens per step.")
    seed: int = Field(0, description="Sampling seed.")

    def default_metric(self) -> str:
        return f"mcts-prm@{min(self.budgets)}"

    @model_validator(mode="after")
    def _metric(self) -> SearchSettings:
        method, _, budget = self.gate_metric().partition("@")
        if method not in METHODS or not budget.isdigit() or int(budget) not in self.budgets:
            raise FieldCheckError(
                "metric",
                f"metric {self.gate_metric()!r} is not a search metric of this stage; use METHOD@BUDGET with "
                f"METHOD in {', '.join(METHODS)} and BUDGET in {self.budgets}",
            )
        if self.temperatures is not None and (not self.temperatures or min(self.temperatures) <= 0):
            raise FieldCheckError(
                "temperatures",
                f"temperatures {self.temperatures}: give at least one, each above 0 (greedy is always compared)",
            )
        return self


class SearchEvaluator(EvaluatorDefaults):
    """Held-out accuracy of each search method at each token budget; the gate reads one of them."""

    name = "search"
    settings = SearchSettings
    score_label = "acc"

    def metric_prefix(self, ctx: EvalContext) -> str:
        return f"{answers_prefix(ctx.label)}/search"

    async def evaluate(self, version: ModelVersionRecord, ctx: EvalContext) -> None:
        s: SearchSettings = ctx.settings
        served = ctx.serve(version)
        policy = served if ctx.shares_weights(ctx.role, "policy") else ctx.serve_role("policy", None)
        prm = served if ctx.shares_weights(ctx.role, "critic") else ctx.serve_role("critic", None)
        cfg = SearchEvalConfig(
            n_tasks=ctx.heldout,
            budgets=s.budgets,
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            temperatures=s.temperatures,
            sweep_tasks=s.sweep_tasks,
            sweep_seed=s.sweep_seed,
            system_prompt=ctx.loop_default("system_prompt", default=SearchEvalConfig().system_prompt),
            k=s.k,
            max_step_tokens=s.max_step_tokens,
            seed=s.seed,
        )
        started = time.monotonic()
        res = await evaluate_search(
            policy,
            StepScorer(prm),
            ctx.task_set,
            store=ctx.store,
            model_id=version.id,
            label=ctx.label,
            config=cfg,
            runner=ctx.runner(),
        )
        seconds = time.monotonic() - started
        # the gate compares like with like: the same number of tasks on both sides
        ctx.store.update_model_metrics(
            version.id, {f"{self.metric_prefix(ctx)}/n_tasks": ctx.heldout, "eval_seconds": seconds}
        )
        b = min(s.budgets)
        ctx.say(
            f"{version.name}: {ctx.label} search at {b} tokens: "
            + ", ".join(f"{m} {pct(res.accuracy[m][b])}" for m in METHODS)
            + f" on {ctx.heldout} tasks ({how(seconds, 1)})"
            + (
                ", temperatures chosen on training tasks: "
                + ", ".join(f"{m} {t[b]:g}" for m, t in res.temperature.items())
                if res.sweep is not None
                else ""
            )
        )


register_evaluator(SearchEvaluator())
