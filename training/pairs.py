"""Preference pairs for DPO: derived from best-of-N episodes already in the store, and a balance report.

A best-of-N run with `emit_pairs` writes its pairs with each episode. A run recorded without it still holds
every answer with its verdict, so `derive_pairs` builds the same pairs afterwards (same function, same ids:
deriving over a run that emitted them writes nothing) and adds them to their episodes as PAIR examples.
From there they are claimed exactly once per consumer, like any example.

`balance_report` is what a DPO job records about its data: how evenly the pairs spread over tasks, and the
token lengths of chosen and rejected answers. DPO is known to learn length where chosen answers are
systematically longer (or shorter) than rejected ones, so that difference is worth seeing before trusting a
gain.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from strop.agents.loops.base import task_messages
from strop.agents.loops.best_of_n import LOOP_NAME as BEST_OF_N
from strop.agents.loops.pairs import Answer, preference_pairs
from strop.memory.records import EpisodeRecord, ExampleKind, Role
from strop.sandbox.tasks.base import Split, Task

EVAL_LOOP = "eval"  # the run loop name evaluation writes under; never training data


class DerivedPairs(BaseModel):
    """What `derive_pairs` did."""

    episodes: int = Field(0, description="Best-of-N episodes looked at.")
    with_pairs: int = Field(
        0, description="Episodes that yield at least one pair (a correct and an incorrect answer)."
    )
    pairs: int = Field(0, description="Pairs those episodes yield (under the per-task cap).")
    added: int = Field(0, description="Pairs newly written; the rest were already stored.")
    skipped_heldout: int = Field(
        0, description="Episodes of held-out tasks or evaluation runs (never training data)."
    )
    skipped_no_prompt: int = Field(
        0,
        description="Episodes with pairs to give but no known prompt (no SFT example and the task not given).",
    )


def derive_pairs(
    store: Any,
    run_ids: Sequence[str],
    *,
    max_pairs_per_task: int = 4,
    tasks: Iterable[Task] | None = None,
    role: Role | str = Role.POLICY,
) -> DerivedPairs:
    """Add best-of-N preference pairs (a correct answer over an incorrect one, per prompt) to the episodes of
    `run_ids`, as PAIR examples of `role`. Idempotent: run it again and nothing new is written.

    The prompt of a pair is the one the policy saw. It is read from the episode's SFT examples (the loop
    stores the prompt verbatim there, system prompt included); for an episode without any, pass the `tasks`
    it ran on and the prompt is rebuilt with the run's system prompt. Held-out tasks and evaluation runs never
    yield pairs.
    """
    by_task: Mapping[str, Task] = {t.id: t for t in tasks or ()}
    report = DerivedPairs()
    for run_id in run_ids:
        run = store.get_run(run_id)
        if run is None:
            raise ValueError(f"run {run_id!r} is not in the store")
        loop_cfg = run.config.get("loop") if isinstance(run.config.get("loop"), dict) else {}
        system_prompt = loop_cfg.get("system_prompt")
        for ep in store.list_episodes(run_id, loop=BEST_OF_N):
            report.episodes += 1
            if run.loop == EVAL_LOOP:
                report.skipped_heldout += 1
                continue
            answers = episode_answers(ep)
            prompt, split = _prompt_and_split(ep, by_task.get(ep.task_id), system_prompt)
            if split == str(Split.HELDOUT):
                report.skipped_heldout += 1
                continue
            if not (any(a.correct for a in answers) and any(not a.correct for a in answers)):
                continue
            if prompt is None:
                report.skipped_no_prompt += 1
                continue
            pairs = preference_pairs(
                ep.id,
                prompt,
                answers,
                task_id=ep.task_id,
                split=split or str(Split.TRAIN),
                max_pairs=max_pairs_per_task,
                role=Role(role),
            )
            if pairs:
                report.with_pairs += 1
                report.pairs += len(pairs)
                report.added += store.add_examples(ep.id, pairs)
    return report


def episode_answers(ep: EpisodeRecord) -> list[Answer]:
    """A best-of-N episode's answers with their verdicts (the verifier's critique of each step)."""
    verdict = {c.step_id: c.verdict for c in ep.critiques}
    return [
        Answer(
            index=s.index,
            text=s.text,
            correct=verdict.get(s.id) == "correct",
            hinted=bool(s.metadata.get("hinted")),
        )
        for s in ep.steps
    ]


def _prompt_and_split(
    ep: EpisodeRecord,
    task: Task | None,
    system_prompt: str | None,
) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The prompt verbatim from an SFT example of the episode, else rebuilt from the task; the task's split
    (an SFT example's where the task is not given: the store holds no held-out ones)."""
    sft = next(
        (x for x in ep.examples if x.kind == ExampleKind.SFT and isinstance(x.payload.get("prompt"), list)),
        None,
    )
    prompt = sft.payload["prompt"] if sft is not None else None
    if prompt is None and task is not None:
        prompt = [m.model_dump() for m in task_messages(task, system_prompt)]
    split = str(task.split) if task is not None else (sft.split if sft is not None else None)
    return prompt, split


# --- the balance report -------------------------------------------------------------------------------------


def _text(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    return "".join(str(m.get("content", "")) for m in messages or [])


def balance_report(
    examples: Sequence[Any], count_tokens: Callable[[str], int] | None = None
) -> dict[str, Any]:
    """Pairs per task (min/median/max) and mean token length of chosen vs rejected answers.

    `examples` are PAIR `ExampleRecord`s; `count_tokens` counts a text's tokens (the model's tokenizer; by
    default whitespace-separated words). `length_bias` is mean chosen minus mean rejected: far from zero, DPO
    can lower the loss by preferring a length rather than a better answer.
    """
    count = count_tokens or (lambda s: len(s.split()))
    per_task = Counter(
        str(getattr(x, "task_id", None) or getattr(x, "episode_id", None) or "?") for x in examples
    )
    chosen = [count(_text(x.payload.get("chosen"))) for x in examples]
    rejected = [count(_text(x.payload.get("rejected"))) for x in examples]
    n = list(per_task.values())
    mean_c = statistics.fmean(chosen) if chosen else 0.0
    mean_r = statistics.fmean(rejected) if rejected else 0.0
    return {
        "pairs": len(examples),
        "tasks": len(per_task),
        "pairs_per_task": {
            "min": min(n, default=0),
            "median": float(statistics.median(n)) if n else 0.0,
            "max": max(n, default=0),
        },
        "chosen_tokens": round(mean_c, 2),
        "rejected_tokens": round(mean_r, 2),
        "length_bias": round(mean_c - mean_r, 2),
        "chosen_longer": round(sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(chosen), 3)
        if chosen
        else 0.0,
    }


def format_balance(report: dict[str, Any]) -> str:
    """One line for a log or the CLI."""
    ppt = report["pairs_per_task"]
    return (
        f"{report['pairs']} pairs over {report['tasks']} tasks (per task min {ppt['min']}, median "
        f"{ppt['median']:g}, max {ppt['max']}); mean tokens chosen {report['chosen_tokens']:.1f} vs rejected "
        f"{report['rejected_tokens']:.1f} (difference {report['length_bias']:+.1f}; chosen longer in "
        f"{report['chosen_longer']:.0%} of pairs)"
    )
