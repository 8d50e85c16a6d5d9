"""LLM critics that read a solution step by step: the step-wise critic and SCRIT's contrastive critic.

Both render a shipped template (critics/prompts), ask their engine, and parse the reply with
`parse_critique`; a reply that does not parse is an `UNPARSED` critique with its text kept. They share one
output format on purpose: SCRIT trains the step-wise critic (no reference) on the contrastive critic's
validated output (with reference), so the trained critic must already speak the format it is taught.
Critics batch like actors: every `critique` is one engine request, so a loop that gathers 64 critiques sends
64 concurrent requests and the engine batches them.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from string import Template
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from strop.critics.base import Critique
from strop.critics.parsing import parse_critique
from strop.critics.prompts import load_shots, load_template, render
from strop.critics.steps import render_steps, split_steps
from strop.sandbox.tasks.base import Task


class CriticSampling(BaseModel):
    """How a critic samples its critiques. Greedy by default: a judge should be repeatable."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(256, ge=1, le=32768, description="Most tokens per critique.")
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0 is greedy; SCRIT samples several at > 0.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int | None = Field(None, description="Sampling seed (with temperature > 0); None draws one.")
    system_prompt: str | None = Field(None, description="A system message before the critic's prompt.")


def stream_seed(seed: int | None, *parts: object) -> int | None:
    """A per-request seed that is a pure function of its parts (Python's own hash() is salted per process)."""
    if seed is None:
        return None
    digest = hashlib.sha256("\x1f".join(map(str, (seed, *parts))).encode()).hexdigest()
    return int(digest[:12], 16)


def chat_request(
    messages: list[dict[str, str]],
    sampling: CriticSampling,
    n: int,
    *parts: object,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    """A request in the engine's JSON form: `critics` sits below `agents` and does not import its classes."""
    return {
        "messages": messages,
        "sampling": {
            "n": n,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": max_tokens or sampling.max_tokens,
            "seed": stream_seed(sampling.seed, *parts),
            "logprobs": True,
        },
    }


class StepwiseCritic:
    """Judges each step of a solution, names the first wrong one, gives a verdict and a corrected solution.

    `engine` is any strop `Engine`. `template` overrides the shipped prompt ($problem and $steps are filled;
    the contrastive critic also fills $reference).
    """

    template_name = "stepwise"

    def __init__(
        self,
        engine: object,
        *,
        sampling: CriticSampling | None = None,
        template: str | Template | None = None,
        shots: int | Sequence[dict[str, str]] = 1,
    ) -> None:
        self.engine = engine
        self.sampling = sampling or CriticSampling()
        self.template = (
            Template(template) if isinstance(template, str) else template or load_template(self.template_name)
        )
        # Worked examples as earlier turns: an int takes that many shipped ones, a list gives your own
        # ({problem, solution, reference, critique} each). One by default: on SmolLM2-135M one shot parsed
        # 18 of 48 contrastive critiques and three shots 21, at twice the prompt (prefill dominates on CPU).
        self.shots = list(load_shots()[:shots]) if isinstance(shots, int) else list(shots)

    @property
    def version(self) -> str:
        return str(self.engine.model_version)  # type: ignore[attr-defined]

    def render(self, problem: str, solution: str, reference: str | None = None) -> str:
        """One user turn: the template filled with a problem and a solution shown as numbered steps."""
        steps, answer = split_steps(solution)
        shown = render_steps(steps) or solution.strip() or "(empty)"
        if answer is not None:
            shown += f"\n#### {answer}"
        return render(self.template, problem=problem, steps=shown, reference=reference or "")

    def prompt(self, task: Task, solution: str, reference: str | None = None) -> str:
        """The last user message this critic sends for `solution`."""
        return self.render(task.prompt, solution, reference)

    def messages(self, task: Task, solution: str, reference: str | None = None) -> list[dict[str, str]]:
        """The chat as plain dicts (worked examples first), the form TRL's conversational SFT examples take.

        SCRIT stores the step-wise critic's messages as the training prompt, so the trained critic sees exactly
        what it will be asked at inference.
        """
        msgs = (
            [{"role": "system", "content": self.sampling.system_prompt}]
            if self.sampling.system_prompt
            else []
        )
        for shot in self.shots:
            msgs += [
                {
                    "role": "user",
                    "content": self.render(shot["problem"], shot["solution"], shot.get("reference")),
                },
                {"role": "assistant", "content": shot["critique"]},
            ]
        return [*msgs, {"role": "user", "content": self.prompt(task, solution, reference)}]

    def _request(
        self, task: Task, solution: str, reference: str | None, n: int, stream: object
    ) -> dict[str, Any]:
        return chat_request(
            self.messages(task, solution, reference), self.sampling, n, task.id, solution, stream
        )

    def read(self, text: str, solution: str) -> Critique:
        """A critique from the critic's raw reply to `solution`; unparsed replies are kept, never raised."""
        n_steps = len(split_steps(solution)[0])
        return parse_critique(text, n_steps).critique(text, self.version)

    async def sample(
        self, task: Task, solution: str, reference: str | None = None, *, n: int = 1, stream: object = 0
    ) -> list[Critique]:
        """`n` critiques of one solution in one request (SCRIT samples several and keeps the validated ones)."""
        [completions] = await self.engine.generate([self._request(task, solution, reference, n, stream)])  # type: ignore[attr-defined]
        return [self.read(c.text, solution) for c in completions]

    async def critique(self, task: Task, solution: str, reference: str | None = None) -> Critique:
        """The step-wise critic reads no reference: it must find errors on its own."""
        [c] = await self.sample(task, solution, None)
        return c


class ContrastiveCritic(StepwiseCritic):
    """SCRIT's contrastive critic (arXiv 2501.05727): reads the reference solution first, then judges.

    Without a reference it would be a step-wise critic; it refuses instead, so a loop that forgot to pass one
    fails loudly rather than measuring the wrong thing.
    """

    template_name = "contrastive"

    def _request(
        self, task: Task, solution: str, reference: str | None, n: int, stream: object
    ) -> dict[str, Any]:
        if not reference:
            raise ValueError(
                f"the contrastive critic needs a reference solution for task {task.id}; pass "
                "`reference=task.reference_solution`, or use StepwiseCritic to critique without one"
            )
        return super()._request(task, solution, reference, n, stream)

    async def critique(self, task: Task, solution: str, reference: str | None = None) -> Critique:
        [c] = await self.sample(
            task, solution, reference or (task.reference_solution if task.reference_steps else None)
        )
        return c


async def critique_all(
    critic: object, items: Sequence[tuple[Task, str]], reference: bool = False
) -> list[Critique]:
    """Critique many solutions at once, so the engine batches them (one concurrent request each)."""
    return list(
        await asyncio.gather(
            *(
                critic.critique(t, s, t.reference_solution if reference else None)  # type: ignore[attr-defined]
                for t, s in items
            )
        )
    )
