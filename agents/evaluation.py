"""Held-out evaluation through the same runner and loop that collect training data.

pass@1 is one greedy answer per task; pass@k samples k answers per task and counts a task solved when any is
correct. Results are written on the model version in the registry, so the promotion gate and
`strop models list` read the same numbers. An evaluation is an ordinary run whose id is a function of what
was evaluated, so an interrupted evaluation resumes instead of starting over.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from agents.engines.base import Engine
from agents.loops import best_of_n
from agents.loops.base import stable_id
from agents.runner import Runner
from critics.verifier import VerifierCritic
from memory.records import RunRecord
from sandbox.tasks.base import Split, TaskSet


class EvalConfig(BaseModel):
    """What an evaluation measures."""

    split: Split = Field(Split.HELDOUT, description="Task split to evaluate on; held-out for promotion decisions.")
    n_tasks: int = Field(100, ge=1, description="Number of tasks of the split (the first n, deterministic).")
    k: int | None = Field(None, ge=2, description="Also measure pass@k with k sampled answers per task.")
    k_temperature: float = Field(0.8, gt=0.0, description="Sampling temperature for pass@k.")
    max_tokens: int = Field(64, ge=1, description="Most new tokens per answer.")
    system_prompt: str | None = Field(None, description="System message; use the one the policy is trained with.")


class EvalResult(BaseModel):
    model_id: str
    task_set: str
    split: str
    n_tasks: int
    pass_at_1: float = Field(description="Greedy accuracy.")
    k: int | None = None
    pass_at_k: float | None = None
    seconds: float = 0.0
    run_ids: list[str] = Field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        """The metrics written on the model version (flat keys, so a shallow merge keeps older ones)."""
        key = metric_key(self.task_set, self.split)
        out: dict[str, Any] = {f"{key}/pass@1": self.pass_at_1, f"{key}/n_tasks": self.n_tasks}
        if self.k is not None and self.pass_at_k is not None:
            out[f"{key}/pass@{self.k}"] = self.pass_at_k
        if self.split == Split.HELDOUT:
            out["heldout_accuracy"] = self.pass_at_1
        return out


def metric_key(task_set: str, split: str | Split) -> str:
    return f"{task_set}/{Split(split)}"


async def evaluate(
    engine: Engine, task_set: TaskSet, *, store: Any, model_id: str, config: EvalConfig | None = None,
    runner: Runner | None = None, record: bool = True,
) -> EvalResult:
    """Evaluate the model the engine serves (registered as `model_id`) and record the result on it."""
    cfg = config or EvalConfig()
    runner = runner or Runner(store)
    tasks = task_set.tasks(cfg.split, cfg.n_tasks)
    critic = VerifierCritic(task_set)
    started = time.monotonic()
    modes: list[tuple[str, best_of_n.BestOfNConfig]] = [
        ("pass@1", best_of_n.BestOfNConfig(n=1, temperature=0.0, max_tokens=cfg.max_tokens,
                                           system_prompt=cfg.system_prompt, emit_examples=False)),
    ]
    if cfg.k is not None:
        modes.append((f"pass@{cfg.k}", best_of_n.BestOfNConfig(
            n=cfg.k, temperature=cfg.k_temperature, max_tokens=cfg.max_tokens,
            system_prompt=cfg.system_prompt, emit_examples=False, seed=0)))
    scores: dict[str, float] = {}
    run_ids: list[str] = []
    for mode, loop_cfg in modes:
        run_id = stable_id("eval", model_id, task_set.name, cfg.split, cfg.n_tasks, mode, loop_cfg.model_dump_json(exclude_defaults=True))
        run = RunRecord(id=run_id, loop="eval", model_ids=[model_id],
                        config={"mode": mode, "task_set": task_set.name, "eval": cfg.model_dump(mode="json")})
        graph = best_of_n.build_graph(engine, critic, loop_cfg)
        result = await runner.run(graph, tasks, run, label=f"eval {mode}")
        scores[mode] = result.pass_rate
        run_ids.append(run_id)
    res = EvalResult(
        model_id=model_id, task_set=task_set.name, split=str(cfg.split), n_tasks=len(tasks),
        pass_at_1=scores["pass@1"], k=cfg.k, pass_at_k=scores.get(f"pass@{cfg.k}") if cfg.k else None,
        seconds=time.monotonic() - started, run_ids=run_ids,
    )
    if record:
        await store.aupdate_model_metrics(model_id, res.metrics())
    return res
