"""A scripted engine for control-flow tests: answers are chosen by a function of (task prompt, sample index).

Used only where the point is the graph's or runner's control flow; the real-path tests use the tiny model.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from strop.agents.engines.base import Completion, FinishReason, GenerationRequest, as_requests


def _sum_of(prompt: str) -> int:
    a, b = (int(x) for x in re.findall(r"\d+", prompt)[:2])
    return a + b


def right_then_wrong(prompt: str, i: int) -> str:
    """Even samples right, odd samples off by one."""
    s = _sum_of(prompt)
    return f"#### {s}" if i % 2 == 0 else f"#### {s + 1}"


class ScriptedEngine:
    """Implements the Engine protocol; records every request so tests can count calls."""

    def __init__(
        self, answer: Callable[[str, int], str] = right_then_wrong, version: str = "scripted"
    ) -> None:
        self.answer = answer
        self.version = version
        self.calls: list[str] = []
        self.fail_prompts: set[str] = set()  # prompts that raise once, to simulate a crash mid-run

    @property
    def model_version(self) -> str:
        return self.version

    async def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        out = []
        for r in as_requests(requests):
            prompt = r.messages[-1].content if r.messages else r.prompt or ""
            if prompt in self.fail_prompts:
                self.fail_prompts.discard(prompt)
                raise RuntimeError(f"scripted crash on {prompt!r}")
            self.calls.append(prompt)
            n = r.sampling.n
            texts = [self.answer(prompt, i) for i in range(n)]
            out.append(
                [
                    Completion(
                        text=t,
                        prompt_token_ids=[1, 2, 3],
                        token_ids=list(range(len(t.split()))),
                        logprobs=[-0.5] * len(t.split()),
                        finish_reason=FinishReason.STOP,
                        model_version=self.version,
                    )
                    for t in texts
                ]
            )
        return out

    async def close(self) -> None:
        return None
