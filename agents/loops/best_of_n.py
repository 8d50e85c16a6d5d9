"""Best-of-N rejection sampling (STaR / ReST / expert iteration) as a LangGraph loop.

sample N answers -> verify each with a critic -> record every attempt, right or wrong, and emit the correct
ones as SFT examples. Wrong attempts are kept with their model version because later methods (DPO pairs,
critics) reuse the negatives.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, ConfigDict, Field

from strop.agents.capture.credit import group_advantages
from strop.agents.engines.base import Engine, SamplingParams
from strop.agents.loops.base import chat_request, completion_json, stable_id, task_messages
from strop.agents.loops.pairs import Answer, preference_pairs
from strop.agents.loops.registry import LoopResources, LoopSpec, register_loop
from strop.agents.reflection import Recall, open_recall
from strop.critics.base import Critic, Critique
from strop.critics.verifier import VerifierCritic
from strop.memory.records import (
    AdvantagePayload,
    CritiqueRecord,
    EpisodeRecord,
    ExampleKind,
    ExampleRecord,
    Role,
    StepRecord,
)
from strop.sandbox.tasks.base import Split, Task

LOOP_NAME = "best_of_n"


class BestOfNConfig(BaseModel):
    """How one best-of-N episode samples and what it keeps."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(8, ge=1, le=256, description="Answers sampled per task.")
    temperature: float = Field(
        0.8, ge=0.0, le=10.0, description="Sampling temperature; 0 is greedy (use n=1)."
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(64, ge=1, le=32768, description="Most new tokens per answer.")
    stop: list[str] = Field(default_factory=list, description="Strings that end an answer.")
    system_prompt: str | None = Field(
        None, description="System message put before each task prompt (and kept in SFT examples)."
    )
    emit_examples: bool = Field(
        True, description="Emit SFT examples from correct answers (off for evaluation)."
    )
    dedupe_examples: bool = Field(
        False, description="Keep one SFT example per distinct correct answer text of a task."
    )
    emit_pairs: bool = Field(
        False,
        description="Also emit DPO preference pairs (PAIR examples): for one prompt, a correct answer is chosen over "
        "an incorrect one; each distinct (chosen, rejected) text pair once. Train split only.",
    )
    max_pairs_per_task: int = Field(
        4,
        ge=1,
        le=4096,
        description="Most preference pairs per task (taken so they use as many distinct answers as possible).",
    )
    seed: int | None = Field(
        None,
        description="Sampling seed; each task samples from its own stream derived from it. None: random.",
    )
    emit_advantages: bool = Field(
        False,
        description="Also emit each sampled answer as a pg action (ADVANTAGE example): its exact ids and "
        "log-probs, with advantage = its verifier reward minus the mean over the n (the agent loop's credit, "
        "so the two loops train alike). Train split only; zero advantages are left out.",
    )
    rationalize: bool = Field(
        False,
        description="STaR rationalization: when no answer is correct, sample again with the reference answer "
        "as a hint and keep the correct ones as examples for the un-hinted prompt.",
    )
    hint_template: str = Field(
        "{prompt} (Hint: the answer is {answer}.)",
        description="The hinted prompt for rationalization; {prompt} and {answer} are filled in.",
    )
    memory_k: int = Field(
        0,
        ge=0,
        le=20,
        description="Reflection memory: put the k most similar past failures on this task set's train tasks (the "
        "problem, the wrong answer, its critique) before each prompt; never the task's own, never a held-out "
        "one. 0: off. Needs the store (failures are indexed first; see docs/memory.md).",
    )

    def sampling(self, *stream: object) -> SamplingParams:
        """Sampling parameters; `stream` (e.g. the task id) picks a reproducible seed when `seed` is set."""
        seed = None if self.seed is None else int(stable_id(self.seed, *stream)[:12], 16)
        return SamplingParams(
            n=self.n,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            stop=self.stop,
            seed=seed,
            logprobs=True,
        )


class BestOfNState(TypedDict, total=False):
    """The loop's state. JSON values only, so any LangGraph checkpointer can persist it."""

    task: dict[str, Any]  # Task as JSON (input)
    run_id: str  # input
    episode_id: str  # input
    memory: list[dict[str, Any]]  # recalled past failures (reflection memory), shown before the prompt
    samples: list[dict[str, Any]]  # Completion as JSON, one per sampled answer
    critiques: list[dict[str, Any]]  # Critique as JSON, aligned with samples
    hinted_samples: list[dict[str, Any]]  # rationalization: answers sampled with the reference as a hint
    hinted_critiques: list[dict[str, Any]]
    episode: dict[str, Any]  # EpisodeRecord as JSON (output)


def build_graph(
    engine: Engine, critic: Critic, config: BestOfNConfig | None = None, recall: Recall | None = None
) -> StateGraph:
    """The uncompiled graph; compile it with your checkpointer or add it as a subgraph node.

    `recall` (reflection memory, `agents.reflection.open_recall`) is needed when `memory_k` > 0: a first node
    then recalls the task's nearest past failures into the state, so a resumed episode sees the same ones."""
    cfg = config or BestOfNConfig()
    if cfg.memory_k and recall is None:
        raise ValueError(
            "best_of_n with memory_k > 0 needs a recall: build_graph(..., recall=open_recall(store, "
            "task_set, label)) from strop.agents.reflection"
        )

    async def remember(state: BestOfNState) -> dict[str, Any]:
        assert recall is not None
        return {"memory": await recall(Task.model_validate(state["task"]), cfg.memory_k)}

    async def sample(state: BestOfNState) -> dict[str, Any]:
        task = Task.model_validate(state["task"])
        request = chat_request(
            task_messages(task, cfg.system_prompt, state.get("memory")), cfg.sampling(task.id)
        )
        [completions] = await engine.generate([request])
        return {"samples": [completion_json(c) for c in completions]}

    async def verify(state: BestOfNState) -> dict[str, Any]:
        task = Task.model_validate(state["task"])
        critiques = await asyncio.gather(
            *(critic.critique(task, s["text"], task.reference_solution) for s in state["samples"])
        )
        return {"critiques": [c.model_dump(mode="json") for c in critiques]}

    async def rationalize(state: BestOfNState) -> dict[str, Any]:
        task = Task.model_validate(state["task"])
        hinted = task.model_copy(
            update={"prompt": cfg.hint_template.format(prompt=task.prompt, answer=task.answer)}
        )
        request = chat_request(
            task_messages(hinted, cfg.system_prompt, state.get("memory")), cfg.sampling(task.id, "hint")
        )
        [completions] = await engine.generate([request])
        critiques = await asyncio.gather(
            *(critic.critique(task, c.text, task.reference_solution) for c in completions)
        )
        return {
            "hinted_samples": [completion_json(c) for c in completions],
            "hinted_critiques": [c.model_dump(mode="json") for c in critiques],
        }

    def after_verify(state: BestOfNState) -> str:
        all_wrong = not any(Critique.model_validate(c).correct for c in state["critiques"])
        train = Task.model_validate(state["task"]).split == Split.TRAIN
        return "rationalize" if cfg.rationalize and cfg.emit_examples and train and all_wrong else "record"

    def record(state: BestOfNState) -> dict[str, Any]:
        return {"episode": _episode(state, cfg).model_dump(mode="json")}

    graph = StateGraph(BestOfNState)
    if cfg.memory_k:
        graph.add_node("remember", remember)
    graph.add_node("sample", sample)
    graph.add_node("verify", verify)
    graph.add_node("rationalize", rationalize)
    graph.add_node("record", record)
    if cfg.memory_k:  # without memory the graph is what it always was, so older checkpoints still resume
        graph.add_edge(START, "remember")
        graph.add_edge("remember", "sample")
    else:
        graph.add_edge(START, "sample")
    graph.add_edge("sample", "verify")
    graph.add_conditional_edges("verify", after_verify, ["rationalize", "record"])
    graph.add_edge("rationalize", "record")
    graph.add_edge("record", END)
    return graph


def _episode(state: BestOfNState, cfg: BestOfNConfig) -> EpisodeRecord:
    task = Task.model_validate(state["task"])
    eid = state["episode_id"]
    # The prompt as sampled, memory included: training on it matches what the policy saw.
    messages = [m.model_dump() for m in task_messages(task, cfg.system_prompt, state.get("memory"))]
    steps: list[StepRecord] = []
    critiques: list[CritiqueRecord] = []
    examples: list[ExampleRecord] = []
    seen: set[str] = set()
    n_plain = len(state["samples"])
    pairs = [
        *zip(state["samples"], state["critiques"], strict=True),
        *zip(state.get("hinted_samples", []), state.get("hinted_critiques", []), strict=True),
    ]
    for i, (s, c) in enumerate(pairs):
        crit = Critique.model_validate(c)
        hinted = i >= n_plain
        step_id = stable_id(eid, "step", i)
        steps.append(
            StepRecord(
                id=step_id,
                index=i,
                role="assistant",
                model_version=s["model_version"],
                text=s["text"],
                prompt_token_ids=s["prompt_token_ids"],
                token_ids=s["token_ids"],
                logprobs=s["logprobs"],
                reward=crit.reward,
                metadata={"finish_reason": s["finish_reason"], "extracted": crit.extracted, "hinted": hinted},
            )
        )
        critiques.append(
            CritiqueRecord(
                id=stable_id(eid, "critique", i),
                step_id=step_id,
                critic_version=crit.critic_version,
                verdict=str(crit.verdict),
                first_wrong_step=crit.first_wrong_step,
                text=crit.text,
                parsed=crit.parsed,
                corrected_solution=crit.corrected_solution,
            )
        )
        # Held-out answers never become training data: the store refuses them, and so do we.
        if not (cfg.emit_examples and crit.correct and task.split == Split.TRAIN):
            continue
        if (
            hinted and "hint" in s["text"].lower()
        ):  # a rationale that cites the hint teaches nothing un-hinted
            continue
        if cfg.dedupe_examples and s["text"].strip() in seen:
            continue
        seen.add(s["text"].strip())
        examples.append(
            ExampleRecord(
                id=stable_id(eid, "example", i),
                kind=ExampleKind.SFT,
                role=Role.POLICY,
                payload={"prompt": messages, "completion": [{"role": "assistant", "content": s["text"]}]},
                episode_id=eid,
                task_id=task.id,
                split=str(task.split),
            )
        )
    # Accuracy counts the policy's own answers; hinted ones are reported apart.
    verdicts = [c.verdict == "correct" for c in critiques]
    correct = sum(verdicts[:n_plain])
    outcome: dict[str, Any] = {
        "n": n_plain,
        "correct": correct,
        "pass": correct > 0,
        "examples": len(examples),
        "tokens": sum(len(s.token_ids or []) for s in steps),
        "first_correct": next((i for i, ok in enumerate(verdicts[:n_plain]) if ok), None),
    }
    if len(steps) > n_plain:
        outcome.update(hinted=len(steps) - n_plain, rationalized=sum(verdicts[n_plain:]))
    if state.get("memory"):
        outcome["memory"] = [m["task_id"] for m in state["memory"]]
    if cfg.emit_pairs and task.split == Split.TRAIN:  # held-out tasks never become training data
        answers = [
            Answer(index=s.index, text=s.text, correct=ok, hinted=s.index >= n_plain)
            for s, ok in zip(steps, verdicts, strict=True)
        ]
        pairs = preference_pairs(
            eid, messages, answers, task_id=task.id, split=str(task.split), max_pairs=cfg.max_pairs_per_task
        )
        examples += pairs
        outcome.update(pairs=len(pairs), examples=len(examples))  # examples: every kind the episode emits
    if cfg.emit_advantages and task.split == Split.TRAIN:
        rewards = [float(s.reward or 0.0) for s in steps[:n_plain]]
        actions = _actions(eid, task, messages, state["samples"], rewards, cfg)
        examples += actions
        outcome.update(actions=len(actions), examples=len(examples))
    return EpisodeRecord(
        id=eid,
        run_id=state["run_id"],
        task_id=task.id,
        loop=LOOP_NAME,
        reward=correct / n_plain if n_plain else 0.0,
        outcome=outcome,
        steps=steps,
        critiques=critiques,
        examples=examples,
    )


def _actions(
    eid: str,
    task: Task,
    messages: list[dict[str, Any]],
    samples: list[dict[str, Any]],
    rewards: list[float],
    cfg: BestOfNConfig,
) -> list[ExampleRecord]:
    """One pg action per sampled answer, as credit.action_examples builds them for a captured call: the same
    ids, log-probs and temperature, advantage = reward minus the group's mean (group_advantages)."""
    if cfg.temperature <= 0:  # greedy log-probs are not those of a distribution that was sampled from
        return []
    out: list[ExampleRecord] = []
    for i, (s, adv) in enumerate(zip(samples, group_advantages(rewards), strict=True)):
        if adv == 0.0 or not s["token_ids"] or not s["prompt_token_ids"] or s["logprobs"] is None:
            continue
        payload = AdvantagePayload(
            prompt_ids=s["prompt_token_ids"],
            completion_ids=s["token_ids"],
            logprobs=s["logprobs"],
            advantage=adv,
            temperature=cfg.temperature,
            model_version=s["model_version"],
            reward=rewards[i],
            prompt=messages,
            completion=s["text"],
            metadata={"episode": eid, "sample": i},
        )
        ex = payload.example(task_id=task.id, split=str(task.split))
        ex.id = stable_id(eid, "action", i)
        ex.episode_id = eid
        out.append(ex)
    return out


def _make(resources: LoopResources, config: BestOfNConfig) -> StateGraph:
    recall = None
    if config.memory_k:
        if resources.store is None:
            raise ValueError("best_of_n with memory_k > 0 needs the store (LoopResources.store)")
        recall = open_recall(resources.store, resources.task_set, resources.label or resources.task_set.name)
    return build_graph(resources.policy, VerifierCritic(resources.task_set), config, recall)


SPEC = register_loop(
    LoopSpec(
        name=LOOP_NAME,
        config=BestOfNConfig,
        make=_make,
        roles=(Role.POLICY,),
        example_kinds=(ExampleKind.SFT, ExampleKind.PAIR),
        description="Best-of-N rejection sampling (STaR): sample N answers per task, verify each, keep the correct "
        "ones as SFT examples (and correct-over-incorrect DPO pairs with emit_pairs); every attempt, right "
        "or wrong, is stored.",
    )
)
