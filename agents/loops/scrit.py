"""SCRIT (arXiv 2501.05727): a critic that improves itself by contrastive critique and self-validation.

solve: the policy writes student solutions (right and wrong) -> check: the verifier labels them ->
critique: the contrastive critic reads the reference solution, then critiques each student solution step by
step, names the first wrong step, gives a verdict and writes a corrected solution -> validate: a critique is
kept only if its verdict matches the ground truth and its corrected solution reaches the reference answer
(and, where the solution's steps can be checked, it names the true first wrong step) -> record.
Kept critiques become SFT examples of the critic role whose prompt is the step-wise critic's, with the
reference removed, so the trained critic works without one. Rounds repeat with the improved critic (a
recipe's cycles). The paper finds self-validation is what makes it work: `validate = false` keeps every
critique that parses, for the comparison.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, ConfigDict, Field

from strop.agents.engines.base import Engine, SamplingParams
from strop.agents.loops.base import chat_request, completion_json, stable_id, task_messages
from strop.agents.loops.registry import LoopResources, LoopSpec, register_loop
from strop.critics.base import Critique, CritiqueVerdict
from strop.critics.labelling import label_solution
from strop.critics.llm import ContrastiveCritic, CriticSampling, StepwiseCritic
from strop.critics.verifier import VerifierCritic
from strop.memory.records import CritiqueRecord, EpisodeRecord, ExampleKind, ExampleRecord, Role, StepRecord
from strop.sandbox.tasks.base import Split, Task

LOOP_NAME = "scrit"
STEP_SYSTEM_PROMPT = (
    "Solve the problem step by step. Write each step on its own line as 'Step N: a op b = c', "
    "then the final answer on its own line as '#### N'."
)
_FINAL_LINE = re.compile(r"^\s*####[^\n]*", re.MULTILINE)


class ScritConfig(BaseModel):
    """One SCRIT round: how students solve, how the critic critiques, what is kept."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    n_solutions: int = Field(
        4, ge=1, le=64, description="Student solutions sampled from the policy per task."
    )
    solution_temperature: float = Field(
        0.8, ge=0.0, le=10.0, description="Sampling temperature of the students."
    )
    solution_max_tokens: int = Field(96, ge=1, le=4096, description="Most tokens per student solution.")
    system_prompt: str | None = Field(
        STEP_SYSTEM_PROMPT, description="The students' system message (asks for numbered steps)."
    )
    critiques_per_solution: int = Field(
        2, ge=1, le=64, description="Contrastive critiques sampled per solution."
    )
    critic_temperature: float = Field(0.7, ge=0.0, le=10.0, description="Sampling temperature of the critic.")
    critic_max_tokens: int = Field(160, ge=16, le=4096, description="Most tokens per critique.")
    shots: int = Field(
        1,
        ge=0,
        le=3,
        description="Worked critiques shown to the critic as earlier turns (also in its "
        "training prompts, so evaluate with the same number).",
    )
    validate_critiques: bool = Field(
        True,
        alias="validate",
        description="Self-validation: keep a critique only if its verdict matches the verifier and its corrected "
        "solution reaches the reference answer. Off keeps every critique that parses (the paper's ablation).",
    )
    check_first_step: bool = Field(
        True,
        description="Where a wrong solution's steps can be checked (arithmetic), also require the critique "
        "to name the true first wrong step.",
    )
    max_examples_per_task: int = Field(4, ge=1, le=256, description="Most critic examples kept per task.")
    balance: bool = Field(
        True,
        description="Keep no more critiques of right solutions than of wrong ones per task, so the critic "
        "does not learn to say 'correct' to everything.",
    )
    emit_corrections: bool = Field(
        False,
        description="Also emit policy SFT examples: the task and a validated corrected solution.",
    )
    seed: int | None = Field(None, description="Sampling seed for students and critic; None: random.")

    def solution_sampling(self, *stream: object) -> SamplingParams:
        seed = None if self.seed is None else int(stable_id(self.seed, "solve", *stream)[:12], 16)
        return SamplingParams(
            n=self.n_solutions,
            temperature=self.solution_temperature,
            max_tokens=self.solution_max_tokens,
            seed=seed,
            logprobs=True,
        )

    def critic_sampling(self) -> CriticSampling:
        return CriticSampling(
            temperature=self.critic_temperature, max_tokens=self.critic_max_tokens, seed=self.seed
        )


class ScritState(TypedDict, total=False):
    task: dict[str, Any]
    run_id: str
    episode_id: str
    solutions: list[dict[str, Any]]  # Completion JSON
    verdicts: list[dict[str, Any]]  # verifier Critique JSON, aligned with solutions
    critiques: list[list[dict[str, Any]]]  # per solution, the critic's Critique JSON
    fixes: list[list[bool]]  # per critique: does its corrected solution reach the reference answer
    episode: dict[str, Any]


def build_graph(
    policy: Engine, critic: Engine, verifier: VerifierCritic, config: ScritConfig | None = None
) -> StateGraph:
    """The uncompiled SCRIT graph: `policy` writes solutions, `critic` critiques them (may be the same engine)."""
    cfg = config or ScritConfig()
    contrastive = ContrastiveCritic(critic, sampling=cfg.critic_sampling(), shots=cfg.shots)

    async def solve(state: ScritState) -> dict[str, Any]:
        task = Task.model_validate(state["task"])
        [completions] = await policy.generate(
            [chat_request(task_messages(task, cfg.system_prompt), cfg.solution_sampling(task.id))]
        )
        verdicts = await asyncio.gather(*(verifier.critique(task, c.text) for c in completions))
        return {
            "solutions": [completion_json(c) for c in completions],
            "verdicts": [v.model_dump(mode="json") for v in verdicts],
        }

    async def critique(state: ScritState) -> dict[str, Any]:
        task = Task.model_validate(state["task"])
        per_solution = await asyncio.gather(
            *(
                contrastive.sample(
                    task, s["text"], task.reference_solution, n=cfg.critiques_per_solution, stream=i
                )
                for i, s in enumerate(state["solutions"])
            )
        )

        async def fixed(c: Critique, solution: str) -> bool:
            text = c.corrected_solution or (solution if c.verdict == CritiqueVerdict.CORRECT else None)
            return text is not None and (await verifier.critique(task, text)).correct

        fixes = [
            await asyncio.gather(*(fixed(c, s["text"]) for c in cs))
            for cs, s in zip(per_solution, state["solutions"], strict=True)
        ]
        return {
            "critiques": [[c.model_dump(mode="json") for c in cs] for cs in per_solution],
            "fixes": [list(f) for f in fixes],
        }

    def record(state: ScritState) -> dict[str, Any]:
        return {
            "episode": _episode(state, cfg, StepwiseCritic(critic, shots=cfg.shots)).model_dump(mode="json")
        }

    graph = StateGraph(ScritState)
    graph.add_node("solve", solve)
    graph.add_node("critique", critique)
    graph.add_node("record", record)
    graph.add_edge(START, "solve")
    graph.add_edge("solve", "critique")
    graph.add_edge("critique", "record")
    graph.add_edge("record", END)
    return graph


def validate(
    critique: Critique, student_correct: bool, fixed: bool, true_first: int | None, check_first_step: bool
) -> tuple[bool, str]:
    """SCRIT's self-validation of one critique, with the reason it failed (for inspection)."""
    if not critique.parsed:
        return False, f"unparsed: {critique.parse_error}"
    if critique.correct != student_correct:
        return False, "verdict disagrees with the verifier"
    if not fixed:
        return False, "corrected solution does not reach the reference answer"
    if (
        check_first_step
        and not student_correct
        and true_first is not None
        and critique.first_wrong_step != true_first
    ):
        return False, f"names step {critique.first_wrong_step}, the first wrong step is {true_first}"
    return True, "validated"


def trim_critique(text: str) -> str:
    """The critique up to its corrected solution's '#### answer' line: what rambles after it teaches nothing."""
    m = _FINAL_LINE.search(text)
    return (text[: m.end()] if m else text).strip()


def _episode(state: ScritState, cfg: ScritConfig, stepwise: StepwiseCritic) -> EpisodeRecord:
    task = Task.model_validate(state["task"])
    eid = state["episode_id"]
    train = task.split == Split.TRAIN
    steps: list[StepRecord] = []
    records: list[CritiqueRecord] = []
    kept: dict[bool, list[ExampleRecord]] = {True: [], False: []}  # by the student's correctness
    corrections: list[ExampleRecord] = []
    n = kept_n = parsed = validated = 0
    for i, (sol, ver) in enumerate(zip(state["solutions"], state["verdicts"], strict=True)):
        right = Critique.model_validate(ver).correct
        label = None if right else label_solution(task, sol["text"])
        true_first = label.first_wrong_step if label is not None else None
        step_id = stable_id(eid, "solution", i)
        steps.append(
            StepRecord(
                id=step_id,
                index=i,
                role="assistant",
                model_version=sol["model_version"],
                text=sol["text"],
                prompt_token_ids=sol["prompt_token_ids"],
                token_ids=sol["token_ids"],
                logprobs=sol["logprobs"],
                reward=1.0 if right else 0.0,
                metadata={"finish_reason": sol["finish_reason"], "first_wrong_step": true_first},
            )
        )
        for j, (cj, fixed) in enumerate(zip(state["critiques"][i], state["fixes"][i], strict=True)):
            c = Critique.model_validate(cj)
            n += 1
            parsed += c.parsed
            ok, why = validate(c, right, fixed, true_first, cfg.check_first_step)
            keep = ok if cfg.validate_critiques else c.parsed
            kept_n += keep
            validated += ok
            records.append(
                CritiqueRecord(
                    id=stable_id(eid, "critique", i, j),
                    step_id=step_id,
                    critic_version=c.critic_version,
                    verdict=str(c.verdict),
                    first_wrong_step=c.first_wrong_step,
                    text=c.text,
                    parsed=c.parsed,
                    validated=ok,
                    corrected_solution=c.corrected_solution,
                )
            )
            if not (keep and train):  # held-out tasks never become training data
                continue
            kept[right].append(
                ExampleRecord(
                    id=stable_id(eid, "critic-example", i, j),
                    kind=ExampleKind.SFT,
                    role=Role.CRITIC,
                    payload={
                        "prompt": stepwise.messages(task, sol["text"]),  # the reference removed
                        "completion": [{"role": "assistant", "content": trim_critique(c.text)}],
                        "metadata": {"why": why, "student_correct": right},
                    },
                    episode_id=eid,
                    task_id=task.id,
                    split=str(task.split),
                )
            )
            if cfg.emit_corrections and ok and not right and c.corrected_solution:
                corrections.append(
                    ExampleRecord(
                        id=stable_id(eid, "correction", i, j),
                        kind=ExampleKind.SFT,
                        role=Role.POLICY,
                        payload={
                            "prompt": [m.model_dump() for m in task_messages(task, cfg.system_prompt)],
                            "completion": [
                                {"role": "assistant", "content": trim_critique(c.corrected_solution)}
                            ],
                        },
                        episode_id=eid,
                        task_id=task.id,
                        split=str(task.split),
                    )
                )
    examples = _pick(kept, cfg)
    examples += _distinct(corrections)[: cfg.max_examples_per_task]
    right = sum(Critique.model_validate(v).correct for v in state["verdicts"])
    return EpisodeRecord(
        id=eid,
        run_id=state["run_id"],
        task_id=task.id,
        loop=LOOP_NAME,
        reward=kept_n / n if n else 0.0,
        # n/correct drive the runner's progress bar: critiques and the kept ones among them (the validated
        # ones, or with validation off the parsed ones); `validate` says which, per round (`summarize`).
        outcome={
            "n": n,
            "correct": kept_n,
            "pass": kept_n > 0,
            "parsed": parsed,
            "validated": validated,
            "validate": cfg.validate_critiques,
            "examples": len(examples),
            "solutions": len(steps),
            "solutions_correct": right,
            "tokens": sum(len(s.token_ids or []) for s in steps),
        },
        steps=steps,
        critiques=records,
        examples=examples,
    )


def summarize(episodes: Sequence[EpisodeRecord]) -> str:
    """A round's critiques in one line, for the collection printout and the evolve table's `collection`
    column: how many were sampled, parsed and validated, how many were kept, and the examples they made."""

    def total(key: str) -> int:
        return sum(int(e.outcome.get(key, 0)) for e in episodes)

    n, kept = total("n"), total("correct")
    share = f" ({100 * kept / n:.0f}%)" if n else ""
    modes = {bool(e.outcome.get("validate", True)) for e in episodes}
    how = {frozenset({True}): "by validation", frozenset({False}): "by parsing (validation off)"}
    return (
        f"critiques {n}: parsed {total('parsed')}, validated {total('validated')}, "
        f"kept {kept}/{n}{share} {how.get(frozenset(modes), '(validation on and off)')}; "
        f"examples {total('examples')}"
    )


def _distinct(examples: list[ExampleRecord]) -> list[ExampleRecord]:
    seen: set[str] = set()
    out = []
    for e in examples:
        key = str(e.payload["prompt"]) + str(e.payload["completion"])
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def _pick(kept: dict[bool, list[ExampleRecord]], cfg: ScritConfig) -> list[ExampleRecord]:
    wrong, right = _distinct(kept[False]), _distinct(kept[True])
    if cfg.balance:
        right = right[: max(len(wrong), 1)]
    out: list[ExampleRecord] = []
    for pair in zip(wrong, right, strict=False):  # alternate, so a cap keeps both kinds
        out += pair
    longer = wrong if len(wrong) > len(right) else right
    out += longer[min(len(wrong), len(right)) :]
    return out[: cfg.max_examples_per_task]


def _make(resources: LoopResources, config: ScritConfig) -> StateGraph:
    return build_graph(
        resources.policy, resources.engine(Role.CRITIC), VerifierCritic(resources.task_set), config
    )


SPEC = register_loop(
    LoopSpec(
        name=LOOP_NAME,
        config=ScritConfig,
        make=_make,
        roles=(Role.POLICY, Role.CRITIC),
        example_kinds=(ExampleKind.SFT,),
        example_roles={ExampleKind.SFT: Role.CRITIC},
        summarize=summarize,
        description="SCRIT self-evolving critic: the policy solves, the critic critiques each solution against the "
        "reference, critiques whose verdict and correction the verifier confirms become critic SFT "
        "examples with the reference removed (and, with emit_corrections, policy examples).",
    )
)
