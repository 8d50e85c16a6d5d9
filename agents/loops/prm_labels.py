"""Step labels for a process reward model, made without a human, as a LangGraph loop (`loop = "prm_labels"`).

One episode per training problem. It writes critic-role SFT examples in the step scorer's own prompt ('Is step
k correct? Answer Yes or No.', `critics/scorer.py`), so a model trained on them is read by
`strop eval-critic --prm`, MCTS's `evaluation = "scorer"` and `strop eval-search` exactly as it was trained.
Which labels, as settings:
- `reference`: every prefix of the problem's reference solution is Yes;
- `kinds` / `corruptions_per_task`: the reference corrupted in known ways (calculation, operand, copy, drop,
  `critics/corruption.py`), its first wrong step No;
- `solutions` > 0: MATH-Shepherd (arXiv 2312.08935): the policy writes step-by-step solutions, `rollouts`
  continuations are sampled from each of their step prefixes, and a step's value is the share that reach the
  right answer (the verifier checks), a hard or a soft label (`label`).
Tree values from solved MCTS trees are the `mcts` loop's `emit_values`; a recipe stage trains on both
(`recipes/prm-arithmetic.toml`). Held-out problems give no labels, whatever the config.

solve (n solutions, one batched request) -> rollout (k continuations from every step prefix, one batched
request; the last step of a solution that states an answer is valued by that answer) -> record.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, ConfigDict, Field, field_validator

from strop.agents.engines.base import Engine, GenerationRequest, Message, SamplingParams
from strop.agents.loops.base import completion_json, stable_id, task_messages
from strop.agents.loops.prm_record import episode_of, step_prefixes, summarize
from strop.agents.loops.registry import LoopResources, LoopSpec, register_loop
from strop.agents.loops.scrit import STEP_SYSTEM_PROMPT
from strop.critics.corruption import CORRUPTION_KINDS
from strop.critics.verifier import VerifierCritic
from strop.memory.records import ExampleKind, Role
from strop.sandbox.tasks.base import Split, Task
from strop.sandbox.tasks.extract import extract_answer

LOOP_NAME = "prm_labels"


class PRMLabelsConfig(BaseModel):
    """Which step labels an episode writes (the label mix) and how the rollout values are estimated."""

    model_config = ConfigDict(extra="forbid")

    reference: bool = Field(True, description="Label every prefix of the reference solution Yes.")
    kinds: list[str] = Field(
        default_factory=lambda: list(CORRUPTION_KINDS),
        description="Corruptions of the reference whose first wrong step is labelled No "
        f"(from {', '.join(CORRUPTION_KINDS)}); [] for none.",
    )
    corruptions_per_task: int | None = Field(
        2,
        ge=0,
        description="Corrupted references per problem (kinds in a seeded per-problem rotation, each at most "
        "once); None: every kind that applies. 2 keeps a two-step problem's Yes and No even.",
    )
    balance: bool = Field(
        True,
        description="As many reference Yes as corruption No per problem (the reference prefixes as long as "
        "a corruption's first, so a right and a wrong version of one step); false: every reference prefix.",
    )
    solutions: int = Field(
        0, ge=0, le=64, description="Policy solutions per problem for MATH-Shepherd values; 0: none."
    )
    rollouts: int = Field(
        4, ge=1, le=64, description="Continuations sampled from each step prefix (MATH-Shepherd's N)."
    )
    label: Literal["hard", "soft"] = Field(
        "hard",
        description="hard: Yes when the share of continuations reaching the answer is at least yes_at; soft: "
        "soft_copies copies of the example, round(share * copies) answered Yes and the rest No.",
    )
    yes_at: float = Field(
        0.01,
        gt=0.0,
        le=1.0,
        description="Hard labels: the share at which a step is Yes (0.01: any continuation succeeded, "
        "MATH-Shepherd's hard estimation).",
    )
    soft_copies: int = Field(4, ge=1, le=32, description="Soft labels: copies per step.")
    only_solved: bool = Field(
        True,
        description="Rollout labels only from problems where some solution or continuation reached the answer: "
        "where none did, every value is 0 whether the step was right or not.",
    )
    max_steps: int = Field(6, ge=1, le=64, description="Most steps of a solution that are valued.")
    temperature: float = Field(
        0.8, ge=0.0, le=10.0, description="Sampling temperature of solutions and rollouts."
    )
    max_tokens: int = Field(96, ge=1, le=4096, description="Most tokens per solution.")
    rollout_max_tokens: int = Field(64, ge=1, le=4096, description="Most tokens per continuation.")
    system_prompt: str | None = Field(
        STEP_SYSTEM_PROMPT, description="The policy's system message (asks for one step a line)."
    )
    critic_kind: Literal["prm"] = Field(
        "prm",
        description="How the critic benchmark asks the critic these labels train: as a PRM (Yes/No per step "
        "prefix), the form of the labels.",
    )
    seed: int | None = Field(
        0, description="Seed of the corruptions and the sampling; None: random sampling."
    )

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, value: list[str]) -> list[str]:
        bad = [k for k in value if k not in CORRUPTION_KINDS]
        if bad:
            raise ValueError(f"unknown corruption kind(s) {bad}; choose from {', '.join(CORRUPTION_KINDS)}")
        return list(dict.fromkeys(value))

    def sampling(self, *stream: object, n: int, max_tokens: int) -> SamplingParams:
        seed = None if self.seed is None else int(stable_id(self.seed, *stream)[:12], 16)
        return SamplingParams(
            n=n, temperature=self.temperature, max_tokens=max_tokens, seed=seed, logprobs=True
        )


class PRMLabelsState(TypedDict, total=False):
    task: dict[str, Any]
    run_id: str
    episode_id: str
    # per solution: completion (JSON), correct, prefixes [{steps, rollouts (completions), outcomes}]
    solutions: list[dict[str, Any]]
    tokens: int
    episode: dict[str, Any]


def build_graph(
    policy: Engine | None, verifier: VerifierCritic, config: PRMLabelsConfig | None = None
) -> StateGraph:
    """The uncompiled graph. `policy` writes the solutions MATH-Shepherd values (needed when `solutions` > 0)."""
    cfg = config or PRMLabelsConfig()
    if cfg.solutions and policy is None:
        raise ValueError(
            "solutions > 0 needs a policy engine for MATH-Shepherd rollouts; pass one (a recipe gives the "
            "policy role's model) or set solutions = 0"
        )

    def wanted(task: Task) -> bool:
        return bool(cfg.solutions) and task.split == Split.TRAIN

    async def solve(state: PRMLabelsState) -> dict[str, Any]:
        task = Task.model_validate(state["task"])
        if not wanted(task):
            return {"solutions": [], "tokens": 0}
        assert policy is not None
        req = GenerationRequest(
            messages=task_messages(task, cfg.system_prompt),
            sampling=cfg.sampling(task.id, "solve", n=cfg.solutions, max_tokens=cfg.max_tokens),
        )
        [completions] = await policy.generate([req])
        verdicts = await asyncio.gather(*(verifier.critique(task, c.text) for c in completions))
        solutions = [
            {
                "completion": completion_json(c),
                "correct": v.correct,
                "prefixes": [
                    {"text": text, "steps": steps, "rollouts": [], "outcomes": []}
                    for text, steps in step_prefixes(c.text)[: cfg.max_steps]
                ],
            }
            for c, v in zip(completions, verdicts, strict=True)
        ]
        return {"solutions": solutions, "tokens": sum(len(c.token_ids) for c in completions)}

    async def rollout(state: PRMLabelsState) -> dict[str, Any]:
        task = Task.model_validate(state["task"])
        solutions = [dict(s, prefixes=[dict(p) for p in s["prefixes"]]) for s in state["solutions"]]
        todo: list[tuple[int, int]] = []
        for s, sol in enumerate(solutions):
            answered = extract_answer(sol["completion"]["text"]) is not None
            for p, pre in enumerate(sol["prefixes"]):
                if answered and p == len(sol["prefixes"]) - 1:
                    pre["outcomes"] = [bool(sol["correct"])]  # the solution's own answer follows this step
                else:
                    todo.append((s, p))
        if not todo:
            return {"solutions": solutions}
        assert policy is not None
        requests = [
            GenerationRequest(
                messages=[
                    *task_messages(task, cfg.system_prompt),
                    Message(role="assistant", content=solutions[s]["prefixes"][p]["text"]),
                ],
                continue_final=True,
                sampling=cfg.sampling(
                    task.id, "rollout", s, p, n=cfg.rollouts, max_tokens=cfg.rollout_max_tokens
                ),
            )
            for s, p in todo
        ]
        out = await policy.generate(requests)
        spent = 0
        for (s, p), cs in zip(todo, out, strict=True):
            pre = solutions[s]["prefixes"][p]
            verdicts = await asyncio.gather(*(verifier.critique(task, pre["text"] + c.text) for c in cs))
            pre["rollouts"] = [completion_json(c) for c in cs]
            pre["outcomes"] = [v.correct for v in verdicts]
            spent += sum(len(c.token_ids) for c in cs)
        return {"solutions": solutions, "tokens": state.get("tokens", 0) + spent}

    def record(state: PRMLabelsState) -> dict[str, Any]:
        return {"episode": episode_of(dict(state), cfg, loop=LOOP_NAME).model_dump(mode="json")}

    graph = StateGraph(PRMLabelsState)
    graph.add_node("solve", solve)
    graph.add_node("rollout", rollout)
    graph.add_node("record", record)
    graph.add_edge(START, "solve")
    graph.add_edge("solve", "rollout")
    graph.add_edge("rollout", "record")
    graph.add_edge("record", END)
    return graph


def _make(resources: LoopResources, config: PRMLabelsConfig) -> StateGraph:
    policy = resources.policy if config.solutions else None
    return build_graph(policy, VerifierCritic(resources.task_set), config)


def _roles(config: PRMLabelsConfig) -> tuple[Role, ...]:
    return (Role.POLICY,) if config.solutions else ()


SPEC = register_loop(
    LoopSpec(
        name=LOOP_NAME,
        config=PRMLabelsConfig,
        make=_make,
        roles=(Role.POLICY,),
        roles_for=_roles,
        example_kinds=(ExampleKind.SFT,),
        example_roles={ExampleKind.SFT: Role.CRITIC},
        summarize=summarize,
        evaluator="critic",
        description="Step labels for a process reward model without a human: reference steps (Yes), their known "
        "corruptions (first wrong step No) and MATH-Shepherd rollout values of the policy's own steps, as "
        "critic-role SFT examples in the step scorer's Yes/No prompt; measured by the critic benchmark as a PRM.",
    )
)
