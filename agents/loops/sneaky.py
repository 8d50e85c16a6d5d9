"""Sneaky generator vs step critic (SPC, arXiv 2504.19162): an adversarial game that trains a step critic
without human step labels.

plan: per task, `steps_per_task` slots, each a step position of the reference solution (training tasks only)
and an error type, seeded; with probability `correct_share` a slot shows the critic the original, correct step
instead, so that "always wrong" does not win -> rewrite: the generator (its own role; `generator = "policy"`
in a recipe lets the policy play it) sees the problem, the steps before the position, the correct step and
the error type, and rewrites the step into a subtly wrong one -> validate: a rewrite counts as sneaky only if
it really is wrong. Where the step can be recomputed (the critic benchmark's step checker) that decides: a
false equation or a number neither in the problem nor an earlier result is wrong, the original's value with
right arithmetic is not. Otherwise the policy continues the solution from the rewrite `rollouts` times and it
is wrong if at least `min_fail_share` of the continuations fail the verifier. An empty or unparseable rewrite
is counted and loses -> judge: the critic (no reference) judges the target step, `judgements` samples each
-> record.

Zero-sum rewards: on a sneaky step a judgement that catches the error is +1 for the critic, anything else
(accepting it, blaming another step, an unparsed reply) is -1; the generator's reward is minus the mean of its
step's judgements, and a rewrite that is not really wrong is -1. On a correct step the critic is rewarded
+1 for accepting it and -1 otherwise; the generator is not involved. Every rewrite, rollout and judgement is a
step with token ids and log-probs. Training examples (training tasks only): DPO pairs of a winning over a losing
judgement of one step (critic role) and of a sneaky over a caught rewrite of one step (generator role), and
GAME_TURN examples with the game reward as advantage for the `pg` trainer. The critic is measured on the
held-out critic benchmark (`[stages.eval] target = "critic"`), never on this game's own output, which the
generator learns to exploit. Each node is checkpointed, so a killed episode resumes where it stopped.

This module holds the config, state and graph; the game's rules are in `sneaky_rules`, the episode in
`sneaky_record` and its training examples in `sneaky_examples`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, ConfigDict, Field, model_validator

from strop.agents.engines.base import Engine, GenerationRequest, Message, SamplingParams
from strop.agents.loops.base import completion_json, stable_id, task_messages
from strop.agents.loops.registry import LoopResources, LoopSpec, register_loop
from strop.agents.loops.scrit import STEP_SYSTEM_PROMPT
from strop.agents.loops.sneaky_record import episode_of, summarize
from strop.agents.loops.sneaky_rules import (
    ERROR_TYPES,
    ErrorType,
    check_rewrite,
    critic_messages,
    decide_by_rollouts,
    generator_messages,
    plan_slots,
    rollout_text,
)
from strop.critics.llm import CriticSampling, chat_request
from strop.critics.verifier import VerifierCritic
from strop.memory.records import ExampleKind, Role
from strop.sandbox.tasks.base import Task

LOOP_NAME = "sneaky"


class SneakyConfig(BaseModel):
    """One SPC game per task: what the generator corrupts, how a rewrite is validated, how the critic judges,
    and what is emitted."""

    model_config = ConfigDict(extra="forbid")

    error_types: list[ErrorType] = Field(
        default_factory=lambda: list(ERROR_TYPES),
        description=f"Error types the generator is asked for, one drawn per slot: {', '.join(ERROR_TYPES)}.",
    )
    steps_per_task: int = Field(
        2,
        ge=1,
        le=32,
        description="Slots per task: step positions of the reference "
        "solution, distinct while there are steps left.",
    )
    correct_share: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Share of slots in which the critic judges the "
        "original, correct step (no generator), so that 'always wrong' does not win.",
    )
    rewrites: int = Field(
        1,
        ge=1,
        le=16,
        description="Rewrites sampled per sneaky slot; with 2 or more the "
        "generator's advantage is taken against their mean and its DPO pairs can form.",
    )
    generator_temperature: float = Field(
        1.0,
        ge=0.0,
        le=10.0,
        description="Sampling temperature of the generator (a pg stage training it must use the same).",
    )
    generator_max_tokens: int = Field(48, ge=1, le=4096, description="Most tokens per rewrite (one step).")
    rollouts: int = Field(
        4,
        ge=0,
        le=64,
        description="Continuations sampled from a rewrite that the arithmetic "
        "check cannot decide; 0: such rewrites do not count as sneaky.",
    )
    min_fail_share: float = Field(
        0.75,
        gt=0.0,
        le=1.0,
        description="Share of rollouts that must fail the verifier "
        "for an undecided rewrite to count as really wrong.",
    )
    control: bool = Field(
        True,
        description="Also roll out from the original step: an undecided rewrite then counts "
        "only if the original's continuations fail less often than min_fail_share (where the "
        "policy fails anyway, failures say nothing about the rewrite).",
    )
    rollout_temperature: float = Field(
        0.8, ge=0.0, le=10.0, description="Sampling temperature of the rollouts."
    )
    rollout_max_tokens: int = Field(64, ge=1, le=4096, description="Most tokens per rollout.")
    system_prompt: str | None = Field(
        STEP_SYSTEM_PROMPT,
        description="The policy's system message for rollouts "
        "(asks for one step a line); also what the held-out pass@1 asks with.",
    )
    critic_kind: Literal["prm", "generative"] = Field(
        "prm",
        description="prm: the StepScorer's Yes/No answer to 'Is step k correct?' (cheap, one token); "
        "generative: a written step-wise critique (StepwiseCritic) that must name the step. The critic "
        "benchmark of a recipe measures the same kind.",
    )
    judgements: int = Field(
        2,
        ge=1,
        le=32,
        description="Critic judgements sampled per target step; with 2 or "
        "more at temperature > 0 a won and a lost one can form a DPO pair.",
    )
    critic_temperature: float = Field(
        1.0,
        ge=0.0,
        le=10.0,
        description="Sampling temperature of the critic (a pg stage training it must use the same).",
    )
    critic_max_tokens: int = Field(
        160, ge=1, le=4096, description="Most tokens per generative critique (prm answers take 2)."
    )
    shots: int = Field(
        1,
        ge=0,
        le=3,
        description="Generative critic: worked critiques shown as earlier turns (also "
        "in its training prompts and its benchmark).",
    )
    critic_emit: list[Literal["pair", "pg"]] = Field(
        default_factory=lambda: ["pair", "pg"],
        description="Critic examples: 'pair' (PAIR: a won over a lost "
        "judgement of one step, for dpo) and/or 'pg' (GAME_TURN with the game reward, for pg).",
    )
    generator_emit: list[Literal["pair", "pg"]] = Field(
        default_factory=lambda: ["pg"],
        description="Generator examples: 'pg' (GAME_TURN with its reward) and/or "
        "'pair' (a rewrite that got past the critic over a caught or invalid one of the same step).",
    )
    complete_pairs: bool = Field(
        False,
        description="prm critic only: pair a step whose judgements all won (all lost) with the opposite "
        "Yes/No answer, which would have lost (won), so every judged step yields a pair.",
    )
    max_pairs_per_step: int = Field(2, ge=1, le=64, description="Most DPO pairs per judged step or per slot.")
    skip_zero_advantage: bool = Field(
        True, description="Drop pg examples whose advantage is 0 (no gradient)."
    )
    seed: int | None = Field(
        None,
        description="Seed of the slots and of sampling; None: random sampling (the "
        "slots are then drawn from the task id).",
    )

    @model_validator(mode="after")
    def _check(self) -> SneakyConfig:
        if not self.error_types:
            raise ValueError(f"error_types must name at least one of {', '.join(ERROR_TYPES)}")
        if self.complete_pairs and self.critic_kind != "prm":
            raise ValueError(
                "complete_pairs needs critic_kind = 'prm': only a Yes/No answer has a known opposite"
            )
        return self

    def sampling(self, temperature: float, max_tokens: int, n: int, *stream: object) -> SamplingParams:
        seed = None if self.seed is None else int(stable_id(self.seed, *stream)[:12], 16)
        return SamplingParams(n=n, temperature=temperature, max_tokens=max_tokens, seed=seed, logprobs=True)

    def critic_sampling(self) -> CriticSampling:
        tokens = 2 if self.critic_kind == "prm" else self.critic_max_tokens
        return CriticSampling(temperature=self.critic_temperature, max_tokens=tokens, seed=self.seed)


class SneakyState(TypedDict, total=False):
    """JSON values only, so any checkpointer can persist it between nodes."""

    task: dict[str, Any]
    run_id: str
    episode_id: str
    skipped: str | None  # why this task plays no game (held out, no reference steps)
    # per slot: {"slot", "position", "error_type", "target": "sneaky" | "correct", "prefix": [...], "original"}
    slots: list[dict[str, Any]]
    rewrites: list[list[dict[str, Any]]]  # per slot, the generator's Completion JSON (none for correct slots)
    # per slot and rewrite: {"status", "reason", "step", "rollouts": [{"completion", "reward", "correct"}]}
    checks: list[list[dict[str, Any]]]
    controls: list[
        list[dict[str, Any]]
    ]  # per slot, rollouts from the original step (when `control` needs them)
    # per slot and target (the original for a correct slot, each really wrong rewrite for a sneaky one):
    # {"rewrite": index | None, "completions": [Completion JSON, one per judgement]}
    judgements: list[list[dict[str, Any]]]
    episode: dict[str, Any]


def build_graph(
    policy: Engine,
    critic: Engine,
    verifier: VerifierCritic,
    config: SneakyConfig | None = None,
    *,
    generator: Engine | None = None,
) -> StateGraph:
    """The uncompiled graph. `policy` rolls out continuations; `generator` rewrites steps (default: the policy
    plays it); `critic` judges. One engine may play every role."""
    cfg = config or SneakyConfig()
    writer = generator if generator is not None else policy

    def plan(state: SneakyState) -> dict[str, Any]:
        task = Task.model_validate(state["task"])
        slots, skipped = plan_slots(task, cfg)
        return {"slots": slots, "skipped": skipped}

    async def rewrite(state: SneakyState) -> dict[str, Any]:
        task = Task.model_validate(state["task"])
        sneaky = [s for s in state["slots"] if s["target"] == "sneaky"]
        requests = [
            GenerationRequest(
                messages=[Message(**m) for m in generator_messages(task, s)],
                sampling=cfg.sampling(
                    cfg.generator_temperature,
                    cfg.generator_max_tokens,
                    cfg.rewrites,
                    "rewrite",
                    task.id,
                    s["slot"],
                ),
            )
            for s in sneaky
        ]
        completions = await writer.generate(requests) if requests else []
        got = {s["slot"]: [completion_json(c) for c in cs] for s, cs in zip(sneaky, completions, strict=True)}
        return {"rewrites": [got.get(s["slot"], []) for s in state["slots"]]}

    async def validate(state: SneakyState) -> dict[str, Any]:
        task = Task.model_validate(state["task"])
        checks = [
            [check_rewrite(task, slot, c["text"]) for c in cs]
            for slot, cs in zip(state["slots"], state["rewrites"], strict=True)
        ]
        todo = [
            (i, r) for i, row in enumerate(checks) for r, ch in enumerate(row) if ch["status"] == "undecided"
        ]
        controls: list[list[dict[str, Any]]] = [[] for _ in state["slots"]]
        if todo and cfg.rollouts:
            # (slot, rewrite or None for the original step, the partial solution a rollout continues)
            starts = [(i, r, rollout_text(state["slots"][i], checks[i][r]["step"])) for i, r in todo]
            if cfg.control:
                starts += [
                    (i, None, rollout_text(state["slots"][i], state["slots"][i]["original"]))
                    for i in dict.fromkeys(i for i, _ in todo)
                ]
            requests = [
                GenerationRequest(
                    messages=[
                        *task_messages(task, cfg.system_prompt),
                        Message(role="assistant", content=text),
                    ],
                    continue_final=True,
                    sampling=cfg.sampling(
                        cfg.rollout_temperature,
                        cfg.rollout_max_tokens,
                        cfg.rollouts,
                        "rollout",
                        task.id,
                        i,
                        "original" if r is None else r,
                    ),
                )
                for i, r, text in starts
            ]
            completions = await policy.generate(requests)
            for (i, r, text), cs in zip(starts, completions, strict=True):
                verdicts = await asyncio.gather(*(verifier.critique(task, text + c.text) for c in cs))
                rolled = [
                    {"completion": completion_json(c), "reward": v.reward, "correct": v.correct}
                    for c, v in zip(cs, verdicts, strict=True)
                ]
                if r is None:
                    controls[i] = rolled
                else:
                    checks[i][r]["rollouts"] = rolled
        for i, row in enumerate(checks):
            for ch in row:
                if ch["status"] == "undecided":
                    decide_by_rollouts(ch, controls[i], cfg)
        return {"checks": checks, "controls": controls}

    async def judge(state: SneakyState) -> dict[str, Any]:
        task = Task.model_validate(state["task"])
        targets: list[tuple[int, int | None, str]] = []  # (slot index, rewrite index, the step judged)
        for i, slot in enumerate(state["slots"]):
            if slot["target"] == "correct":
                targets.append((i, None, slot["original"]))
            targets += [
                (i, r, ch["step"]) for r, ch in enumerate(state["checks"][i]) if ch["status"] == "wrong"
            ]
        sampling = cfg.critic_sampling()
        requests = [
            chat_request(
                critic_messages(task, state["slots"][i], step, cfg),
                sampling,
                cfg.judgements,
                "judge",
                task.id,
                i,
                r,
            )
            for i, r, step in targets
        ]
        completions = await critic.generate(requests) if requests else []  # type: ignore[arg-type]
        judgements: list[list[dict[str, Any]]] = [[] for _ in state["slots"]]
        for (i, r, _), cs in zip(targets, completions, strict=True):
            judgements[i].append({"rewrite": r, "completions": [completion_json(c) for c in cs]})
        return {"judgements": judgements}

    def record(state: SneakyState) -> dict[str, Any]:
        return {"episode": episode_of(state, cfg, loop=LOOP_NAME).model_dump(mode="json")}

    def after_plan(state: SneakyState) -> str:
        return "record" if state.get("skipped") else "rewrite"

    graph = StateGraph(SneakyState)
    for name, node in (
        ("plan", plan),
        ("rewrite", rewrite),
        ("validate", validate),
        ("judge", judge),
        ("record", record),
    ):
        graph.add_node(name, node)
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", after_plan, ["rewrite", "record"])
    graph.add_edge("rewrite", "validate")
    graph.add_edge("validate", "judge")
    graph.add_edge("judge", "record")
    graph.add_edge("record", END)
    return graph


def _make(resources: LoopResources, config: SneakyConfig) -> StateGraph:
    return build_graph(
        resources.policy,
        resources.engine(Role.CRITIC),
        VerifierCritic(resources.task_set),
        config,
        generator=resources.engine(Role.GENERATOR),
    )


SPEC = register_loop(
    LoopSpec(
        name=LOOP_NAME,
        config=SneakyConfig,
        make=_make,
        roles=(Role.POLICY, Role.CRITIC, Role.GENERATOR),
        example_kinds=(ExampleKind.PAIR, ExampleKind.GAME_TURN),
        example_roles={ExampleKind.PAIR: Role.CRITIC, ExampleKind.GAME_TURN: Role.CRITIC},
        summarize=summarize,
        description="Sneaky generator vs step critic (SPC): the generator rewrites a correct reference step into a "
        "subtly wrong one of a chosen error type, kept only if really wrong (the step checker, else "
        "verifier-checked rollouts); the critic judges it or an original correct step; zero-sum rewards; "
        "PAIR (dpo) and GAME_TURN (pg) examples for the critic and the generator roles.",
    )
)
