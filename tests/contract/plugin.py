"""A user's own package: a loop, the evaluator that measures what it trains, and a trainer kind with its own
settings, written against strop's public names only (`from strop import ...`).

This is the seam contract's proof (tests/contract/test_contract.py): registering these three is all it takes for
`strop evolve` to run a recipe on them, with no edit to strop's `training/`.

- Loop `retry_until_right`: sample one answer at a time, up to `tries`, and stop at the first right one; a
  solved training task yields an SFT example of that answer.
- Evaluator `brevity`: greedy held-out pass@1, and the mean length of the answers, under `<set>/heldout/brevity/`.
- Trainer kind `brief_sft`: SFT on the examples whose answer is at most `max_answer_chars` long.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, ConfigDict, Field

from strop import (
    EpisodeRecord,
    EvalConfig,
    EvalContext,
    EvalSettings,
    EvaluatorDefaults,
    ExampleKind,
    ExampleRecord,
    LoopResources,
    LoopSpec,
    Role,
    SamplingParams,
    Split,
    StepRecord,
    Task,
    TrainerKind,
    TrainOutcome,
    TrainRequest,
    VerifierCritic,
    chat_request,
    completion_json,
    evaluate,
    get_trainer,
    register_evaluator,
    register_loop,
    register_trainer,
    stable_id,
    task_messages,
)

# ------------------------------------------------------------------------------------------------ the loop


class RetryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tries: int = Field(3, ge=1, description="Most answers sampled per task, one at a time.")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature.")
    max_tokens: int = Field(24, ge=1, description="Most new tokens per answer.")
    seed: int | None = Field(0, description="Sampling seed (each try its own stream); None: random.")


class RetryState(TypedDict, total=False):
    task: dict[str, Any]
    run_id: str
    episode_id: str
    answers: list[dict[str, Any]]  # Completion as JSON, with its verdict under "correct"
    episode: dict[str, Any]


def build_retry(engine: Any, critic: Any, cfg: RetryConfig) -> StateGraph:
    async def answer(state: RetryState) -> dict[str, Any]:
        task = Task.model_validate(state["task"])
        tries = len(state.get("answers", []))
        seed = None if cfg.seed is None else int(stable_id(cfg.seed, task.id, tries)[:8], 16)
        sampling = SamplingParams(temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=seed)
        [[c]] = await engine.generate([chat_request(task_messages(task, None), sampling)])
        verdict = await critic.critique(task, c.text, task.reference_solution)
        return {"answers": [*state.get("answers", []), {**completion_json(c), "correct": verdict.correct}]}

    def again(state: RetryState) -> str:
        answers = state["answers"]
        return "record" if answers[-1]["correct"] or len(answers) >= cfg.tries else "answer"

    def record(state: RetryState) -> dict[str, Any]:
        task, eid = Task.model_validate(state["task"]), state["episode_id"]
        answers = state["answers"]
        steps = [
            StepRecord(
                id=stable_id(eid, "step", i),
                index=i,
                role="assistant",
                model_version=a["model_version"],
                text=a["text"],
                token_ids=a["token_ids"],
                reward=1.0 if a["correct"] else 0.0,
            )
            for i, a in enumerate(answers)
        ]
        solved = answers[-1]["correct"]
        examples = []
        if solved and task.split == Split.TRAIN:
            examples.append(
                ExampleRecord(
                    id=stable_id(eid, "example"),
                    kind=ExampleKind.SFT,
                    role=Role.POLICY,
                    payload={
                        "prompt": [m.model_dump() for m in task_messages(task, None)],
                        "completion": [{"role": "assistant", "content": answers[-1]["text"]}],
                    },
                    episode_id=eid,
                    task_id=task.id,
                    split=str(task.split),
                )
            )
        outcome = {
            "n": len(answers),
            "correct": int(solved),
            "pass": solved,
            "examples": len(examples),
            "tokens": sum(len(a["token_ids"] or []) for a in answers),
        }
        episode = EpisodeRecord(
            id=eid,
            run_id=state["run_id"],
            task_id=task.id,
            loop="retry_until_right",
            reward=float(solved),
            outcome=outcome,
            steps=steps,
            examples=examples,
        )
        return {"episode": episode.model_dump(mode="json")}

    graph = StateGraph(RetryState)
    graph.add_node("answer", answer)
    graph.add_node("record", record)
    graph.add_edge(START, "answer")
    graph.add_conditional_edges("answer", again, ["answer", "record"])
    graph.add_edge("record", END)
    return graph


def _make(resources: LoopResources, config: RetryConfig) -> StateGraph:
    return build_retry(resources.policy, VerifierCritic(resources.task_set), config)


LOOP = LoopSpec(
    name="retry_until_right",
    config=RetryConfig,
    make=_make,
    example_kinds=(ExampleKind.SFT,),
    description="Answer until right, up to `tries` times; the right answer becomes an SFT example.",
    evaluator="brevity",
)

# ------------------------------------------------------------------------------------------- the evaluator


class BrevitySettings(EvalSettings):
    """Greedy held-out pass@1 and the answers' mean length."""

    target: Literal["brevity"] = Field("brevity", description="Held-out pass@1 and answer length.")
    max_tokens: int = Field(24, ge=1, description="Most new tokens per held-out answer.")

    def default_metric(self) -> str:
        return "pass@1"


class BrevityEvaluator(EvaluatorDefaults):  # no figure beside the gate: the default
    name = "brevity"
    settings = BrevitySettings
    score_label = "acc"

    def metric_prefix(self, ctx: EvalContext) -> str:
        return f"{ctx.label}/heldout/brevity"

    def gate_text(self, ctx: EvalContext) -> str:
        return f"{ctx.settings.gate_metric()} (brevity) on {ctx.heldout} {ctx.label} tasks"

    async def evaluate(self, version: Any, ctx: EvalContext) -> None:
        res = await evaluate(
            ctx.serve(version),
            ctx.task_set,
            store=ctx.store,
            model_id=version.id,
            config=EvalConfig(n_tasks=ctx.heldout, max_tokens=ctx.settings.max_tokens),
            runner=ctx.runner(),
            label=f"{ctx.label}-brevity",
        )
        episodes = [e for run_id in res.run_ids for e in ctx.store.list_episodes(run_id)]
        tokens = sum(e.outcome.get("tokens", 0) for e in episodes) / max(1, len(episodes))
        prefix = self.metric_prefix(ctx)
        ctx.store.update_model_metrics(
            version.id,
            {f"{prefix}/pass@1": res.pass_at_1, f"{prefix}/tokens": tokens, f"{prefix}/n_tasks": res.n_tasks},
        )
        ctx.say(f"{version.name}: brevity pass@1 {res.pass_at_1:.1%}, {tokens:.1f} tokens an answer")


# ---------------------------------------------------------------------------------------- the trainer kind

_SFT = get_trainer("sft")


class BriefSettings(_SFT.settings):  # type: ignore[name-defined,misc]  # the SFT kind's settings, extended
    max_answer_chars: int = Field(200, ge=1, description="Train only on answers at most this long.")


def _brief(examples: list[ExampleRecord], settings: BriefSettings) -> list[ExampleRecord]:
    return [e for e in examples if len(e.payload["completion"][-1]["content"]) <= settings.max_answer_chars]


def _train(req: TrainRequest) -> TrainOutcome:
    kept = _brief(req.examples, req.settings)
    assert _SFT.build_dataset is not None
    out = _SFT.train(dataclasses.replace(req, examples=kept, dataset=_SFT.build_dataset(kept, req.settings)))
    out.metrics["brief_examples"] = len(kept)
    return out


TRAINER = TrainerKind(
    name="brief_sft",
    settings=BriefSettings,
    example_kinds=(ExampleKind.SFT,),
    train=_train,
    build_dataset=None,  # _train builds its own, from the brief examples only
    description="SFT on short answers only.",
)


def register() -> None:
    """What the package's entry points would do (`strop.loops`, `strop.evaluators`, `strop.trainers`)."""
    register_loop(LOOP)
    register_evaluator(BrevityEvaluator())
    register_trainer(TRAINER)
