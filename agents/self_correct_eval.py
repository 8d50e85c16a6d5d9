"""Self-correction measured: accuracy at turn 1 and at the last turn, and what the revisions changed.

Each held-out task is one greedy two-turn (or K-turn) conversation of the self-correction loop, per feedback
kind, run through the generic runner (batched, resumable, stored). From the stored episodes:
- acc_t1, acc_last: accuracy of the first and of the last turn;
- delta_i2c: share of tasks wrong at turn 1 and right at the last turn; delta_c2i: right, then wrong;
- net = acc_last - acc_t1 = delta_i2c - delta_c2i (SCoRe's Δ(t1, t2)).
They are written on the model version under `{label}/heldout/self_correct/{feedback}/...`, where the
promotion gate and `strop models list` read them.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from strop.agents.engines.base import Engine
from strop.agents.evaluation import metric_key
from strop.agents.loops.base import stable_id
from strop.agents.loops.self_correct import INTRINSIC_INSTRUCTION, Feedback, SelfCorrectConfig, build_graph
from strop.agents.runner import Runner
from strop.critics.base import Critic
from strop.critics.verifier import VerifierCritic
from strop.memory.records import RunRecord
from strop.sandbox.tasks.base import Split, TaskSet

LOOP_NAME = "self_correct_eval"
METRICS = ("acc_t1", "acc_last", "delta_i2c", "delta_c2i", "net")


class SelfCorrectEvalConfig(BaseModel):
    """What a self-correction evaluation measures."""

    model_config = ConfigDict(extra="forbid")

    n_tasks: int = Field(100, ge=1, description="Held-out tasks (the first n, deterministic).")
    feedback: list[Feedback] = Field(
        default_factory=lambda: [Feedback.INTRINSIC],
        description="Feedback kinds to measure, each a separate run.",
    )
    turns: int = Field(2, ge=2, le=8, description="Turns per conversation.")
    max_tokens: int = Field(64, ge=1, description="Most new tokens per turn (greedy).")
    system_prompt: str | None = Field(
        None, description="System message; use the one the policy is trained with."
    )
    instruction: str = Field(INTRINSIC_INSTRUCTION, description="The request to revise.")
    critic_max_tokens: int = Field(160, ge=16, description="Critic feedback: most tokens per critique.")
    critic_shots: int = Field(
        0, ge=0, le=3, description="Critic feedback: worked critiques shown to the critic."
    )

    def loop_config(self, feedback: Feedback) -> SelfCorrectConfig:
        return SelfCorrectConfig(
            turns=self.turns,
            n=1,
            temperature=0.0,
            max_tokens=self.max_tokens,
            system_prompt=self.system_prompt,
            feedback=feedback,
            instruction=self.instruction,
            critic_max_tokens=self.critic_max_tokens,
            critic_shots=self.critic_shots,
            emit="none",
            seed=0,
        )


class SelfCorrectEvalResult(BaseModel):
    model_id: str
    label: str
    n_tasks: int
    scores: dict[str, dict[str, float]] = Field(
        description="Per feedback kind: acc_t1, acc_last, delta_i2c, ..."
    )
    seconds: float = 0.0
    run_ids: list[str] = Field(default_factory=list)
    episodes_run: int = 0

    def metrics(self) -> dict[str, Any]:
        prefix = self_correct_metric_prefix(self.label)
        out: dict[str, Any] = {}
        for feedback, scores in self.scores.items():
            out.update({f"{prefix}/{feedback}/{k}": v for k, v in scores.items()})
            out[f"{prefix}/{feedback}/n_tasks"] = self.n_tasks
        return out


def self_correct_metric_prefix(label: str) -> str:
    return f"{metric_key(label, Split.HELDOUT)}/self_correct"


def score_episodes(outcomes: list[dict[str, Any]]) -> dict[str, float]:
    """The metrics from episode outcomes (each counts conversations: n, first_correct, last_correct, i2c, c2i)."""
    n = sum(int(o.get("n", 0)) for o in outcomes)
    if n == 0:
        return {k: 0.0 for k in METRICS}
    first = sum(int(o["first_correct"]) for o in outcomes) / n
    last = sum(int(o["last_correct"]) for o in outcomes) / n
    return {
        "acc_t1": first,
        "acc_last": last,
        "delta_i2c": sum(int(o["i2c"]) for o in outcomes) / n,
        "delta_c2i": sum(int(o["c2i"]) for o in outcomes) / n,
        "net": last - first,
    }


async def evaluate_self_correction(
    policy: Engine,
    task_set: TaskSet,
    *,
    store: Any,
    model_id: str,
    label: str | None = None,
    config: SelfCorrectEvalConfig | None = None,
    critic: Critic | None = None,
    runner: Runner | None = None,
    record: bool = True,
) -> SelfCorrectEvalResult:
    """Measure the model `policy` serves (registered as `model_id`) at self-correction, per feedback kind.

    `critic` gives critic feedback (required when `config.feedback` has 'critic'); its version keys the run, so
    another critic is another measurement.
    """
    cfg = config or SelfCorrectEvalConfig()
    label = label or task_set.name
    runner = runner or Runner(store)
    tasks = task_set.tasks(Split.HELDOUT, cfg.n_tasks)
    if Feedback.EXECUTION in cfg.feedback and any(t.metadata.get("answer_type") != "code" for t in tasks):
        raise ValueError(
            f"feedback 'execution' runs code, but {label} is not a code task set; use intrinsic, "
            "critic or oracle feedback for it (or a code set such as humaneval)"
        )
    verifier = VerifierCritic(task_set, offload=True)
    started = time.monotonic()
    scores: dict[str, dict[str, float]] = {}
    run_ids: list[str] = []
    ran = 0
    for feedback in dict.fromkeys(cfg.feedback):
        loop_cfg = cfg.loop_config(feedback)
        critic_version = critic.version if feedback == Feedback.CRITIC and critic is not None else None
        run_id = stable_id(
            "self-correct-eval",
            model_id,
            label,
            len(tasks),
            critic_version,
            loop_cfg.model_dump_json(exclude_defaults=True),
        )
        run = RunRecord(
            id=run_id,
            loop=LOOP_NAME,
            model_ids=[model_id],
            config={
                "task_set": label,
                "feedback": str(feedback),
                "critic": critic_version,
                "eval": cfg.model_dump(mode="json"),
            },
        )
        graph = build_graph(policy, verifier, loop_cfg, critic if feedback == Feedback.CRITIC else None)
        result = await runner.run(graph, tasks, run, label=f"self-correct eval {feedback}")
        ran += result.episodes_run
        run_ids.append(run_id)
        scores[str(feedback)] = score_episodes(
            [ep.outcome for ep in store.list_episodes(run_id, children=False)]
        )
    res = SelfCorrectEvalResult(
        model_id=model_id,
        label=label,
        n_tasks=len(tasks),
        scores=scores,
        seconds=time.monotonic() - started,
        run_ids=run_ids,
        episodes_run=ran,
    )
    if record:
        await store.aupdate_model_metrics(model_id, res.metrics())
    return res
