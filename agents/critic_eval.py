"""The critic benchmark, run: a step-wise critic over a labelled set, scored ProcessBench- and RealCritic-style.

Each labelled solution is one episode of an ordinary run through the generic runner, so 64 critiques are in
flight at once (the engine batches them), an interrupted evaluation resumes, and every critique is stored
with the solution it judged. Scores are computed from the stored critiques by `critics.benchmark_scores` and
written on the critic's model version under `{label}/critic/...`, where the promotion gate and
`strop models list` read them.

An item the critic cannot be asked about (its solution is too long for the critic's context) is skipped, not
fatal: the runner records it as a failed episode with its reason, the scores are computed on the items that
were scored, and the result says how many were skipped and why.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, ConfigDict, Field

from strop.agents.loops.base import stable_id
from strop.agents.runner import Runner, skipped_line
from strop.critics.base import Critic, Critique, CritiqueVerdict
from strop.critics.benchmark import LabelledSolutionSet, build_labelled_set, labelled_from_task
from strop.critics.benchmark_scores import (
    answer_matches,
    correction_scores,
    processbench_scores,
    step_label_scores,
)
from strop.critics.corruption import CORRUPTION_KINDS
from strop.critics.labelling import LabelledSolution
from strop.critics.llm import CriticSampling, StepwiseCritic
from strop.critics.scorer import StepScorer
from strop.memory.records import CritiqueRecord, EpisodeRecord, RunRecord, StepRecord
from strop.sandbox.tasks.base import Split, Task, TaskSet

LOOP_NAME = "critic_eval"


class CriticEvalConfig(BaseModel):
    """What a critic evaluation measures."""

    model_config = ConfigDict(extra="forbid")

    n_items: int = Field(
        100, ge=1, description="Labelled solutions built from held-out tasks (half right, half corrupted)."
    )
    seed: int = Field(0, description="Seed of the labelled set: the same seed builds the same items.")
    kinds: tuple[str, ...] = Field(CORRUPTION_KINDS, description="Corruptions used for the wrong solutions.")
    correct_share: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of untouched (right) reference solutions."
    )
    max_tokens: int = Field(160, ge=16, description="Most tokens per critique (greedy).")
    shots: int = Field(
        1, ge=0, le=3, description="Worked critiques shown as earlier turns (as the critic was trained)."
    )
    system_prompt: str | None = Field(None, description="System message before the critic's prompt.")
    kind: Literal["generative", "prm"] = Field(
        "generative",
        description="generative: a written step-wise critique (StepwiseCritic); prm: a process reward "
        "model, one Yes/No per step prefix with P(correct) from its log-prob (StepScorer), also scored on step accuracy.",
    )
    threshold: float = Field(
        0.5, gt=0.0, lt=1.0, description="prm: P(correct) under which a step counts as wrong."
    )


class CriticEvalResult(BaseModel):
    model_id: str
    label: str
    n_items: int
    scores: dict[str, Any] = Field(
        description="f1, acc_erroneous, acc_correct, correction_acc, fixed, kept, unparsed..."
    )
    seconds: float = 0.0
    run_id: str = ""
    episodes_run: int = 0
    n_scored: int = Field(0, description="Items critiqued and scored; n_items less the skipped ones.")
    skipped: dict[str, int] = Field(
        default_factory=dict, description="Items skipped per kind of failure (too_long, invalid, ...)."
    )
    skipped_reasons: dict[str, str] = Field(
        default_factory=dict, description="Per kind, the reason the first skipped item gave."
    )

    def skipped_line(self) -> str:
        """'skipped: 1, too long for the context', or '' when every item was scored."""
        return skipped_line(self.skipped)

    @property
    def f1(self) -> float | None:
        return self.scores.get("f1")

    kind: str = "generative"

    def metrics(self) -> dict[str, Any]:
        """Flat keys under `{label}/critic/` (`{label}/prm/` for a PRM), with n_tasks so the gate compares like
        with like."""
        prefix = critic_metric_prefix(self.label, self.kind)
        out = {f"{prefix}/{k}": v for k, v in self.scores.items() if v is not None}
        out[f"{prefix}/n_tasks"] = self.n_items
        return out


def critic_metric_prefix(label: str, kind: str = "generative") -> str:
    """A PRM's scores get their own keys: one model can be judged both ways, and the two are not comparable."""
    return f"{label}/prm" if kind == "prm" else f"{label}/critic"


class _State(TypedDict, total=False):
    task: dict[str, Any]
    run_id: str
    episode_id: str
    critique: dict[str, Any]
    step_labels: list[bool] | None
    step_scores: list[float] | None
    fixed: bool
    tokens: int
    episode: dict[str, Any]


# The token count of the episode whose critique is being sampled: each episode's judge node sets its own, so
# concurrent episodes sharing one engine each count only what they asked for.
_SPENT: contextvars.ContextVar[list[int]] = contextvars.ContextVar("critic_eval_tokens")


class _CountingEngine:
    """The critic's engine, counting the completion tokens each episode's critique sampled: a Critique does
    not carry them, and the runner's tok/s and `RunResult.tokens` read them from the episode's outcome."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    @property
    def model_version(self) -> str:
        return str(self._engine.model_version)

    async def generate(self, requests: list[Any]) -> list[list[Any]]:
        out = await self._engine.generate(requests)
        spent = _SPENT.get(None)
        if spent is not None:
            spent[0] += sum(len(c.token_ids) for cs in out for c in cs)
        return out

    async def close(self) -> None:
        await self._engine.close()

    def __getattr__(
        self, name: str
    ) -> Any:  # anything else a critic reads (tokenizer, stats) is the engine's
        return getattr(self._engine, name)


def build_graph(critic: Critic, items: LabelledSolutionSet) -> StateGraph:
    """One labelled solution per episode: critique it (no reference), check the correction, record both.

    Any `Critic` works; the step labels it gives (a PRM gives one per step) are kept for step accuracy."""

    async def judge(state: _State) -> dict[str, Any]:
        item = labelled_from_task(Task.model_validate(state["task"]))
        spent = [0]
        reset = _SPENT.set(spent)
        try:
            c = await critic.critique(item.task, item.solution)
        finally:
            _SPENT.reset(reset)
        final = c.corrected_solution or (item.solution if c.verdict == CritiqueVerdict.CORRECT else None)
        fixed = bool(final) and bool(item.task.answer) and answer_matches(item, final or "")
        return {
            "critique": c.model_dump(mode="json"),
            "step_labels": c.step_labels,
            "step_scores": c.step_scores,
            "fixed": fixed,
            "tokens": spent[0],
        }

    def record(state: _State) -> dict[str, Any]:
        task = Task.model_validate(state["task"])
        item = labelled_from_task(task)
        c = Critique.model_validate(state["critique"])
        eid = state["episode_id"]
        hit = (
            c.first_wrong_step == item.first_wrong_step and c.verdict == CritiqueVerdict.INCORRECT
            if item.erroneous
            else c.verdict == CritiqueVerdict.CORRECT
        )
        sid = stable_id(eid, "solution")
        ep = EpisodeRecord(
            id=eid,
            run_id=state["run_id"],
            task_id=task.id,
            loop=LOOP_NAME,
            reward=float(hit),
            outcome={
                "n": 1,
                "correct": int(hit),
                "pass": hit,
                "label": item.first_wrong_step,
                "predicted": c.first_wrong_step,
                "verdict": str(c.verdict),
                "fixed": state["fixed"],
                "source": item.source,
                "step_labels": state.get("step_labels"),
                "step_scores": state.get("step_scores"),
                "examples": 0,
                "tokens": state.get("tokens", 0),
            },
            steps=[
                StepRecord(
                    id=sid,
                    index=0,
                    role="solution",
                    text=item.solution,
                    metadata={"first_wrong_step": item.first_wrong_step, "source": item.source},
                )
            ],
            critiques=[
                CritiqueRecord(
                    id=stable_id(eid, "critique"),
                    step_id=sid,
                    critic_version=c.critic_version,
                    verdict=str(c.verdict),
                    first_wrong_step=c.first_wrong_step,
                    text=c.text,
                    parsed=c.parsed,
                    corrected_solution=c.corrected_solution,
                )
            ],
        )
        return {"episode": ep.model_dump(mode="json")}

    graph = StateGraph(_State)
    graph.add_node("judge", judge)
    graph.add_node("record", record)
    graph.add_edge(START, "judge")
    graph.add_edge("judge", "record")
    graph.add_edge("record", END)
    return graph


def labelled_set(
    task_set: TaskSet, config: CriticEvalConfig, label: str, extra: list[LabelledSolution] | None = None
) -> LabelledSolutionSet:
    """The seeded labelled set of a task set's held-out tasks (plus `extra` items, e.g. from a file)."""
    items = build_labelled_set(
        task_set,
        n=config.n_items,
        seed=config.seed,
        kinds=config.kinds,
        correct_share=config.correct_share,
        extra=extra or (),
    )
    return LabelledSolutionSet(items, name=f"critic-bench:{label}")


async def evaluate_critic(
    engine: Any,
    items: LabelledSolutionSet,
    *,
    store: Any,
    model_id: str,
    label: str,
    config: CriticEvalConfig | None = None,
    runner: Runner | None = None,
    record: bool = True,
) -> CriticEvalResult:
    """Run the step-wise critic served by `engine` (registered as `model_id`) over `items` and score it."""
    cfg = config or CriticEvalConfig()
    runner = runner or Runner(store)
    tasks = items.tasks(Split.HELDOUT)
    engine = _CountingEngine(engine)
    sampling = CriticSampling(max_tokens=cfg.max_tokens, temperature=0.0, system_prompt=cfg.system_prompt)
    critic: Critic
    if cfg.kind == "prm":
        critic = StepScorer(
            engine, threshold=cfg.threshold, sampling=sampling.model_copy(update={"max_tokens": 2})
        )
    else:
        critic = StepwiseCritic(engine, sampling=sampling, shots=cfg.shots)
    run_id = stable_id(
        "critic-eval",
        model_id,
        label,
        len(tasks),
        cfg.model_dump_json(exclude_defaults=True),
        *sorted(t.id for t in tasks),
    )
    run = RunRecord(
        id=run_id,
        loop=LOOP_NAME,
        model_ids=[model_id],
        config={"task_set": label, "items": len(tasks), "eval": cfg.model_dump(mode="json")},
    )
    started = time.monotonic()
    result = await runner.run(build_graph(critic, items), tasks, run, label="critic eval")
    scores = score_run(store, run_id, {t.id: labelled_from_task(t) for t in tasks}, steps=cfg.kind == "prm")
    scores.update(n_scored=result.scored, skipped=result.failed)
    res = CriticEvalResult(
        model_id=model_id,
        label=label,
        n_items=len(tasks),
        scores=scores,
        kind=cfg.kind,
        seconds=time.monotonic() - started,
        run_id=run_id,
        episodes_run=result.episodes_run,
        n_scored=result.scored,
        skipped=result.failures,
        skipped_reasons=result.failure_reasons,
    )
    if record:
        await store.aupdate_model_metrics(model_id, res.metrics())
    return res


def score_run(
    store: Any, run_id: str, items: dict[str, LabelledSolution], *, steps: bool = False
) -> dict[str, Any]:
    """ProcessBench and RealCritic scores of a finished critic-eval run, from its stored critiques; with
    `steps`, also step accuracy from the step labels each episode stored (a PRM's)."""
    pairs: list[tuple[LabelledSolution, Critique]] = []
    labels: list[tuple[LabelledSolution, list[bool] | None, list[float] | None]] = []
    for ep in store.list_episodes(run_id):
        if ep.task_id not in items or not ep.critiques:
            continue
        r = ep.critiques[0]
        labels.append((items[ep.task_id], ep.outcome.get("step_labels"), ep.outcome.get("step_scores")))
        pairs.append(
            (
                items[ep.task_id],
                Critique(
                    verdict=CritiqueVerdict(r.verdict),
                    first_wrong_step=r.first_wrong_step,
                    text=r.text,
                    corrected_solution=r.corrected_solution,
                    critic_version=r.critic_version,
                ),
            )
        )
    chosen = [p[0] for p in pairs]
    critiques = [p[1] for p in pairs]
    scores = processbench_scores(chosen, critiques)
    correction = correction_scores(chosen, critiques, answer_matches)
    scores.update(
        correction_acc=correction["correction_acc"],
        fixed=correction["fixed"],
        kept=correction["kept"],
        n_correction=correction["n"],
    )
    if steps:
        scores.update(
            step_label_scores(
                [i for i, _, _ in labels], [lab for _, lab, _ in labels], [p for _, _, p in labels]
            )
        )
    return scores
