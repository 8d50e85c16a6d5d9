"""The engines an evolution serves its roles with: one per weights role, reloaded when a version changes.

A role's engine is loaded on first use, and `Served` hands a loop or an evaluator the engine of one weights
role switched to one version only when it first generates, so a phase whose episodes are all in the store
already never loads weights (a resumed run skips straight to where it stopped).
"""

from __future__ import annotations

import asyncio
from typing import Any

from strop.agents.runner import load_version_engine
from strop.memory.records import ModelVersionRecord


class EngineHost:
    """One engine per weights role; `serve` loads it once and reloads weights when the version changes."""

    def __init__(self, backend: str, max_batch_size: int) -> None:
        self.backend, self.max_batch_size = backend, max_batch_size
        self.engines: dict[str, Any] = {}  # weights role -> the one engine serving it
        self._lock = asyncio.Lock()

    async def serve(self, weights: str, version: ModelVersionRecord) -> Any:
        async with self._lock:
            engine = self.engines.get(weights)
            if engine is None:
                engine = self.engines[weights] = load_version_engine(
                    version, backend=self.backend, max_batch_size=self.max_batch_size
                )
            elif engine.model_version != version.id:
                await engine.reload(version.path, adapter_path=version.adapter_path, model_version=version.id)
            return engine

    async def close(self) -> None:
        for engine in self.engines.values():
            await engine.close()
        self.engines.clear()


class Served:
    """The engine of one weights role, switched to `version` on first use."""

    def __init__(self, host: EngineHost, weights: str, version: ModelVersionRecord) -> None:
        self.host, self.weights, self.version = host, weights, version

    @property
    def model_version(self) -> str:
        return self.version.id

    async def generate(self, requests: list[Any]) -> list[list[Any]]:
        engine = await self.host.serve(self.weights, self.version)
        return await engine.generate(requests)

    async def resolve(self) -> Any:
        """The engine itself, serving this version (for callers that need its tokenizer, e.g. a teacher)."""
        return await self.host.serve(self.weights, self.version)

    async def close(self) -> None:
        return None
