"""A generative process reward model: the probability that a step is correct, read from token log-probs.

The critic is asked 'Is step k correct? Answer Yes or No.' and answers one greedy token. The engine reports the
log-prob of the token it chose, so P(yes) is exp(lp) when it chose Yes and 1 - exp(lp) when it chose No: exact
when the critic puts its mass on Yes/No (what the prompt asks), an upper bound on the other side otherwise.
Engines do not return alternative tokens' log-probs, which would make this exact; it is enough to rank steps.
MCTS and reranking use `score`; `critique` makes it a `Critic` (the first step under the threshold is wrong).
"""

from __future__ import annotations

import asyncio
import math
from string import Template
from typing import Any

from strop.critics.base import Critique, CritiqueVerdict
from strop.critics.llm import CriticSampling, chat_request
from strop.critics.parsing import parse_yes_no
from strop.critics.prompts import load_template, render
from strop.critics.steps import render_steps, split_steps
from strop.sandbox.tasks.base import Task


class StepScorer:
    """Scores partial solutions step by step with an LLM's Yes/No log-probs."""

    def __init__(
        self,
        engine: Any,
        *,
        threshold: float = 0.5,
        sampling: CriticSampling | None = None,
        template: str | Template | None = None,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"StepScorer threshold must be in (0, 1); got {threshold}")
        self.engine = engine
        self.threshold = threshold
        self.sampling = sampling or CriticSampling(max_tokens=2)
        self.template = (
            Template(template) if isinstance(template, str) else template or load_template("step_score")
        )

    @property
    def version(self) -> str:
        return str(self.engine.model_version)

    def messages(self, task: Task, steps: list[str]) -> list[dict[str, str]]:
        """The chat the scorer is asked (and a PRM is trained on): is the last of `steps` correct?"""
        prompt = render(self.template, problem=task.prompt, steps=render_steps(steps), last=len(steps))
        msgs = (
            [{"role": "system", "content": self.sampling.system_prompt}]
            if self.sampling.system_prompt
            else []
        )
        return [*msgs, {"role": "user", "content": prompt}]

    def _request(self, task: Task, steps: list[str]) -> dict[str, Any]:
        greedy = self.sampling.model_copy(update={"temperature": 0.0})
        return chat_request(self.messages(task, steps), greedy, 1, task.id, len(steps))

    async def score(self, task: Task, steps: list[str]) -> float | None:
        """P(the last of `steps` is correct); None when the reply is neither Yes nor No (unparsed)."""
        if not steps:
            raise ValueError("score needs at least one step")
        [[c]] = await self.engine.generate([self._request(task, steps)])
        return probability_yes(c.text, c.logprobs)

    async def score_steps(self, task: Task, solution: str) -> list[float | None]:
        """Scores of every prefix of `solution` (step 1, steps 1-2, ...), asked concurrently."""
        steps, _ = split_steps(solution)
        return list(await asyncio.gather(*(self.score(task, steps[: k + 1]) for k in range(len(steps)))))

    async def critique(self, task: Task, solution: str, reference: str | None = None) -> Critique:
        scores = await self.score_steps(task, solution)
        text = "\n".join(
            f"Step {i}: P(correct) = {'?' if p is None else f'{p:.3f}'}" for i, p in enumerate(scores, 1)
        )
        if not scores or any(p is None for p in scores):
            reason = "the solution has no steps" if not scores else "a step's reply was neither Yes nor No"
            return Critique(
                verdict=CritiqueVerdict.UNPARSED, text=text, critic_version=self.version, parse_error=reason
            )
        probs = [p for p in scores if p is not None]
        first = next((i for i, p in enumerate(probs, 1) if p < self.threshold), None)
        return Critique(
            verdict=CritiqueVerdict.CORRECT if first is None else CritiqueVerdict.INCORRECT,
            reward=min(probs),
            score=min(probs),
            first_wrong_step=first,
            text=text,
            step_labels=[p >= self.threshold for p in probs],
            step_scores=probs,
            critic_version=self.version,
        )


def probability_yes(text: str, logprobs: list[float] | None) -> float | None:
    """P(yes) from a one-token Yes/No answer and that token's log-prob (see the module docstring)."""
    said = parse_yes_no(text)
    if said is None:
        return None
    if not logprobs:
        return 1.0 if said else 0.0  # an engine without log-probs still gives a hard label
    p = min(1.0, math.exp(logprobs[0]))
    return p if said else 1.0 - p
