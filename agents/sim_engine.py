"""A simulated engine: no model, a fixed latency per `generate` call, answers computed from the prompt.

For load tests of the store and the rollout workers (bench/scale.py, tests/agents/test_workers.py): it
costs no CPU, so what is measured is the queue and the writes, not a forward pass. Workers on any host build
it from a work spec with `EngineSpec(factory="strop.agents.sim_engine:make_sim_engine", options={...})`.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from strop.agents.engines.base import Completion, FinishReason, GenerationRequest, as_requests


class SimEngine:
    """Implements the Engine protocol. Sums the first two numbers of the prompt; every `wrong_every`-th sample
    is off by one, so best-of-N episodes have both right and wrong answers."""

    def __init__(self, version: str = "sim", *, latency: float = 0.05, wrong_every: int = 2) -> None:
        self.version = version
        self.latency = latency
        self.wrong_every = wrong_every
        self.calls = 0
        self.reloads = 0

    @property
    def model_version(self) -> str:
        return self.version

    async def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        self.calls += 1
        await asyncio.sleep(self.latency)
        out = []
        for r in as_requests(requests):
            prompt = r.messages[-1].content if r.messages else r.prompt or ""
            nums = [int(x) for x in re.findall(r"\d+", prompt)[:2]]
            right = sum(nums)
            texts = [
                f"#### {right + int(self.wrong_every > 0 and i % self.wrong_every == 1)}"
                for i in range(r.sampling.n)
            ]
            out.append(
                [
                    Completion(
                        text=t,
                        prompt_token_ids=[1, 2, 3],
                        token_ids=[4, 5],
                        logprobs=[-0.5, -0.5],
                        finish_reason=FinishReason.STOP,
                        model_version=self.version,
                    )
                    for t in texts
                ]
            )
        return out

    async def reload(
        self, model_path: Any, adapter_path: Any = None, model_version: str | None = None
    ) -> None:
        self.reloads += 1
        self.version = model_version or str(model_path)

    async def close(self) -> None:
        return None


def make_sim_engine(version: Any, **options: Any) -> SimEngine:
    """Engine factory for work specs: `version` is the model version record the role plays."""
    return SimEngine(version.id, **options)
