"""What a `prm_labels` episode leaves behind: step labels in the step scorer's own Yes/No form, as critic-role
SFT examples, and the episode that stores how each was made.

Pure functions of a task, the loop's config and what the policy wrote (JSON), kept apart from the graph so the
labels are tested without engines and a record node run twice gives the same episode, ids included.
Label sources: `reference` (each prefix of a training problem's reference solution: Yes), `corrupt:<kind>`
(the same reference with one known error, critics/corruption.py: its first wrong step is No) and `rollout`
(MATH-Shepherd: a prefix of the policy's own solution, valued by the share of continuations from it that reach
the right answer).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from strop.agents.loops.base import stable_id
from strop.critics.corruption import corrupt
from strop.critics.labelling import reference
from strop.critics.scorer import StepScorer
from strop.critics.steps import split_steps
from strop.memory.records import EpisodeRecord, ExampleKind, ExampleRecord, Role, StepRecord
from strop.sandbox.tasks.base import Split, Task

if TYPE_CHECKING:
    from strop.agents.loops.prm_labels import PRMLabelsConfig


@dataclass(frozen=True)
class StepLabel:
    """One labelled step: the steps up to and including it, P(it leads to the answer), and where that came from."""

    steps: tuple[str, ...]
    value: float
    source: str


def step_prefixes(text: str) -> list[tuple[str, list[str]]]:
    """(the raw text through step i, the steps 1..i as the scorer reads them) for each step of a solution.

    The raw text is what a continuation extends (the policy's own lines, untouched); the steps are
    `split_steps` of it, so a label's prompt is exactly the one the scorer is asked at test time.
    """
    out: list[tuple[str, list[str]]] = []
    lines = (text or "").splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.lstrip().startswith("####"):
            break
        if not line.strip():
            continue
        partial = "".join(lines[: i + 1])
        steps, _ = split_steps(partial)
        if steps and (not out or len(steps) > len(out[-1][1])):
            out.append((partial, steps))
    return out


def reference_labels(task: Task, cfg: PRMLabelsConfig) -> list[StepLabel]:
    """Yes for prefixes of the reference; No for the first wrong step of each corruption that applies.

    Kinds are taken in a per-task rotation (seeded), `corruptions_per_task` of them, skipping a kind that does
    not apply; steps before a corruption's first wrong one are the reference's own. With `balance`, the
    problem gets as many Yes as No: first the reference prefixes as long as a corruption's (a right and a wrong
    version of the same step), then the others in order; a problem no corruption applies to gives none."""
    ref = reference(task)
    wrong: list[StepLabel] = []
    kinds = list(cfg.kinds)
    if kinds and cfg.corruptions_per_task != 0:
        rng = random.Random(f"prm-labels:{cfg.seed}:{task.id}")
        start = rng.randrange(len(kinds))
        want = len(kinds) if cfg.corruptions_per_task is None else cfg.corruptions_per_task
        seen: set[tuple[str, ...]] = set()
        for k in range(len(kinds)):
            if len(seen) >= want:
                break
            kind = kinds[(start + k) % len(kinds)]
            item = corrupt(task, kind, rng)
            if item is None or item.first_wrong_step is None:
                continue
            prefix = tuple(item.steps[: item.first_wrong_step])
            if prefix not in seen:
                seen.add(prefix)
                wrong.append(StepLabel(prefix, 0.0, f"corrupt:{kind}"))
    if not cfg.reference or not ref.steps:
        return wrong
    lengths = list(range(1, len(ref.steps) + 1))
    if cfg.balance:
        twins = [len(w.steps) for w in wrong if len(w.steps) in lengths]
        lengths = list(dict.fromkeys([*twins, *lengths]))[: len(wrong)]
    return [StepLabel(tuple(ref.steps[:n]), 1.0, "reference") for n in sorted(lengths)] + wrong


def rollout_labels(solutions: Sequence[dict[str, Any]]) -> list[StepLabel]:
    """MATH-Shepherd values of the policy's steps: per distinct prefix, the share of its continuations (and of
    its finished solutions ending there) that reached the answer. `solutions` as the rollout node left them."""
    hits: dict[tuple[str, ...], list[bool]] = {}
    for sol in solutions:
        for pre in sol["prefixes"]:
            hits.setdefault(tuple(pre["steps"]), []).extend(pre["outcomes"])
    return [StepLabel(k, sum(v) / len(v), "rollout") for k, v in hits.items() if v]


def label_examples(
    task: Task, eid: str, labels: Sequence[StepLabel], cfg: PRMLabelsConfig
) -> list[ExampleRecord]:
    """Critic-role SFT examples in the step scorer's prompt, answered Yes or No.

    Reference and corruption labels are certain (1 or 0). A rollout value v is a hard label (Yes when v is at
    least `yes_at`, MATH-Shepherd's 'any continuation succeeded' at its default) or, with `label = "soft"`, its
    share of `soft_copies` copies: round(v * copies) answered Yes and the rest No, so the expected loss is the
    cross-entropy against v (the SFT trainer has no per-example weight)."""
    scorer = StepScorer(None)
    out: list[ExampleRecord] = []
    seen: set[tuple[tuple[str, ...], str]] = set()
    for lab in labels:
        if (lab.steps, lab.source) in seen:
            continue
        seen.add((lab.steps, lab.source))
        if lab.source == "rollout" and cfg.label == "soft":
            yes = round(lab.value * cfg.soft_copies)
            answers = ["Yes"] * yes + ["No"] * (cfg.soft_copies - yes)
        else:
            answers = ["Yes" if lab.value >= cfg.yes_at else "No"]
        for copy, answer in enumerate(answers):
            out.append(
                ExampleRecord(
                    id=stable_id(eid, "prm-label", lab.source, *lab.steps, copy),
                    kind=ExampleKind.SFT,
                    role=Role.CRITIC,
                    payload={
                        "prompt": scorer.messages(task, list(lab.steps)),
                        "completion": [{"role": "assistant", "content": answer}],
                        "metadata": {"value": float(lab.value), "source": lab.source},
                    },
                    episode_id=eid,
                    task_id=task.id,
                    split=str(task.split),
                )
            )
    return out


def episode_of(state: dict[str, Any], cfg: PRMLabelsConfig, *, loop: str) -> EpisodeRecord:
    """The episode: each policy solution and its continuations as steps, and on training tasks the labels."""
    task = Task.model_validate(state["task"])
    eid = state["episode_id"]
    solutions: list[dict[str, Any]] = state.get("solutions") or []
    steps: list[StepRecord] = []
    for s, sol in enumerate(solutions):
        c = sol["completion"]
        sid = stable_id(eid, "solution", s)
        steps.append(
            StepRecord(
                id=sid,
                index=len(steps),
                role="solution",
                model_version=c["model_version"],
                text=c["text"],
                prompt_token_ids=c["prompt_token_ids"],
                token_ids=c["token_ids"],
                logprobs=c["logprobs"],
                reward=float(sol["correct"]),
                metadata={"steps": len(sol["prefixes"])},
            )
        )
        for p, pre in enumerate(sol["prefixes"]):
            for r, rc in enumerate(pre["rollouts"]):
                steps.append(
                    StepRecord(
                        id=stable_id(eid, "rollout", s, p, r),
                        parent_id=sid,
                        index=len(steps),
                        role="rollout",
                        model_version=rc["model_version"],
                        text=rc["text"],
                        prompt_token_ids=rc["prompt_token_ids"],
                        token_ids=rc["token_ids"],
                        logprobs=rc["logprobs"],
                        reward=float(pre["outcomes"][r]),
                        metadata={"after_step": p + 1},
                    )
                )
    labels: list[StepLabel] = []
    if task.split == Split.TRAIN:  # never a label from a held-out problem
        labels = reference_labels(task, cfg)
        solved = any(sol["correct"] for sol in solutions) or any(
            any(pre["outcomes"]) for sol in solutions for pre in sol["prefixes"]
        )
        if solved or not cfg.only_solved:
            labels += rollout_labels(solutions)
    examples = label_examples(task, eid, labels, cfg)
    correct = sum(bool(sol["correct"]) for sol in solutions)
    yes = sum(e.payload["completion"][0]["content"] == "Yes" for e in examples)
    by_source: dict[str, int] = {}
    for e in examples:
        src = e.payload["metadata"]["source"].split(":")[0]
        by_source[src] = by_source.get(src, 0) + 1
    return EpisodeRecord(
        id=eid,
        run_id=state["run_id"],
        task_id=task.id,
        loop=loop,
        reward=correct / len(solutions) if solutions else 0.0,
        outcome={
            "n": len(solutions),
            "correct": correct,
            "pass": correct > 0,
            "examples": len(examples),
            "yes": yes,
            "no": len(examples) - yes,
            "sources": by_source,
            "tokens": state.get("tokens", 0),
        },
        steps=steps,
        examples=examples,
    )


def summarize(episodes: Sequence[EpisodeRecord]) -> str:
    """'labels 412 (Yes 205, No 207): reference 180, corrupt 180, rollout 52; policy solved 3/32'."""
    yes = sum(ep.outcome.get("yes", 0) for ep in episodes)
    no = sum(ep.outcome.get("no", 0) for ep in episodes)
    sources: dict[str, int] = {}
    for ep in episodes:
        for k, v in ep.outcome.get("sources", {}).items():
            sources[k] = sources.get(k, 0) + v
    parts = ", ".join(f"{k} {v}" for k, v in sorted(sources.items()))
    line = f"labels {yes + no} (Yes {yes}, No {no})" + (f": {parts}" if parts else "")
    n = sum(ep.outcome.get("n", 0) for ep in episodes)
    if n:
        line += f"; policy solved {sum(ep.outcome.get('correct', 0) for ep in episodes)}/{n}"
    return line
