"""The ground-truth critic: a task set's verifier behind the Critic protocol.

Loops take any Critic, so the same best-of-N graph runs with a verifier today and an LLM critic later.
"""

from __future__ import annotations

import asyncio

from strop.critics.base import Critique, CritiqueVerdict
from strop.sandbox.tasks.base import Task, TaskSet


class VerifierCritic:
    """Wraps `TaskSet.verify`. Verification of code tasks runs a jail process, so it goes off the event loop."""

    def __init__(self, task_set: TaskSet, *, offload: bool = False) -> None:
        self.task_set = task_set
        # Arithmetic checks take microseconds: a thread hop would cost more than it saves.
        self.offload = offload

    @property
    def version(self) -> str:
        return "verifier"

    async def critique(self, task: Task, solution: str, reference: str | None = None) -> Critique:
        if self.offload:
            verdict = await asyncio.to_thread(self.task_set.verify, task, solution)
        else:
            verdict = self.task_set.verify(task, solution)
        return Critique(
            verdict=CritiqueVerdict.CORRECT if verdict.correct else CritiqueVerdict.INCORRECT,
            reward=verdict.reward,
            text=verdict.reason,
            extracted=verdict.extracted,
            critic_version=self.version,
        )
