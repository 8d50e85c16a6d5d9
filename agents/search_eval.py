"""Search against sampling at equal cost: accuracy per budget of generated tokens, on held-out tasks.

For each budget B (tokens generated per task, the policy's own tokens; a PRM's one-token Yes/No replies are
not counted, and are the same for both reranked methods):
- greedy: one greedy answer (its cost is what it is; it is the floor);
- majority: best-of-N with N = B / (mean tokens of a greedy answer), the most common final answer;
- prm-rerank: the same N answers, the one whose weakest step the PRM scores highest;
- mcts-prm: MCTS with the PRM as the value (no ground truth at test time), B tokens, the best leaf by Q;
  with `finish`, a search that reaches no answer within B completes its best partial solution greedily
  (inside B: the last `max_tokens` are kept for it).
Every run goes through the runner (stored, resumable); the figures are recorded on the policy's model
version under `<set>/heldout/search/<method>@<B>`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from strop.agents.engines.base import Engine
from strop.agents.evaluation import metric_key
from strop.agents.loops import best_of_n, mcts
from strop.agents.loops.base import stable_id
from strop.agents.runner import Runner
from strop.critics.scorer import StepScorer
from strop.critics.steps import split_steps
from strop.critics.verifier import VerifierCritic
from strop.memory.records import EpisodeRecord, RunRecord
from strop.sandbox.tasks.base import Split, TaskSet

METHODS = ("greedy", "majority", "prm-rerank", "mcts-prm")


class SearchEvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_tasks: int = Field(50, ge=1, description="Held-out tasks (the first n).")
    budgets: list[int] = Field(
        default_factory=lambda: [256, 512, 1024], description="Generated tokens per task."
    )
    max_tokens: int = Field(96, ge=1, description="Most tokens per sampled answer.")
    temperature: float = Field(0.8, gt=0.0, description="Sampling temperature of answers and search steps.")
    system_prompt: str | None = Field(
        mcts.MCTSConfig().system_prompt, description="The policy's system message."
    )
    k: int = Field(3, ge=1, description="MCTS: candidate steps per expansion.")
    max_step_tokens: int = Field(32, ge=1, description="MCTS: most tokens per step.")
    seed: int = Field(0)


class SearchEvalResult(BaseModel):
    """Accuracy and mean generated tokens per task, of each method at each budget."""

    accuracy: dict[str, dict[int, float]] = Field(description="{method: {budget: held-out accuracy}}")
    tokens: dict[str, dict[int, float]] = Field(
        description="{method: {budget: mean tokens generated per task}}"
    )


def majority_pick(episode: EpisodeRecord) -> bool:
    """Is the most common extracted answer right? (ties: the answer seen first; no answer counts as wrong)"""
    right = _verdicts(episode)
    answers = [(s.metadata.get("extracted"), right[s.id]) for s in episode.steps]
    counts = Counter(a for a, _ in answers if a is not None)
    if not counts:
        return False
    top = counts.most_common(1)[0][0]
    return next(ok for a, ok in answers if a == top)


async def prm_pick(scorer: StepScorer, task: Any, episode: EpisodeRecord) -> bool:
    """Is the answer whose weakest step the PRM scores highest right?"""

    async def weakest(text: str) -> float:
        steps, _ = split_steps(text)
        if not steps:
            return 0.0
        scores = await scorer.score_steps(task, text)
        return min((p if p is not None else 0.0) for p in scores)

    mins = await asyncio.gather(*(weakest(s.text) for s in episode.steps))
    best = max(range(len(mins)), key=lambda i: (mins[i], -i))
    return _verdicts(episode)[episode.steps[best].id]


def _verdicts(episode: EpisodeRecord) -> dict[str, bool]:
    """Each sampled answer's verdict, by step id (critiques are stored in id order, not sample order)."""
    return {c.step_id: c.verdict == "correct" for c in episode.critiques if c.step_id is not None}


async def evaluate_search(
    policy: Engine,
    prm: StepScorer,
    task_set: TaskSet,
    *,
    store: Any,
    model_id: str,
    label: str,
    config: SearchEvalConfig | None = None,
    runner: Runner | None = None,
    record: bool = True,
) -> SearchEvalResult:
    """Accuracy of each method at each budget, and what each really spent (the budget is a ceiling for MCTS,
    a target for best-of-N, whose N is rounded)."""
    cfg = config or SearchEvalConfig()
    runner = runner or Runner(store)
    tasks = task_set.tasks(Split.HELDOUT, cfg.n_tasks)
    by_id = {t.id: t for t in tasks}
    verifier = VerifierCritic(task_set)
    out: dict[str, dict[int, float]] = {m: {} for m in METHODS}
    spent: dict[str, dict[int, float]] = {m: {} for m in METHODS}

    def mean_tokens(episodes: list[EpisodeRecord]) -> float:
        return sum(e.outcome.get("tokens", 0) for e in episodes) / max(1, len(episodes))

    async def run(graph: Any, what: str) -> list[EpisodeRecord]:
        run_id = stable_id("search-eval", model_id, prm.version, label, len(tasks), what)
        await runner.run(
            graph,
            tasks,
            RunRecord(
                id=run_id, loop="search_eval", model_ids=[model_id], config={"what": what, "task_set": label}
            ),
            label=what,
        )
        return store.list_episodes(run_id)

    greedy = await run(
        best_of_n.build_graph(
            policy,
            verifier,
            best_of_n.BestOfNConfig(
                n=1,
                temperature=0.0,
                max_tokens=cfg.max_tokens,
                system_prompt=cfg.system_prompt,
                emit_examples=False,
            ),
        ),
        f"greedy-{cfg.max_tokens}",
    )
    per_answer = max(1.0, sum(e.outcome["tokens"] for e in greedy) / len(greedy))
    for b in cfg.budgets:
        out["greedy"][b] = sum(e.outcome["correct"] for e in greedy) / len(greedy)
        spent["greedy"][b] = mean_tokens(greedy)
        n = max(1, round(b / per_answer))
        sampled = await run(
            best_of_n.build_graph(
                policy,
                verifier,
                best_of_n.BestOfNConfig(
                    n=n,
                    temperature=cfg.temperature,
                    max_tokens=cfg.max_tokens,
                    system_prompt=cfg.system_prompt,
                    emit_examples=False,
                    seed=cfg.seed,
                ),
            ),
            f"sample-{n}-{cfg.max_tokens}-{cfg.temperature}",
        )
        out["majority"][b] = sum(majority_pick(e) for e in sampled) / len(sampled)
        picks = await asyncio.gather(*(prm_pick(prm, by_id[e.task_id], e) for e in sampled))
        out["prm-rerank"][b] = sum(picks) / len(picks)
        spent["majority"][b] = spent["prm-rerank"][b] = mean_tokens(sampled)
        search_cfg = mcts.MCTSConfig(
            budget_tokens=b,
            k=cfg.k,
            evaluation="scorer",
            temperature=cfg.temperature,
            system_prompt=cfg.system_prompt,
            rollout_max_tokens=cfg.max_tokens,
            max_step_tokens=cfg.max_step_tokens,
            finish=True,
            emit_pairs=False,
            seed=cfg.seed,
        )
        searched = await run(mcts.build_graph(policy, verifier, search_cfg, prm), f"mcts-prm-{b}")
        out["mcts-prm"][b] = sum(e.outcome["correct"] for e in searched) / len(searched)
        spent["mcts-prm"][b] = mean_tokens(searched)
    if record:
        prefix = f"{metric_key(label, Split.HELDOUT)}/search"
        metrics = {f"{prefix}/{m}@{b}": v for m, per in out.items() for b, v in per.items()}
        metrics |= {f"{prefix}/{m}@{b}/tokens": v for m, per in spent.items() for b, v in per.items()}
        await store.aupdate_model_metrics(model_id, metrics)
    return SearchEvalResult(accuracy=out, tokens=spent)
