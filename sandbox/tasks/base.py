"""The Task contract: a prompt, an optional step-by-step reference, and a verifier.

An answer that cannot be extracted is a verdict (reward 0, `extracted=None`), never an exception: model
output is untrusted and loops must keep going.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, Field


class TaskSetError(ValueError):
    """A task set asked for what it cannot give (more distinct tasks than exist, an invalid option): the user's
    setting to change, so the CLI prints it on one line."""


class Split(StrEnum):
    TRAIN = "train"
    HELDOUT = "heldout"


class Verdict(BaseModel):
    """What a verifier says of one answer."""

    reward: float = Field(
        description="1.0 for a correct answer, 0.0 otherwise (partial credit where a set allows)."
    )
    correct: bool
    extracted: str | None = Field(
        None, description="The answer as extracted from the output; None if none found."
    )
    reason: str = Field(
        "", description="Why: e.g. 'expected 47, got 46', 'no answer found', '3/5 tests passed'."
    )


class Task(BaseModel):
    """One problem. `verify` is provided by the task set, so tasks stay plain data and serialise."""

    id: str = Field(description="Stable id, unique within its task set, e.g. 'arithmetic/train/17'.")
    set_name: str
    split: Split
    prompt: str = Field(description="What the actor is asked.")
    answer: str = Field(description="The reference final answer.")
    reference_steps: list[str] = Field(
        default_factory=list, description="Numbered step-by-step reference solution (without numbers)."
    )
    metadata: dict[str, object] = Field(default_factory=dict)

    @property
    def reference_solution(self) -> str:
        """The reference as numbered steps followed by '#### answer', the format critics point into."""
        lines = [f"Step {i}: {s}" for i, s in enumerate(self.reference_steps, 1)]
        return "\n".join([*lines, f"#### {self.answer}"])


@runtime_checkable
class TaskSet(Protocol):
    """A named collection of tasks with stable train and held-out splits."""

    name: str

    def tasks(self, split: Split, n: int | None = None) -> list[Task]: ...

    def verify(self, task: Task, output: str) -> Verdict: ...
