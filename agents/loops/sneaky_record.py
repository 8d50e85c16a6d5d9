"""The SPC game's rules, apart from its graph: which slots a task plays, what the generator is asked, when a
rewrite is really wrong, how a judgement is read, the zero-sum rewards, and the episode with its examples.

Pure functions of the loop's state (JSON), so the bookkeeping is tested without engines and a record node
run twice gives the same episode, ids included.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from strop.agents.loops.base import stable_id
from strop.agents.loops.scrit import trim_critique
from strop.critics.base import CritiqueVerdict
from strop.critics.labelling import TOLERANCE, display, equations, problem_operands
from strop.critics.llm import StepwiseCritic
from strop.critics.parsing import parse_critique, parse_yes_no
from strop.critics.scorer import StepScorer, probability_yes
from strop.critics.steps import render_solution, render_steps, split_steps
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

if TYPE_CHECKING:
    from strop.agents.loops.sneaky import SneakyConfig, SneakyState

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


# --- the episode ------------------------------------------------------------------------------------------


def episode_of(state: SneakyState, cfg: SneakyConfig, *, loop: str) -> EpisodeRecord:
    """The finished game: every rewrite, rollout and judgement as a step, the rewards, outcome and examples."""
    task = Task.model_validate(state["task"])
    eid = state["episode_id"]
    b = _Builder(task, eid, cfg)
    controls = state.get("controls") or []
    for i, slot in enumerate(state.get("slots") or []):
        judged = {j["rewrite"]: j["completions"] for j in state["judgements"][i]}
        if slot["target"] == "correct":
            sid = stable_id(eid, "original", i)
            b.step(
                sid,
                None,
                "target",
                slot["original"],
                None,
                {"slot": i, "position": slot["position"], "target": "correct"},
            )
            b.judge(slot, i, "orig", sid, "correct", slot["original"], judged.get(None, []))
            continue
        rewards: list[float] = []
        rewrites: list[dict[str, Any]] = []
        for r, (c, check) in enumerate(zip(state["rewrites"][i], state["checks"][i], strict=True)):
            sid = stable_id(eid, "rewrite", i, r)
            meta = {
                "slot": i,
                "rewrite": r,
                "position": slot["position"],
                "error_type": slot["error_type"],
                "original": slot["original"],
                "step": check["step"],
                "status": check["status"],
                "reason": check["reason"],
                "fail_share": check.get("fail_share"),
                "control_fail_share": check.get("control_fail_share"),
            }
            s = b.step(sid, None, "generator", c["text"], c, meta)  # before its children: parents come first
            for k, roll in enumerate(check.get("rollouts") or []):
                b.step(
                    stable_id(eid, "rollout", i, r, k),
                    sid,
                    "rollout",
                    roll["completion"]["text"],
                    roll["completion"],
                    {"slot": i, "rewrite": r, "correct": roll["correct"]},
                    reward=roll["reward"],
                )
            wrong = check["status"] == "wrong"
            critic_rewards = (
                b.judge(slot, i, r, sid, "sneaky", check["step"], judged.get(r, [])) if wrong else []
            )
            s.reward = generator_reward(check["status"], critic_rewards) + 0.0  # no -0.0
            s.metadata["success"] = wrong and s.reward > 0
            rewards.append(s.reward)
            rewrites.append(c)
        for k, roll in enumerate(controls[i] if i < len(controls) else []):
            b.step(
                stable_id(eid, "control", i, k),
                None,
                "control_rollout",
                roll["completion"]["text"],
                roll["completion"],
                {"slot": i, "correct": roll["correct"]},
                reward=roll["reward"],
            )
        b.generator_examples(slot, i, rewrites, rewards)
    return b.episode(state, loop)


class _Builder:
    """Collects one episode's steps, critiques, examples and tallies."""

    def __init__(self, task: Task, eid: str, cfg: SneakyConfig) -> None:
        self.task, self.eid, self.cfg = task, eid, cfg
        self.train = task.split == Split.TRAIN
        self.steps: list[StepRecord] = []
        self.critiques: list[CritiqueRecord] = []
        self.examples: list[ExampleRecord] = []
        self.tally = {"judged_sneaky": 0, "caught": 0, "judged_correct": 0, "accepted": 0, "unparsed": 0}
        self.critic_rewards: list[float] = []

    def step(
        self,
        sid: str,
        parent: str | None,
        role: str,
        text: str,
        c: dict[str, Any] | None,
        meta: dict[str, Any],
        reward: float | None = None,
    ) -> StepRecord:
        s = StepRecord(
            id=sid,
            parent_id=parent,
            index=len(self.steps),
            role=role,
            text=text,
            reward=reward,
            model_version=c["model_version"] if c else None,
            prompt_token_ids=c["prompt_token_ids"] if c else None,
            token_ids=c["token_ids"] if c else None,
            logprobs=c["logprobs"] if c else None,
            metadata={**meta, **({"finish_reason": c["finish_reason"]} if c else {})},
        )
        self.steps.append(s)
        return s

    def judge(
        self,
        slot: dict[str, Any],
        i: int,
        r: int | str,
        target_id: str,
        kind: str,
        step: str,
        completions: list[dict[str, Any]],
    ) -> list[float]:
        """Store the judgements of one target step (`step`, its text); returns the critic's rewards."""
        rewards, texts = [], []
        for m, c in enumerate(completions):
            j = read_judgement(c, slot, self.cfg)
            reward = critic_reward(kind, j["verdict"])
            rewards.append(reward)
            texts.append((c, j["verdict"], reward))
            self.tally["judged_sneaky" if kind == "sneaky" else "judged_correct"] += 1
            self.tally["caught" if kind == "sneaky" else "accepted"] += reward > 0
            self.tally["unparsed"] += j["verdict"] == "unparsed"
            sid = stable_id(self.eid, "judgement", i, r, m)
            self.step(
                sid,
                target_id,
                "critic",
                c["text"],
                c,
                {"slot": i, "target": kind, "verdict": j["verdict"], "p_yes": j["p_yes"]},
                reward=reward,
            )
            verdict = {"right": CritiqueVerdict.CORRECT, "unparsed": CritiqueVerdict.UNPARSED}.get(
                j["verdict"], CritiqueVerdict.INCORRECT
            )
            self.critiques.append(
                CritiqueRecord(
                    id=stable_id(self.eid, "critique", i, r, m),
                    step_id=target_id,
                    critic_version=c["model_version"],
                    verdict=str(verdict),
                    first_wrong_step=j["first_wrong_step"],
                    text=c["text"],
                    parsed=j["verdict"] != "unparsed",
                    validated=reward > 0,
                )
            )
        self.critic_rewards += rewards
        if self.train and completions:
            self._critic_examples(critic_messages(self.task, slot, step, self.cfg), i, r, kind, texts)
        return rewards

    def _critic_examples(
        self,
        prompt: list[dict[str, str]],
        i: int,
        r: int | str,
        kind: str,
        judged: list[tuple[dict[str, Any], str, float]],
    ) -> None:
        cfg = self.cfg
        meta = {"slot": i, "target": kind}
        if "pg" in cfg.critic_emit:
            for m, ((c, _, reward), adv) in enumerate(
                zip(judged, centred([x[2] for x in judged]), strict=True)
            ):
                self._pg(
                    Role.CRITIC,
                    stable_id(self.eid, "critic-pg", i, r, m),
                    c,
                    adv,
                    reward,
                    cfg.critic_temperature,
                    meta,
                )
        if "pair" in cfg.critic_emit:
            clean = (lambda t: t.strip()) if cfg.critic_kind == "prm" else trim_critique
            won = [clean(c["text"]) for c, _, reward in judged if reward > 0]
            lost = [clean(c["text"]) for c, _, reward in judged if reward < 0]
            if cfg.complete_pairs:  # a Yes/No answer's opposite is known: it would have had the other outcome
                right, wrong = ("No", "Yes") if kind == "sneaky" else ("Yes", "No")
                won, lost = won or [right], lost or [wrong]
            self._pairs(Role.CRITIC, ("critic-pair", i, r), prompt, won, lost, {**meta, "rewrite": str(r)})

    def generator_examples(
        self, slot: dict[str, Any], i: int, rewrites: list[dict[str, Any]], rewards: list[float]
    ) -> None:
        if not self.train:
            return
        meta = {"slot": i, "error_type": slot["error_type"]}
        if "pg" in self.cfg.generator_emit:
            for r, (c, adv, reward) in enumerate(zip(rewrites, centred(rewards), rewards, strict=True)):
                self._pg(
                    Role.GENERATOR,
                    stable_id(self.eid, "generator-pg", i, r),
                    c,
                    adv,
                    reward,
                    self.cfg.generator_temperature,
                    meta,
                )
        if "pair" in self.cfg.generator_emit:
            won = [c["text"].strip() for c, reward in zip(rewrites, rewards, strict=True) if reward > 0]
            lost = [c["text"].strip() for c, reward in zip(rewrites, rewards, strict=True) if reward < 0]
            self._pairs(
                Role.GENERATOR, ("generator-pair", i), generator_messages(self.task, slot), won, lost, meta
            )

    def _pg(
        self,
        role: Role,
        example_id: str,
        c: dict[str, Any],
        advantage: float,
        reward: float,
        temperature: float,
        meta: dict[str, Any],
    ) -> None:
        if (
            (advantage == 0.0 and self.cfg.skip_zero_advantage)
            or not c["token_ids"]
            or not c["prompt_token_ids"]
        ):
            return
        if c["logprobs"] is None or len(c["logprobs"]) != len(c["token_ids"]):
            return
        payload = AdvantagePayload(
            prompt_ids=c["prompt_token_ids"],
            completion_ids=c["token_ids"],
            logprobs=c["logprobs"],
            advantage=advantage,
            temperature=temperature or None,
            model_version=c["model_version"],
            reward=reward,
            completion=c["text"],
            metadata={**meta, "role": str(role)},
        )
        self.examples.append(
            ExampleRecord(
                id=example_id,
                kind=ExampleKind.GAME_TURN,
                role=role,
                payload=payload.model_dump(mode="json"),
                episode_id=self.eid,
                task_id=self.task.id,
                split=str(self.task.split),
            )
        )

    def _pairs(
        self,
        role: Role,
        key: tuple[object, ...],
        prompt: list[dict[str, str]],
        won: list[str],
        lost: list[str],
        meta: dict[str, Any],
    ) -> None:
        won, lost = list(dict.fromkeys(won)), list(dict.fromkeys(t for t in lost if t not in won))
        made = 0
        for shift in range(
            len(lost)
        ):  # along diagonals: the first pairs use as many distinct texts as possible
            for a, chosen in enumerate(won):
                if made >= self.cfg.max_pairs_per_step:
                    return
                rejected = lost[(a + shift) % len(lost)]
                self.examples.append(
                    ExampleRecord(
                        id=stable_id(self.eid, *key, chosen, rejected),
                        kind=ExampleKind.PAIR,
                        role=role,
                        payload={
                            "prompt": prompt,
                            "chosen": [{"role": "assistant", "content": chosen}],
                            "rejected": [{"role": "assistant", "content": rejected}],
                            "metadata": meta,
                        },
                        episode_id=self.eid,
                        task_id=self.task.id,
                        split=str(self.task.split),
                    )
                )
                made += 1

    def episode(self, state: SneakyState, loop: str) -> EpisodeRecord:
        gen = [s for s in self.steps if s.role == "generator"]
        by_error: dict[str, dict[str, int]] = {}
        for s in gen:
            e = by_error.setdefault(str(s.metadata["error_type"]), {"rewrites": 0, "valid": 0, "success": 0})
            e["rewrites"] += 1
            e["valid"] += s.metadata["status"] == "wrong"
            e["success"] += bool(s.metadata["success"])
        n = len(self.critic_rewards)
        wins = sum(r > 0 for r in self.critic_rewards)
        return EpisodeRecord(
            id=self.eid,
            run_id=state["run_id"],
            task_id=self.task.id,
            loop=loop,
            reward=sum(self.critic_rewards) / n if n else 0.0,  # the critic's mean game reward
            # n/correct/pass feed the runner's totals: critic judgements and those that won.
            outcome={
                "n": n,
                "correct": wins,
                "pass": wins > 0,
                "examples": len(self.examples),
                "tokens": sum(len(s.token_ids or []) for s in self.steps),
                "skipped": state.get("skipped"),
                "slots": len(state.get("slots") or []),
                "rewrites": len(gen),
                "rewrites_unparsed": sum(s.metadata["status"] == "unparsed" for s in gen),
                "sneaky_valid": sum(s.metadata["status"] == "wrong" for s in gen),
                "sneaky_success": sum(bool(s.metadata["success"]) for s in gen),
                "generator_reward": sum(s.reward or 0.0 for s in gen),
                "critic_reward": sum(self.critic_rewards),
                **self.tally,
                "by_error_type": by_error,
            },
            steps=self.steps,
            critiques=self.critiques,
            examples=self.examples,
        )


# --- per round ------------------------------------------------------------------------------------------------


def game_rates(episodes: Sequence[EpisodeRecord]) -> dict[str, float | int | None]:
    """A round's figures: the generator's success rate (rewrites that were really wrong and got past the
    critic, of all rewrites), the share really wrong, and the critic's catch and accept rates."""
    t = {
        k: sum(int(e.outcome.get(k, 0)) for e in episodes if e.loop == "sneaky")
        for k in (
            "rewrites",
            "rewrites_unparsed",
            "sneaky_valid",
            "sneaky_success",
            "judged_sneaky",
            "caught",
            "judged_correct",
            "accepted",
        )
    }

    def share(a: str, b: str) -> float | None:
        return t[a] / t[b] if t[b] else None

    return {
        **t,
        "success_rate": share("sneaky_success", "rewrites"),
        "valid_rate": share("sneaky_valid", "rewrites"),
        "catch_rate": share("caught", "judged_sneaky"),
        "accept_rate": share("accepted", "judged_correct"),
    }


def summarize(episodes: Sequence[EpisodeRecord]) -> str:
    """A round in one short line, for the collection printout and the evolve table's `collection` column:
    sneaky successes of all rewrites (and how many were really wrong), the critic's catches and accepts."""
    g = game_rates(episodes)
    pct = "-" if g["success_rate"] is None else f"{100 * g['success_rate']:.0f}%"
    return (
        f"sneaky {g['sneaky_success']}/{g['rewrites']} ({pct}), really wrong {g['sneaky_valid']}; "
        f"caught {g['caught']}/{g['judged_sneaky']}, accepted {g['accepted']}/{g['judged_correct']}"
    )
