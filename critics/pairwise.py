"""A pairwise judge: which of two answers is better, asked in both orders to cancel position bias.

LLM judges favour a position (often the first answer) regardless of content. Each comparison is asked twice
with the answers swapped; only a choice that survives the swap counts, a disagreement is a tie, and the judge
keeps the rate of such disagreements so a report can show how position-biased it is.
"""

from __future__ import annotations

import asyncio
from string import Template
from typing import Any, Literal

from pydantic import BaseModel, Field

from strop.critics.llm import CriticSampling, chat_request
from strop.critics.parsing import parse_preference
from strop.critics.prompts import load_template, render
from strop.sandbox.tasks.base import Task

Winner = Literal["a", "b", "tie"]


class Preference(BaseModel):
    """The judge's decision on (a, b) after asking in both orders."""

    winner: Winner = Field(
        description="'a', 'b', or 'tie' (also when the two orders disagree or a reply did not parse)."
    )
    consistent: bool = Field(description="Both orders parsed and picked the same answer (or both said tie).")
    parsed: bool = Field(description="Both replies could be read.")
    choices: tuple[str | None, str | None] = Field(
        description="What each order picked, mapped back to 'a'/'b'/'tie' (None: unparsed): (a first, b first)."
    )
    texts: tuple[str, str] = Field(description="The judge's raw replies: (a shown first, b shown first).")
    critic_version: str


class PairwiseJudge:
    """Compares two answers to one task with an LLM; `position_bias_rate` is its share of order flips."""

    def __init__(
        self, engine: Any, *, sampling: CriticSampling | None = None, template: str | Template | None = None
    ) -> None:
        self.engine = engine
        self.sampling = sampling or CriticSampling(max_tokens=16)
        self.template = (
            Template(template) if isinstance(template, str) else template or load_template("pairwise")
        )
        self.compared = 0
        self.inconsistent = 0  # both orders parsed but disagreed
        self.unparsed = 0

    @property
    def version(self) -> str:
        return str(self.engine.model_version)

    @property
    def position_bias_rate(self) -> float | None:
        """Share of parsed comparisons whose choice flipped with the order; None before any."""
        parsed = self.compared - self.unparsed
        return self.inconsistent / parsed if parsed else None

    def _request(self, task: Task, first: str, second: str, order: int) -> dict[str, Any]:
        prompt = render(self.template, problem=task.prompt, first=first.strip(), second=second.strip())
        msgs = (
            [{"role": "system", "content": self.sampling.system_prompt}]
            if self.sampling.system_prompt
            else []
        )
        return chat_request([*msgs, {"role": "user", "content": prompt}], self.sampling, 1, task.id, order)

    async def compare(self, task: Task, a: str, b: str) -> Preference:
        """Ask (a, b) and (b, a) concurrently, so both rows share the engine's batch."""
        [[one]], [[two]] = await asyncio.gather(
            self.engine.generate([self._request(task, a, b, 0)]),
            self.engine.generate([self._request(task, b, a, 1)]),
        )
        first = {"A": "a", "B": "b", "tie": "tie"}.get(parse_preference(one.text) or "")
        second = {"A": "b", "B": "a", "tie": "tie"}.get(parse_preference(two.text) or "")
        parsed = first is not None and second is not None
        consistent = parsed and first == second
        self.compared += 1
        self.unparsed += not parsed
        self.inconsistent += parsed and not consistent
        return Preference(
            winner=first if consistent else "tie",  # type: ignore[arg-type]
            consistent=consistent,
            parsed=parsed,
            choices=(first, second),
            texts=(one.text, two.text),
            critic_version=self.version,
        )
