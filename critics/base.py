"""The Critic contract: every judge of a solution, from a ground-truth verifier to an LLM critic.

Critiques are data, not exceptions: a critic whose model output does not parse returns a critique marked
`unparsed` with the raw text kept, so a loop never crashes on it and never counts it as a pass.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, Field

from strop.sandbox.tasks.base import Task


class CritiqueVerdict(StrEnum):
    CORRECT = "correct"
    INCORRECT = "incorrect"
    UNPARSED = "unparsed"  # the critic's own output could not be read; never a pass


class Critique(BaseModel):
    """What a critic says of one solution."""

    verdict: CritiqueVerdict = Field(
        description="correct, incorrect, or unparsed when the critic's output did not parse."
    )
    reward: float = Field(
        0.0, description="Scalar reward the verdict implies (1.0 correct, 0.0 otherwise, or partial)."
    )
    first_wrong_step: int | None = Field(
        None, description="1-based index of the first wrong step; None if none or unknown."
    )
    text: str = Field("", description="The critique itself, or the verifier's reason.")
    corrected_solution: str | None = Field(
        None, description="A corrected solution, when the critic offers one."
    )
    extracted: str | None = Field(
        None, description="The final answer the critic read from the solution, if any."
    )
    critic_version: str = Field(
        "verifier", description="Model version of the critic, or 'verifier' for ground truth."
    )
    step_labels: list[bool] | None = Field(
        None, description="The critic's judgement of each step (True = correct), when it judged every step."
    )
    score: float | None = Field(
        None, description="A probability of correctness, for critics that score (step scorers)."
    )
    step_scores: list[float] | None = Field(
        None,
        description="P(correct) of each step, from a step scorer (PRM): what search and reranking rank by.",
    )
    parse_error: str | None = Field(
        None, description="Why the critic's output did not parse (unparsed critiques only)."
    )

    @property
    def correct(self) -> bool:
        return self.verdict == CritiqueVerdict.CORRECT

    @property
    def parsed(self) -> bool:
        return self.verdict != CritiqueVerdict.UNPARSED


@runtime_checkable
class Critic(Protocol):
    """Judges a solution to a task, optionally against a reference solution (contrastive critics use it)."""

    @property
    def version(self) -> str: ...

    async def critique(self, task: Task, solution: str, reference: str | None = None) -> Critique: ...
