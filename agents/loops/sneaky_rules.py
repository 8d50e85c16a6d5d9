"""The SPC game's rules, apart from its graph: which slots a task plays, what the generator and the critic
are asked, when a rewrite is really wrong (its own arithmetic, else rollouts from it), how a judgement is read,
and the zero-sum rewards.

Pure functions of the loop's state (JSON), so the rules are tested without engines.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from strop.agents.loops.base import stable_id
from strop.critics.base import CritiqueVerdict
from strop.critics.equations import TOLERANCE, display, equations, problem_operands
from strop.critics.llm import StepwiseCritic
from strop.critics.parsing import parse_critique, parse_yes_no
from strop.critics.scorer import StepScorer, probability_yes
from strop.critics.steps import render_solution, render_steps, split_steps
from strop.sandbox.tasks.base import Split, Task

if TYPE_CHECKING:
    from strop.agents.loops.sneaky import SneakyConfig

ErrorType = Literal["calculation", "operand", "operator", "copy", "skip"]
# What the generator is asked to put into the step, per error type.
ERROR_TYPES: dict[str, str] = {
    "calculation": "a calculation slip: the same numbers, but a result that is slightly off",
    "operand": "a misread quantity: one number that is not the one the problem states",
    "operator": "a wrong sign or operation: the wrong one of +, - and *",
    "copy": "a number copied wrong from an earlier step, for example two digits swapped",
    "skip": "a skipped step: it goes on as if part of the work were already done",
}
GENERATOR_PROMPT = (
    "Problem: {problem}\nSolution so far:\n{prefix}\nStep {n} (correct): {step}\n\n"
    "Rewrite step {n} so that it contains {error}, and still looks right. "
    "Write only the new step, as 'Step {n}: ...'."
)


# --- planning and prompts ------------------------------------------------------------------------------------


def plan_slots(task: Task, cfg: SneakyConfig) -> tuple[list[dict[str, Any]], str | None]:
    """The task's slots (position, error type, sneaky or correct target), or none and the reason.

    Only training tasks play: a held-out task's reference is what the critic benchmark is built from.
    """
    if task.split != Split.TRAIN:
        return [], "held-out task: the game never reads a held-out reference"
    steps = list(task.reference_steps)
    if not steps:
        return [], "the task has no reference steps to corrupt"
    rng = random.Random(stable_id("sneaky-plan", cfg.seed, task.id))
    positions: list[int] = []
    while len(positions) < cfg.steps_per_task:  # distinct positions while there are steps left
        batch = list(range(len(steps)))
        rng.shuffle(batch)
        positions += batch
    slots = []
    for j, p in enumerate(positions[: cfg.steps_per_task]):
        correct = rng.random() < cfg.correct_share
        error = rng.choice(cfg.error_types)
        slots.append(
            {
                "slot": j,
                "position": p,
                "error_type": None if correct else error,
                "target": "correct" if correct else "sneaky",
                "prefix": steps[:p],
                "original": steps[p],
            }
        )
    return slots, None


def generator_messages(task: Task, slot: dict[str, Any]) -> list[dict[str, str]]:
    """The generator's chat: the problem, the steps so far, the correct step and the error to put into it."""
    content = GENERATOR_PROMPT.format(
        problem=task.prompt,
        prefix=render_steps(slot["prefix"]) or "(no steps yet)",
        step=slot["original"],
        n=slot["position"] + 1,
        error=ERROR_TYPES[slot["error_type"]],
    )
    return [{"role": "user", "content": content}]


def critic_messages(task: Task, slot: dict[str, Any], step: str, cfg: SneakyConfig) -> list[dict[str, str]]:
    """The critic's chat about the last step of `prefix + [step]`, exactly as the critic benchmark asks it."""
    steps = [*slot["prefix"], step]
    if cfg.critic_kind == "prm":
        return StepScorer(None).messages(task, steps)
    return StepwiseCritic(None, shots=cfg.shots).messages(task, render_solution(steps, None))


def rollout_text(slot: dict[str, Any], step: str) -> str:
    """The partial solution a rollout continues: the steps before the position, then the rewrite."""
    return render_steps([*slot["prefix"], step])


# --- validity -------------------------------------------------------------------------------------------------


def parse_rewrite(text: str) -> str | None:
    """The rewritten step: the first step line of the reply, or None (empty, or only a final answer)."""
    steps, _ = split_steps(text)
    return steps[0] if steps else None


def check_rewrite(task: Task, slot: dict[str, Any], text: str) -> dict[str, Any]:
    """Is the rewrite really wrong, as far as its own arithmetic tells?

    status: 'unparsed' (no step), 'same' (the original, or right arithmetic on known numbers with the
    original's result), 'wrong' (a false equation, or a number neither in the problem nor an earlier
    result), 'undecided' (no equation, or right arithmetic with another result: rollouts decide).
    """
    step = parse_rewrite(text)
    if step is None:
        return {
            "status": "unparsed",
            "reason": "no step in the rewrite (empty, or only a final answer)",
            "step": None,
        }
    out = {"step": step}
    if " ".join(step.split()) == " ".join(slot["original"].split()):
        return {**out, "status": "same", "reason": "the rewrite is the original step"}
    eqs = equations(step)
    if not eqs:
        return {**out, "status": "undecided", "reason": "the step has no equation to recompute"}
    for eq in eqs:
        if not eq.holds:
            return {
                **out,
                "status": "wrong",
                "reason": f"its arithmetic is wrong: the left side is "
                f"{display(eq.lhs)}, not {display(eq.rhs)}",
            }
    operands = problem_operands(task)
    if operands is not None:
        known = [*operands, *(e.rhs for s in slot["prefix"] for e in equations(s))]
        for eq in eqs:
            unknown = [n for n in eq.operands if not any(abs(n.value - k) <= TOLERANCE for k in known)]
            if unknown:
                return {
                    **out,
                    "status": "wrong",
                    "reason": f"it uses {unknown[0].text}, neither a number of the "
                    "problem nor an earlier result",
                }
            known.append(eq.rhs)
    original = equations(slot["original"])
    if original and abs(eqs[-1].rhs - original[-1].rhs) <= TOLERANCE:
        return {
            **out,
            "status": "same",
            "reason": "right arithmetic on known numbers, with the original's result",
        }
    return {**out, "status": "undecided", "reason": "right arithmetic on known numbers but another result"}


def decide_by_rollouts(check: dict[str, Any], control: list[dict[str, Any]], cfg: SneakyConfig) -> None:
    """An undecided rewrite is wrong if enough continuations from it fail (and, with `control`, the original
    step's mostly do not); without rollouts it does not count."""
    rollouts = check.get("rollouts") or []
    if not rollouts:
        check.update(
            status="unverified", reason="the arithmetic check cannot decide and no rollouts were run"
        )
        return
    failed = sum(not r["correct"] for r in rollouts) / len(rollouts)
    check["fail_share"] = failed
    reason = f"{failed:.0%} of {len(rollouts)} continuations fail"
    if failed < cfg.min_fail_share:
        check.update(status="not_wrong", reason=f"{reason} (under {cfg.min_fail_share:.0%})")
        return
    if cfg.control:
        base = sum(not r["correct"] for r in control) / len(control) if control else 1.0
        check["control_fail_share"] = base
        if base >= cfg.min_fail_share:
            check.update(status="not_wrong", reason=f"{reason}, but so do {base:.0%} from the original step")
            return
    check.update(status="wrong", reason=f"{reason} (at least {cfg.min_fail_share:.0%})")


# --- judgements and rewards -------------------------------------------------------------------------------


def read_judgement(completion: dict[str, Any], slot: dict[str, Any], cfg: SneakyConfig) -> dict[str, Any]:
    """What the critic said of the target step: 'right', 'wrong', 'other' (blames another step or names
    none) or 'unparsed'; with P(yes) for a Yes/No critic."""
    text = completion["text"]
    if cfg.critic_kind == "prm":
        said = parse_yes_no(text)
        verdict = "unparsed" if said is None else "right" if said else "wrong"
        return {
            "verdict": verdict,
            "p_yes": probability_yes(text, completion.get("logprobs")),
            "first_wrong_step": None,
        }
    n = len(slot["prefix"]) + 1
    c = parse_critique(text, n).critique(text, completion["model_version"])
    if not c.parsed:
        verdict = "unparsed"
    elif c.verdict == CritiqueVerdict.CORRECT:
        verdict = "right"
    else:
        verdict = "wrong" if c.first_wrong_step == n else "other"
    return {"verdict": verdict, "p_yes": None, "first_wrong_step": c.first_wrong_step}


def critic_reward(target: str, verdict: str) -> float:
    """+1 for the right judgement of the target step (catching a sneaky one, accepting a correct one), else -1."""
    return 1.0 if verdict == ("wrong" if target == "sneaky" else "right") else -1.0


def generator_reward(status: str, critic_rewards: Sequence[float]) -> float:
    """Zero-sum: minus the critic's mean reward on a really wrong rewrite; -1 for any other rewrite."""
    if status != "wrong" or not critic_rewards:
        return -1.0
    return -sum(critic_rewards) / len(critic_rewards)


def centred(rewards: Sequence[float]) -> list[float]:
    """Each reward minus the group's mean; a group of one keeps its reward (plain REINFORCE)."""
    if len(rewards) < 2:
        return list(rewards)
    mean = sum(rewards) / len(rewards)
    return [r - mean for r in rewards]
