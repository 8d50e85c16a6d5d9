"""The agent evaluator (`target = "agent"`): the user's own agent on held-out tasks, run through the agent loop.

Why not the policy evaluator: it asks the bare task prompt, while what a user wants improved is their agent,
with its own prompts, tools and turns. This runs the agent loop's entry point on the stage's held-out tasks
(n seeded rollouts each) and records, under `{label}/heldout/agent/`: `accuracy` (share of rollouts judged
correct), `pass@n`, `valid_tool_calls` (share of the calls that tried a tool and produced a valid call; only
when any did), `failed` (share of rollouts that raised, hung or never called the model) and `n_tasks`.
"""

from __future__ import annotations

import re
import time
from typing import Any, Literal

from pydantic import Field, model_validator

from strop.agents.evaluation import metric_key
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
from strop.agents.loops.base import stable_id
from strop.agents.loops.registry import LoopResources, get_loop
from strop.memory.records import ModelVersionRecord, RunRecord
from strop.sandbox.tasks.base import Split

AGENT_METRICS = ("accuracy", "valid_tool_calls", "failed")


class AgentEvalSettings(EvalSettings):
    """Held-out accuracy and tool-call validity of the user's agent (the agent loop's entry point)."""

    target: Literal["agent"] = Field("agent", description="The user's agent through the agent loop.")
    metric: str | None = Field(
        None,
        description="Metric the gate compares: 'accuracy' (default), 'pass@N' (N = n), 'valid_tool_calls'.",
    )
    n: int = Field(1, ge=1, le=64, description="Rollouts per held-out task.")
    seed: int | None = Field(
        0, description="Seed of calls that send none (reproducible evaluation); None: the loop config's."
    )
    timeout_s: float | None = Field(None, gt=0, description="Per rollout; default the loop config's.")
    entry: str | None = Field(None, description="The agent to evaluate; default the loop config's entry.")

    def default_metric(self) -> str:
        return "accuracy"

    @model_validator(mode="after")
    def _metric(self) -> AgentEvalSettings:
        m = self.gate_metric()
        if m not in AGENT_METRICS and not re.fullmatch(r"pass@\d+", m):
            raise FieldCheckError(
                "metric",
                f"metric {m!r} is not an agent metric; use one of {', '.join(AGENT_METRICS)} or pass@N",
            )
        return self


def score_outcomes(outcomes: list[dict[str, Any]]) -> dict[str, float]:
    """The metrics from the agent loop's episode outcomes."""
    rollouts = sum(int(o.get("n", 0)) for o in outcomes)
    out = {
        "accuracy": sum(int(o.get("correct", 0)) for o in outcomes) / rollouts if rollouts else 0.0,
        "failed": sum(int(o.get("failed", 0)) for o in outcomes) / rollouts if rollouts else 0.0,
    }
    n = max((int(o.get("n", 0)) for o in outcomes), default=1)
    out[f"pass@{n}"] = sum(bool(o.get("pass")) for o in outcomes) / len(outcomes) if outcomes else 0.0
    valid = sum(int(o.get("valid_tool_calls", 0)) for o in outcomes)
    invalid = sum(int(o.get("invalid_tool_calls", 0)) for o in outcomes)
    if valid + invalid:
        out["valid_tool_calls"] = valid / (valid + invalid)
    return out


class AgentEvaluator(EvaluatorDefaults):
    """The user's agent on held-out tasks: accuracy, pass@n, share of valid tool calls."""

    name = "agent"
    settings = AgentEvalSettings
    score_label = "acc"

    def metric_prefix(self, ctx: EvalContext) -> str:
        return f"{metric_key(ctx.label, Split.HELDOUT)}/agent"

    def extra_metric(self, ctx: EvalContext) -> tuple[str, str] | None:
        return ("tools", f"{self.metric_prefix(ctx)}/valid_tool_calls")

    async def evaluate(self, version: ModelVersionRecord, ctx: EvalContext) -> None:
        s: AgentEvalSettings = ctx.settings
        spec = get_loop("agent")
        base = ctx.loop_config.model_dump() if isinstance(ctx.loop_config, spec.config) else {}
        overrides = {"entry": s.entry, "timeout_s": s.timeout_s, "seed": s.seed}
        values = {**base, **{k: v for k, v in overrides.items() if v is not None}}
        if "entry" not in values:
            raise ValueError(
                "the agent evaluator needs an agent: set [stages.eval] entry = 'module:function' (the stage's "
                "loop is not the agent loop)"
            )
        # the policy itself answers: a stage's demonstration teacher never plays in its evaluation
        cfg = spec.parse_config(
            {**values, "n": s.n, "emit_advantages": False, "emit_sft": False, "teacher": None}
        )
        tasks = ctx.task_set.tasks(Split.HELDOUT, ctx.heldout)
        run = RunRecord(
            id=stable_id("agent-eval", version.id, ctx.label, len(tasks), cfg.model_dump_json()),
            loop="agent_eval",
            model_ids=[version.id],
            config={"task_set": ctx.label, "loop": cfg.model_dump(mode="json")},
        )
        engine = ctx.serve(version)
        graph = spec.make(
            LoopResources(
                engines={"policy": engine}, task_set=ctx.task_set, store=ctx.store, label=ctx.label
            ),
            cfg,
        )
        started = time.monotonic()
        result = await ctx.runner().run(graph, tasks, run, label="agent eval")
        seconds = time.monotonic() - started
        scores = score_outcomes([ep.outcome for ep in ctx.store.list_episodes(run.id, children=False)])
        prefix = self.metric_prefix(ctx)
        ctx.store.update_model_metrics(
            version.id, {**{f"{prefix}/{k}": v for k, v in scores.items()}, f"{prefix}/n_tasks": len(tasks)}
        )
        record_seconds(ctx, version, "eval_seconds", seconds, result.episodes_run)
        tools = scores.get("valid_tool_calls")
        ctx.say(
            f"{version.name}: {ctx.label} agent held-out accuracy {pct(scores['accuracy'])}"
            + (f", valid tool calls {pct(tools)}" if tools is not None else "")
            + f", failed {pct(scores['failed'])} on {len(tasks)} tasks ({how(seconds, result.episodes_run)})"
        )


register_evaluator(AgentEvaluator())
