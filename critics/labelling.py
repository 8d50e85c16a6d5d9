"""Labelled solutions: a solution with its first wrong step known for certain, and policy solutions checked.

A critic benchmark is only as good as its labels, and two sources give certain labels without a human: a
reference solution corrupted in one known way (corruption.py), and a policy's own solution whose steps are
equations that can be recomputed (here, reading them with equations.py). Messy text never raises: a step that
does not parse makes a solution unlabellable (None), never a guess.
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction

from pydantic import BaseModel, Field, model_validator

from strop.critics.equations import TOLERANCE, equations, problem_operands
from strop.critics.steps import render_solution, split_steps
from strop.sandbox.tasks.base import Task
from strop.sandbox.tasks.extract import extract_answer, numbers_equal


class LabelledSolution(BaseModel):
    """A solution to a problem with its first wrong step known (None: no step is wrong)."""

    id: str = Field(description="Stable id: the problem's task id, the source and a hash of the solution.")
    task: Task = Field(description="The problem; `task.answer` is '' when unknown (ProcessBench).")
    steps: list[str] = Field(description="Step texts, without 'Step i:' prefixes.")
    answer: str | None = Field(
        None, description="The solution's final answer ('#### ...'), if it states one."
    )
    first_wrong_step: int | None = Field(None, ge=1, description="1-based; None when no step is wrong.")
    source: str = Field(description="'reference', 'corrupt:<kind>', 'policy', 'processbench', ...")
    final_answer_correct: bool | None = Field(
        None, description="Whether the final answer is right; None if unknown."
    )

    @model_validator(mode="after")
    def _label_in_range(self) -> LabelledSolution:
        if self.first_wrong_step is not None and self.first_wrong_step > len(self.steps):
            raise ValueError(
                f"first_wrong_step {self.first_wrong_step} is past the last of {len(self.steps)} steps"
            )
        return self

    @property
    def solution(self) -> str:
        """The solution as a critic sees it: numbered steps, then '#### answer'."""
        return render_solution(self.steps, self.answer)

    @property
    def erroneous(self) -> bool:
        return self.first_wrong_step is not None


def item_id(task_id: str, source: str, steps: list[str], answer: str | None) -> str:
    """An id from the content, so the same solution gets the same id whatever seed or order produced it."""
    digest = hashlib.sha256(json.dumps([steps, answer]).encode()).hexdigest()[:10]
    return f"{task_id}#{source}#{digest}"


def _known(value: Fraction, known: list[Fraction]) -> bool:
    return any(abs(value - k) <= TOLERANCE for k in known)


def label_solution(task: Task, text: str, source: str = "policy") -> LabelledSolution | None:
    """The solution with its first wrong step found by recomputation, or None when that cannot be certain.

    A step is wrong if one of its equations is false, or (arithmetic problems, whose operands are known) if it
    uses a number that is neither in the problem nor a result of an earlier step. Every step up to the first
    wrong one must hold an equation (prose cannot be checked); steps after it do not matter to the label. A
    solution whose steps all check is labelled correct only if its final answer is right; otherwise the error
    is in something unchecked, and the solution is unlabellable.
    """
    steps, final = split_steps(text)
    if not steps or not task.answer:
        return None
    operands = problem_operands(task)
    known: list[Fraction] = sorted(operands) if operands is not None else []
    first_wrong: int | None = None
    for i, step in enumerate(steps, 1):
        eqs = equations(step)
        if not eqs:
            return None
        for eq in eqs:
            uses_unknown = operands is not None and any(not _known(n.value, known) for n in eq.operands)
            if not eq.holds or uses_unknown:
                first_wrong = i
                break
            known.append(eq.rhs)  # a result may be used by a later equation of the same step
        if first_wrong is not None:
            break
    got = extract_answer(text)
    answer_right = got is not None and numbers_equal(got, task.answer)
    if first_wrong is None and not answer_right:
        return None
    return LabelledSolution(
        id=item_id(task.id, source, steps, final),
        task=task,
        steps=steps,
        answer=final,
        first_wrong_step=first_wrong,
        source=source,
        final_answer_correct=answer_right,
    )


def reference(task: Task) -> LabelledSolution:
    """The task's own reference solution, labelled correct."""
    steps = list(task.reference_steps)
    return LabelledSolution(
        id=item_id(task.id, "reference", steps, task.answer),
        task=task,
        steps=steps,
        answer=task.answer,
        first_wrong_step=None,
        source="reference",
        final_answer_correct=True,
    )
