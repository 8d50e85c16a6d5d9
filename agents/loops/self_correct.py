"""Self-correction (SCoRe, arXiv 2409.12917): an attempt, feedback, a revision, for K turns.

attempt: the policy answers the task (`n` independent conversations) -> check: the verifier scores the latest
turn of each -> feedback: an intrinsic instruction to find and fix mistakes, a critique from a critic, the
verifier's verdict (an oracle upper bound) or the code jail's output -> revise: the policy answers again with
the whole conversation as context -> check ... -> record.

Each turn is generated from the previous turn's exact token ids plus the feedback's tokens
(`GenerationRequest.context_token_ids`), so a turn's stored `prompt_token_ids` are exactly what the policy
read and training never re-tokenizes earlier turns. Each graph node is one turn's work, so a run killed
between turns resumes at the next one from the LangGraph checkpoint.

Training signal (SCoRe): SFT on correction traces teaches a small model to leave its answer alone; RL on its
own attempts with a bonus for improving teaches it to fix mistakes. The loop scores its turns itself and
emits one `ADVANTAGE` example per turn for the `pg` trainer kind:
- stage 1: the revisions, with advantage r(y_t) minus the group's mean; turn 1 with advantage 0, so only the
  trainer's KL term (beta > 0) acts on it and keeps it near the parent (SCoRe's stage I);
- stage 2: every turn; a revision's reward is r(y_t) + alpha * (r(y_t) - r(y_{t-1})) (SCoRe's bonus).
`emit = "sft"` instead writes the SFT-on-corrections baseline: revisions that end right, as SFT examples.

This module holds the loop's config, state and graph; what is said between turns is in `self_correct_turns`,
the episode with its rewards and examples in `self_correct_record`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, ConfigDict, Field

from strop.agents.engines.base import Engine, GenerationRequest, SamplingParams
from strop.agents.loops.base import completion_json, stable_id, task_messages
from strop.agents.loops.registry import LoopResources, LoopSpec, register_loop
from strop.agents.loops.self_correct_record import episode_of
from strop.agents.loops.self_correct_turns import (
    INTRINSIC_INSTRUCTION,
    Feedback,
    feedback_for,
    revision_request,
)
from strop.critics.base import Critic, Critique
from strop.critics.llm import CriticSampling, StepwiseCritic
from strop.critics.verifier import VerifierCritic
from strop.memory.records import ExampleKind, Role
from strop.sandbox.tasks.base import Task

LOOP_NAME = "self_correct"


class SelfCorrectConfig(BaseModel):
    """One self-correction episode: how turns are sampled, what feedback comes between them, what is emitted."""

    model_config = ConfigDict(extra="forbid")

    turns: int = Field(
        2, ge=2, le=8, description="Turns per conversation: one attempt and turns - 1 revisions."
    )
    n: int = Field(
        4,
        ge=1,
        le=64,
        description="Independent conversations per task (the group the baseline is taken over).",
    )
    temperature: float = Field(
        1.0,
        ge=0.0,
        le=10.0,
        description="Sampling temperature of every turn; the pg trainer's temperature must match it.",
    )
    max_tokens: int = Field(64, ge=1, le=32768, description="Most new tokens per turn.")
    system_prompt: str | None = Field(None, description="System message before the task (kept in examples).")
    feedback: Feedback = Field(
        Feedback.INTRINSIC, description="Between turns: intrinsic, critic, oracle or execution."
    )
    instruction: str = Field(
        INTRINSIC_INSTRUCTION,
        description="The request to revise, after the feedback (alone for intrinsic feedback).",
    )
    critic_max_tokens: int = Field(
        160, ge=16, le=4096, description="Critic feedback: most tokens per critique."
    )
    critic_shots: int = Field(
        0, ge=0, le=3, description="Critic feedback: worked critiques shown to the critic."
    )
    feedback_chars: int = Field(
        600, ge=40, description="Longest feedback text (critiques and jail output are cut)."
    )
    stop_when_correct: bool = Field(
        False,
        description="End a conversation once a turn is verified correct. It tells the policy nothing, but "
        "it uses the verifier to decide, so leave it off when measuring self-correction.",
    )
    emit: Literal["pg", "sft", "none"] = Field(
        "pg",
        description="Training examples: 'pg' (one ADVANTAGE example per turn, SCoRe), 'sft' (revisions that "
        "end right, the SFT-on-corrections baseline) or 'none'. Held-out tasks never emit.",
    )
    stage: Literal[1, 2] = Field(
        2,
        description="SCoRe stage the pg examples are for: 1 trains the revisions and anchors turn 1 (advantage "
        "0, for the trainer's KL term); 2 trains every turn with the improvement bonus.",
    )
    alpha: float = Field(1.0, ge=0.0, description="Weight of SCoRe's bonus r(y_t) - r(y_t-1) (stage 2).")
    anchors_per_task: int = Field(
        1,
        ge=0,
        le=64,
        description="Stage 1: turn-1 anchors emitted per task (the first conversations'). They "
        "only feed the trainer's KL term, for which one sample per task is an estimate; each costs a "
        "training row, and with n = 4 anchoring all of them would be most of the stage's examples.",
    )
    skip_zero_advantage: bool = Field(
        True,
        description="Drop pg examples whose advantage is 0 (they carry no gradient without a KL term); "
        "stage 1's turn-1 anchors are kept.",
    )
    sft_keep_correct: bool = Field(
        True,
        description="SFT baseline: also keep right-to-right revisions (not only wrong-to-right ones).",
    )
    token_context: bool = Field(
        True,
        description="Continue each conversation from the previous turn's token ids (exact); off sends the "
        "whole conversation as text (for engines without a local tokenizer, e.g. openai).",
    )
    seed: int | None = Field(
        None,
        description="Sampling seed; each task, conversation and turn get their own stream. None: random.",
    )

    def sampling(self, *stream: object, n: int = 1) -> SamplingParams:
        seed = None if self.seed is None else int(stable_id(self.seed, *stream)[:12], 16)
        return SamplingParams(
            n=n, temperature=self.temperature, max_tokens=self.max_tokens, seed=seed, logprobs=True
        )


class SelfCorrectState(TypedDict, total=False):
    """JSON values only, so any checkpointer can persist it between turns."""

    task: dict[str, Any]
    run_id: str
    episode_id: str
    turns: list[list[dict[str, Any]]]  # per conversation, its turns' Completion JSON
    checks: list[list[dict[str, Any]]]  # per conversation, the verifier's Critique JSON of each turn
    feedback: list[
        list[dict[str, Any]]
    ]  # per conversation, {"text", "critique"} given after each turn but the last
    episode: dict[str, Any]


def build_graph(
    policy: Engine,
    verifier: VerifierCritic,
    config: SelfCorrectConfig | None = None,
    critic: Critic | None = None,
) -> StateGraph:
    """The uncompiled graph. `critic` gives the feedback when `config.feedback` is 'critic' (any Critic)."""
    cfg = config or SelfCorrectConfig()
    if cfg.feedback == Feedback.CRITIC and critic is None:
        raise ValueError(
            "feedback = 'critic' needs a critic: pass critic=... (a recipe gives the loop the critic "
            'role\'s model; add `critic = "policy"` under [roles] for self-critique)'
        )

    async def attempt(state: SelfCorrectState) -> dict[str, Any]:
        task = Task.model_validate(state["task"])
        request = GenerationRequest(
            messages=task_messages(task, cfg.system_prompt), sampling=cfg.sampling(task.id, 0, n=cfg.n)
        )
        [completions] = await policy.generate([request])
        return {
            "turns": [[completion_json(c)] for c in completions],
            "checks": [[] for _ in completions],
            "feedback": [[] for _ in completions],
        }

    async def check(state: SelfCorrectState) -> dict[str, Any]:
        task = Task.model_validate(state["task"])
        pending = [
            (i, turns[-1]["text"])
            for i, turns in enumerate(state["turns"])
            if len(state["checks"][i]) < len(turns)
        ]
        verdicts = await asyncio.gather(*(verifier.critique(task, text) for _, text in pending))
        checks = [list(c) for c in state["checks"]]
        for (i, _), v in zip(pending, verdicts, strict=True):
            checks[i].append(v.model_dump(mode="json"))
        return {"checks": checks}

    def active(state: SelfCorrectState) -> list[int]:
        """Conversations that take another turn."""
        return [
            i
            for i, turns in enumerate(state["turns"])
            if len(turns) < cfg.turns
            and not (cfg.stop_when_correct and Critique.model_validate(state["checks"][i][-1]).correct)
        ]

    async def feedback(state: SelfCorrectState) -> dict[str, Any]:
        task = Task.model_validate(state["task"])
        todo = active(state)
        given = await asyncio.gather(
            *(
                feedback_for(
                    cfg,
                    task,
                    state["turns"][i][-1]["text"],
                    Critique.model_validate(state["checks"][i][-1]),
                    critic,
                )
                for i in todo
            )
        )
        fb = [list(f) for f in state["feedback"]]
        for i, g in zip(todo, given, strict=True):
            fb[i].append(g)
        return {"feedback": fb}

    async def revise(state: SelfCorrectState) -> dict[str, Any]:
        task = Task.model_validate(state["task"])
        todo = [i for i, turns in enumerate(state["turns"]) if len(state["feedback"][i]) == len(turns)]
        requests = [revision_request(cfg, task, state["turns"][i], state["feedback"][i], i) for i in todo]
        completions = await policy.generate(requests)
        turns = [list(t) for t in state["turns"]]
        for i, [c] in zip(todo, completions, strict=True):
            turns[i].append(completion_json(c))
        return {"turns": turns}

    def after_check(state: SelfCorrectState) -> str:
        return "feedback" if active(state) else "record"

    def record(state: SelfCorrectState) -> dict[str, Any]:
        return {"episode": episode_of(state, cfg, loop=LOOP_NAME).model_dump(mode="json")}

    graph = StateGraph(SelfCorrectState)
    graph.add_node("attempt", attempt)
    graph.add_node("check", check)
    graph.add_node("feedback", feedback)
    graph.add_node("revise", revise)
    graph.add_node("record", record)
    graph.add_edge(START, "attempt")
    graph.add_edge("attempt", "check")
    graph.add_conditional_edges("check", after_check, ["feedback", "record"])
    graph.add_edge("feedback", "revise")
    graph.add_edge("revise", "check")
    graph.add_edge("record", END)
    return graph


def critic_for(resources: LoopResources, config: SelfCorrectConfig) -> Critic | None:
    if config.feedback != Feedback.CRITIC:
        return None
    sampling = CriticSampling(temperature=0.0, max_tokens=config.critic_max_tokens, seed=config.seed)
    return StepwiseCritic(resources.engine(Role.CRITIC), sampling=sampling, shots=config.critic_shots)


def _make(resources: LoopResources, config: SelfCorrectConfig) -> StateGraph:
    # Offloaded: code checks run a jail process; for arithmetic the thread hop is noise beside generation.
    return build_graph(
        resources.policy,
        VerifierCritic(resources.task_set, offload=True),
        config,
        critic_for(resources, config),
    )


def _roles(config: SelfCorrectConfig) -> tuple[Role, ...]:
    return (Role.POLICY, Role.CRITIC) if config.feedback == Feedback.CRITIC else (Role.POLICY,)


SPEC = register_loop(
    LoopSpec(
        name=LOOP_NAME,
        evaluator="self_correct",
        config=SelfCorrectConfig,
        make=_make,
        roles=(Role.POLICY,),
        roles_for=_roles,
        example_kinds=(ExampleKind.ADVANTAGE, ExampleKind.SFT),
        description="Self-correction (SCoRe): attempt, feedback (intrinsic, critic, oracle or code execution), "
        "revise, for K turns; records accuracy per turn and wrong-to-right / right-to-wrong changes, and "
        "emits per-turn ADVANTAGE examples with SCoRe's improvement bonus for the pg trainer (or the "
        "SFT-on-corrections baseline).",
    )
)
