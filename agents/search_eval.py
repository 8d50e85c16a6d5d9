"""Search against sampling at equal cost: accuracy per budget of generated tokens, on held-out tasks.

For each budget B (tokens generated per task, the policy's own tokens; a PRM's one-token Yes/No replies are
not counted, and are the same for both reranked methods):
- greedy: one greedy answer (its cost is what it is; it is the floor);
- majority: best-of-N with N = B / (mean tokens of a greedy answer), the most common final answer;
- prm-rerank: the same N answers, the one whose weakest step the PRM scores highest;
- mcts-prm: MCTS with the PRM as the value (no ground truth at test time), B tokens, the best leaf by Q;
  with `finish`, a search that reaches no answer within B completes its best partial solution greedily
  (inside B: the last `max_tokens` are kept for it).
With `temperatures`, each sampled method's temperature is first chosen per budget on a seeded sample of
TRAINING tasks (`sweep_temperatures`), and only then are the held-out tasks run, once, at the chosen ones.
Every run goes through the runner (stored, resumable); the figures are recorded on the policy's model
version under `<set>/heldout/search/<method>@<B>` (and the sweep's under `<set>/train/search/...`).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from strop.agents.engines.base import Engine
from strop.agents.evaluation import metric_key
from strop.agents.loops import best_of_n, mcts
from strop.agents.loops.base import stable_id
from strop.agents.runner import Runner
from strop.critics.scorer import StepScorer
from strop.critics.steps import split_steps
from strop.critics.verifier import VerifierCritic
from strop.memory.records import EpisodeRecord, RunRecord
from strop.sandbox.tasks.base import Split, Task, TaskSet, TaskSetError

METHODS = ("greedy", "majority", "prm-rerank", "mcts-prm")
SAMPLED = ("majority", "prm-rerank", "mcts-prm")


class SearchEvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_tasks: int = Field(50, ge=1, description="Held-out tasks (the first n).")
    budgets: list[int] = Field(
        default_factory=lambda: [256, 512, 1024], description="Generated tokens per task."
    )
    max_tokens: int = Field(96, ge=1, description="Most tokens per sampled answer.")
    temperature: float = Field(
        0.8, gt=0.0, description="Sampling temperature of answers and search steps (without a sweep)."
    )
    temperatures: list[float] | None = Field(
        None,
        description="Sweep these temperatures on a seeded sample of `sweep_tasks` TRAINING tasks and run each "
        "sampled method on the held-out tasks at its best one (per budget); None: every method at `temperature`.",
    )
    sweep_tasks: int = Field(
        16, ge=1, description="Training tasks the sweep samples (seeded by `sweep_seed`)."
    )
    sweep_seed: int = Field(0, description="Seed of the sweep's sample of training tasks.")
    system_prompt: str | None = Field(
        mcts.MCTSConfig().system_prompt, description="The policy's system message."
    )
    k: int = Field(3, ge=1, description="MCTS: candidate steps per expansion.")
    max_step_tokens: int = Field(32, ge=1, description="MCTS: most tokens per step.")
    seed: int = Field(0)

    @field_validator("temperatures")
    @classmethod
    def _temperatures(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return None
        if not v or min(v) <= 0:
            raise ValueError(f"temperatures {v}: give at least one, each above 0 (greedy is always compared)")
        return sorted(set(v))


class SweepResult(BaseModel):
    """The temperature sweep on training tasks: what was tried, what it scored, what was chosen."""

    n_tasks: int = Field(description="Training tasks in the sweep's sample.")
    greedy: float = Field(description="Greedy accuracy on the same training tasks (the floor to beat).")
    accuracy: dict[str, dict[int, dict[float, float]]] = Field(
        description="{method: {budget: {temperature: training accuracy}}}"
    )
    chosen: dict[str, dict[int, float]] = Field(
        description="{method: {budget: temperature}}: the best on training (ties: the lowest temperature)."
    )


class SearchEvalResult(BaseModel):
    """Accuracy and mean generated tokens per task, of each method at each budget."""

    accuracy: dict[str, dict[int, float]] = Field(description="{method: {budget: held-out accuracy}}")
    tokens: dict[str, dict[int, float]] = Field(
        description="{method: {budget: mean tokens generated per task}}"
    )
    temperature: dict[str, dict[int, float]] = Field(
        default_factory=dict, description="{method: {budget: sampling temperature used}} (sampled methods)"
    )
    sweep: SweepResult | None = Field(None, description="The training-split sweep, when one was asked.")


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


def mean_tokens(episodes: list[EpisodeRecord]) -> float:
    return sum(e.outcome.get("tokens", 0) for e in episodes) / max(1, len(episodes))


def accuracy(episodes: list[EpisodeRecord]) -> float:
    return sum(bool(e.outcome["correct"]) for e in episodes) / max(1, len(episodes))


class Methods:
    """Runs each method on a list of tasks through the runner, one stored run per (tasks, method, settings)."""

    def __init__(
        self,
        policy: Engine,
        prm: StepScorer,
        task_set: TaskSet,
        cfg: SearchEvalConfig,
        *,
        store: Any,
        runner: Runner,
        model_id: str,
        label: str,
    ) -> None:
        self.policy, self.prm, self.cfg, self.store, self.runner = policy, prm, cfg, store, runner
        self.model_id, self.label = model_id, label
        self.verifier = VerifierCritic(task_set)

    async def _run(self, graph: Any, tasks: list[Task], what: str) -> list[EpisodeRecord]:
        run_id = stable_id("search-eval", self.model_id, self.prm.version, self.label, len(tasks), what)
        config = {"what": what, "task_set": self.label}
        await self.runner.run(
            graph,
            tasks,
            RunRecord(id=run_id, loop="search_eval", model_ids=[self.model_id], config=config),
            label=what,
        )
        return self.store.list_episodes(run_id)

    async def greedy(self, tasks: list[Task], tag: str = "") -> list[EpisodeRecord]:
        cfg = best_of_n.BestOfNConfig(
            n=1,
            temperature=0.0,
            max_tokens=self.cfg.max_tokens,
            system_prompt=self.cfg.system_prompt,
            emit_examples=False,
        )
        graph = best_of_n.build_graph(self.policy, self.verifier, cfg)
        return await self._run(graph, tasks, f"{tag}greedy-{self.cfg.max_tokens}")

    async def sample(
        self, tasks: list[Task], n: int, temperature: float, tag: str = ""
    ) -> list[EpisodeRecord]:
        cfg = best_of_n.BestOfNConfig(
            n=n,
            temperature=temperature,
            max_tokens=self.cfg.max_tokens,
            system_prompt=self.cfg.system_prompt,
            emit_examples=False,
            seed=self.cfg.seed,
        )
        graph = best_of_n.build_graph(self.policy, self.verifier, cfg)
        return await self._run(graph, tasks, f"{tag}sample-{n}-{self.cfg.max_tokens}-{temperature}")

    async def search(
        self, tasks: list[Task], budget: int, temperature: float, tag: str = ""
    ) -> list[EpisodeRecord]:
        search_cfg = mcts.MCTSConfig(
            budget_tokens=budget,
            k=self.cfg.k,
            evaluation="scorer",
            temperature=temperature,
            system_prompt=self.cfg.system_prompt,
            rollout_max_tokens=self.cfg.max_tokens,
            max_step_tokens=self.cfg.max_step_tokens,
            finish=True,
            emit_pairs=False,
            seed=self.cfg.seed,
        )
        # runs stored before the sweep existed were keyed without the temperature (always the default's)
        default = SearchEvalConfig.model_fields["temperature"].default
        what = f"{tag}mcts-prm-{budget}" + ("" if temperature == default else f"-T{temperature}")
        return await self._run(
            mcts.build_graph(self.policy, self.verifier, search_cfg, self.prm), tasks, what
        )

    async def rerank(self, tasks: list[Task], sampled: list[EpisodeRecord]) -> float:
        by_id = {t.id: t for t in tasks}
        picks = await asyncio.gather(*(prm_pick(self.prm, by_id[e.task_id], e) for e in sampled))
        return sum(picks) / max(1, len(picks))


def training_sample(task_set: TaskSet, n: int, seed: int) -> list[Task]:
    """A seeded sample of `n` training tasks: what the sweep may look at (never a held-out task)."""
    pool = task_set.tasks(Split.TRAIN)
    if not pool:
        raise TaskSetError(f"task set {task_set.name!r} has no training tasks to sweep temperatures on")
    return random.Random(f"search-sweep:{seed}").sample(pool, min(n, len(pool)))


def choose(by_temperature: dict[float, float]) -> float:
    """The temperature with the best training accuracy; ties go to the lowest (the one nearest greedy)."""
    return min(by_temperature, key=lambda t: (-by_temperature[t], t))


async def sweep_temperatures(methods: Methods, task_set: TaskSet) -> SweepResult:
    """Each sampled method at each budget and temperature on a seeded sample of training tasks, and the
    temperature each method does best with. Reads training tasks only: N per budget comes from greedy's
    answer length on the same sample."""
    cfg = methods.cfg
    if not cfg.temperatures:
        raise ValueError("sweep_temperatures needs `temperatures` in the config")
    tasks = training_sample(task_set, cfg.sweep_tasks, cfg.sweep_seed)
    tag = f"train{cfg.sweep_seed}-"  # apart from the held-out runs' ids (the task count is in them too)
    greedy = await methods.greedy(tasks, tag)
    per_answer = max(1.0, mean_tokens(greedy))
    acc: dict[str, dict[int, dict[float, float]]] = {m: {b: {} for b in cfg.budgets} for m in SAMPLED}
    for b in cfg.budgets:
        n = max(1, round(b / per_answer))
        for t in cfg.temperatures:
            sampled = await methods.sample(tasks, n, t, tag)
            acc["majority"][b][t] = sum(majority_pick(e) for e in sampled) / len(sampled)
            acc["prm-rerank"][b][t] = await methods.rerank(tasks, sampled)
            acc["mcts-prm"][b][t] = accuracy(await methods.search(tasks, b, t, tag))
    chosen = {m: {b: choose(acc[m][b]) for b in cfg.budgets} for m in SAMPLED}
    return SweepResult(n_tasks=len(tasks), greedy=accuracy(greedy), accuracy=acc, chosen=chosen)


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
    a target for best-of-N, whose N is rounded). A sweep, when asked, runs to its end on training tasks
    before any held-out task is read."""
    cfg = config or SearchEvalConfig()
    methods = Methods(
        policy,
        prm,
        task_set,
        cfg,
        store=store,
        runner=runner or Runner(store),
        model_id=model_id,
        label=label,
    )
    sweep = await sweep_temperatures(methods, task_set) if cfg.temperatures else None
    temps = {m: {b: sweep.chosen[m][b] if sweep else cfg.temperature for b in cfg.budgets} for m in SAMPLED}

    tasks = task_set.tasks(Split.HELDOUT, cfg.n_tasks)
    out: dict[str, dict[int, float]] = {m: {} for m in METHODS}
    spent: dict[str, dict[int, float]] = {m: {} for m in METHODS}
    greedy = await methods.greedy(tasks)
    per_answer = max(1.0, sum(e.outcome["tokens"] for e in greedy) / len(greedy))
    for b in cfg.budgets:
        out["greedy"][b] = accuracy(greedy)
        spent["greedy"][b] = mean_tokens(greedy)
        n = max(1, round(b / per_answer))
        voted = await methods.sample(tasks, n, temps["majority"][b])
        out["majority"][b] = sum(majority_pick(e) for e in voted) / len(voted)
        spent["majority"][b] = mean_tokens(voted)
        # the same samples as the vote unless the sweep chose the two another temperature
        reranked = voted
        if temps["prm-rerank"][b] != temps["majority"][b]:
            reranked = await methods.sample(tasks, n, temps["prm-rerank"][b])
        out["prm-rerank"][b] = await methods.rerank(tasks, reranked)
        spent["prm-rerank"][b] = mean_tokens(reranked)
        searched = await methods.search(tasks, b, temps["mcts-prm"][b])
        out["mcts-prm"][b] = accuracy(searched)
        spent["mcts-prm"][b] = mean_tokens(searched)
    res = SearchEvalResult(accuracy=out, tokens=spent, temperature=temps, sweep=sweep)
    if record:
        await store.aupdate_model_metrics(model_id, search_metrics(label, res))
    return res


def search_metrics(label: str, res: SearchEvalResult) -> dict[str, float]:
    """The figures recorded on the policy's version: held-out accuracy and tokens per method and budget; with a
    sweep, also each chosen temperature and the sweep's training accuracies."""
    prefix = f"{metric_key(label, Split.HELDOUT)}/search"
    metrics = {f"{prefix}/{m}@{b}": v for m, per in res.accuracy.items() for b, v in per.items()}
    metrics |= {f"{prefix}/{m}@{b}/tokens": v for m, per in res.tokens.items() for b, v in per.items()}
    if res.sweep is None:
        return metrics
    metrics |= {
        f"{prefix}/{m}@{b}/temperature": t for m, per in res.temperature.items() for b, t in per.items()
    }
    train = f"{metric_key(label, Split.TRAIN)}/search"
    metrics[f"{train}/greedy"] = res.sweep.greedy
    metrics[f"{train}/n_tasks"] = res.sweep.n_tasks
    for m, per in res.sweep.accuracy.items():
        metrics |= {f"{train}/{m}@{b}/T{t}": a for b, by_t in per.items() for t, a in by_t.items()}
    return metrics
