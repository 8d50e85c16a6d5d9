"""Preference pairs from one prompt's verified answers: a correct answer is preferred to an incorrect one.

Shared by the best-of-N loop (`emit_pairs`, pairs written with the episode) and by
`derive_pairs` in the training package (the same pairs derived later from episodes already in the store): both
call `preference_pairs` with the same inputs, so they produce the same examples with the same ids, and a pair
derived from a run that already emitted it is a no-op write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from strop.agents.loops.base import stable_id
from strop.memory.records import ExampleKind, ExampleRecord, Role


@dataclass(frozen=True)
class Answer:
    """One verified answer of an episode: its step index (what ids are derived from), text and verdict."""

    index: int
    text: str
    correct: bool
    hinted: bool = False  # sampled with the reference answer as a hint (STaR rationalization)


def pair_id(episode_id: str, chosen_index: int, rejected_index: int) -> str:
    return stable_id(episode_id, "pair", chosen_index, rejected_index)


def usable_chosen(a: Answer) -> bool:
    """A correct answer that may be taught: a hinted one that cites the hint teaches nothing un-hinted."""
    return a.correct and not (a.hinted and "hint" in a.text.lower())


def preference_pairs(
    episode_id: str,
    prompt: list[dict[str, Any]],
    answers: Sequence[Answer],
    *,
    task_id: str | None,
    split: str,
    max_pairs: int,
    role: Role = Role.POLICY,
) -> list[ExampleRecord]:
    """Up to `max_pairs` PAIR examples `{"prompt": [...], "chosen": [assistant msg], "rejected": [assistant msg]}`.

    Chosen: correct answers (hinted ones included, unless they cite the hint, as for SFT). Rejected: the
    policy's own incorrect answers (hinted wrong ones are not what the policy says un-hinted). Duplicate
    answer texts count once, so each (chosen text, rejected text) appears at most once. Under the cap, pairs
    are taken along diagonals of the chosen x rejected grid, so the first pairs use as many distinct answers
    as possible instead of one chosen answer against every rejected one.
    """
    chosen = _distinct(a for a in answers if usable_chosen(a))
    rejected = _distinct(a for a in answers if not a.correct and not a.hinted)
    out: list[ExampleRecord] = []
    if not chosen or not rejected or max_pairs <= 0:
        return out
    for shift in range(len(rejected)):
        for ci, c in enumerate(chosen):
            r = rejected[(ci + shift) % len(rejected)]
            out.append(
                ExampleRecord(
                    id=pair_id(episode_id, c.index, r.index),
                    kind=ExampleKind.PAIR,
                    role=role,
                    payload={
                        "prompt": prompt,
                        "chosen": [{"role": "assistant", "content": c.text}],
                        "rejected": [{"role": "assistant", "content": r.text}],
                    },
                    episode_id=episode_id,
                    task_id=task_id,
                    split=split,
                )
            )
            if len(out) >= max_pairs:
                return out
    return out


def _distinct(answers: Any) -> list[Answer]:
    seen: set[str] = set()
    out = []
    for a in answers:
        key = a.text.strip()
        if key not in seen:
            seen.add(key)
            out.append(a)
    return out
