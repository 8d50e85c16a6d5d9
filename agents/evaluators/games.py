"""The games evaluator (`target = "game"`): greedy games on held-out seeds against fixed opponents.

Each seed is played from both seats against each opponent; win, draw and loss rates per seat and pooled, and
the illegal-move rate. Optionally, held-out pass@1 on a reasoning task set for every version (does game play
transfer?), reported beside the gate and never gated. The default of the self-play and game-demo loops.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from strop.agents.evaluation import EvalConfig, evaluate, task_set_label
from strop.agents.evaluators import register_evaluator
from strop.agents.evaluators.answers import answers_prefix
from strop.agents.evaluators.base import (
    EvalContext,
    EvalSettings,
    EvaluatorDefaults,
    FieldCheckError,
    pct,
    record_seconds,
)
from strop.agents.game_eval import GameEvalConfig, eval_label, evaluate_games
from strop.memory.records import ModelVersionRecord

# A rate against one opponent, pooled over seats or of one seat (higher is better).
GAME_METRIC = re.compile(r"vs_(?P<opponent>\w+?)/(?:seat[01]/)?(?:win_rate|score|draw_rate)")


class TransferTasks(BaseModel):
    """A reasoning task set measured beside a game stage (see `strop tasks list`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("arithmetic", description="Task set name.")
    options: dict[str, Any] = Field(default_factory=dict, description="Options of the task set.")
    heldout: int = Field(100, ge=1, description="Held-out tasks, greedy pass@1.")


class GameSettings(EvalSettings):
    """Greedy games on held-out seeds (`tasks.heldout`) against fixed opponents, from each seat."""

    target: Literal["game"] = Field("game", description="Games against fixed opponents.")
    metric: str | None = Field(
        None,
        description="Metric the gate compares: 'vs_random/win_rate' (default: averaged over the two seats), "
        "'vs_heuristic/score' (wins + draws/2), 'vs_random/seat1/win_rate', ...",
    )
    max_tokens: int | None = Field(None, ge=1, description="Most new tokens per move (default the loop's).")
    seed: int = Field(0, description="Seeds the fixed opponents' choices.")
    opponents: list[Literal["random", "heuristic"]] | None = Field(
        None, description="The fixed opponents played (default both, random and heuristic)."
    )
    transfer: TransferTasks | None = Field(
        None,
        description="Also measure greedy held-out pass@1 on this task set (e.g. {name = 'arithmetic', heldout = "
        "100}) for every version, to see whether game play transfers to reasoning (reported, not gated).",
    )
    transfer_max_tokens: int = Field(64, ge=1, description="Most tokens per transfer answer.")

    def default_metric(self) -> str:
        return "vs_random/win_rate"

    def played(self) -> list[str]:
        return list(self.opponents or ["random", "heuristic"])

    @model_validator(mode="after")
    def _metric(self) -> GameSettings:
        found = GAME_METRIC.fullmatch(self.gate_metric())
        if found is None or found["opponent"] not in self.played():
            raise FieldCheckError(
                "metric",
                f"metric {self.gate_metric()!r} is not a game metric of this stage; use vs_OPPONENT/win_rate, "
                f"vs_OPPONENT/score or vs_OPPONENT/seat0/win_rate with OPPONENT in {', '.join(self.played())}",
            )
        return self


def transfer_label(t: TransferTasks) -> str:
    return task_set_label(t.name, t.options)


class GamesEvaluator(EvaluatorDefaults):
    """Win rates of greedy games against fixed opponents (and transfer to a reasoning task set)."""

    name = "game"
    settings = GameSettings
    score_label = "score"

    def metric_prefix(self, ctx: EvalContext) -> str:
        return eval_label(ctx.task_set)

    def extra_metric(self, ctx: EvalContext) -> tuple[str, str] | None:
        t = ctx.settings.transfer
        return None if t is None else ("transfer acc", f"{answers_prefix(transfer_label(t))}/pass@1")

    def gate_text(self, ctx: EvalContext) -> str:
        prefix = self.metric_prefix(ctx)
        return f"{ctx.settings.gate_metric()} on {ctx.heldout} {prefix} seeds"

    async def evaluate(self, version: ModelVersionRecord, ctx: EvalContext) -> None:
        s: GameSettings = ctx.settings
        cfg = GameEvalConfig(
            n_tasks=ctx.heldout,
            max_tokens=s.max_tokens or getattr(ctx.loop_config, "max_tokens", 64),
            seed=s.seed,
            **({"opponents": s.opponents} if s.opponents else {}),
        )
        served = ctx.serve(version)
        res = await evaluate_games(
            served, ctx.task_set, store=ctx.store, model_id=version.id, config=cfg, runner=ctx.runner()
        )
        seconds = res.seconds
        sc = res.scores()
        line = ", ".join(
            f"vs {o} {pct(sc[f'vs_{o}/win_rate'])} won ({pct(sc[f'vs_{o}/seat0/win_rate'])} / "
            f"{pct(sc[f'vs_{o}/seat1/win_rate'])} by seat)"
            for o in cfg.opponents
        )
        ctx.say(
            f"{version.name}: {res.label} on {res.n_tasks} held-out seeds: {line}, illegal moves "
            f"{pct(sc['illegal_rate'])}"
        )
        if s.transfer is not None:
            from strop.sandbox.tasks import load_task_set

            label = transfer_label(s.transfer)
            tr = await evaluate(
                served,
                load_task_set(s.transfer.name, **s.transfer.options),
                store=ctx.store,
                model_id=version.id,
                config=EvalConfig(n_tasks=s.transfer.heldout, max_tokens=s.transfer_max_tokens),
                runner=ctx.runner(),
                label=label,
            )
            seconds += tr.seconds
            ctx.say(f"{version.name}: transfer to {label}: held-out pass@1 {tr.pass_at_1:.1%}")
        record_seconds(ctx, version, "eval_seconds", seconds, res.episodes_run)


register_evaluator(GamesEvaluator())
