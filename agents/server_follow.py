"""`strop serve --follow LINEAGE`: serve the lineage's promoted version and swap to each new one.

The registry (the store) is the shared truth: `strop models promote`, a rollback or an evolve cycle, in any
process on any host, changes the lineage's current version there. The follower polls it (one indexed query
every `poll_s`) and hands the new version to the engine's `reload`, which knows the cheapest swap: a LoRA
swap when the new version is an adapter on the base being served, a reload otherwise. Requests already
decoding finish on the version they started on (the engine waits for them); the ones after get the new one,
and every response's `model` names the version that answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from strop.agents.engines.base import EngineError
from strop.memory.records import ModelVersionRecord

log = logging.getLogger(__name__)


def current_version(store: Any, lineage: str) -> ModelVersionRecord:
    """The version to serve now, or an error that says how to get one."""
    version = store.current_model(lineage)
    if version is None:
        known = sorted({v.lineage for v in store.list_models()})
        raise EngineError(
            f"the registry has no lineage {lineage!r} (lineages: {', '.join(known) or 'none'}): register a base "
            "with `strop eval --model NAME` or `strop evolve`, or serve a model directly with `strop serve MODEL`"
        )
    return version


class RegistryFollower:
    """Polls the registry and reloads the engine when the lineage's current version changes."""

    def __init__(
        self, engine: Any, store: Any, lineage: str, version: ModelVersionRecord, *, poll_s: float = 2.0
    ) -> None:
        if not hasattr(engine, "reload"):
            raise EngineError(
                f"the {type(engine).__name__} engine cannot reload weights: --follow needs hf or vllm"
            )
        self.engine = engine
        self.store = store
        self.lineage = lineage
        self.version = version
        self.poll_s = poll_s
        self.swaps = 0
        self._failed: str | None = None  # a version that did not load: not retried every poll
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="strop-serve-follow")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.check()
            except Exception:  # a store hiccup must not stop following; the next poll tries again
                log.exception("following %s: could not read the registry", self.lineage)

    async def check(self) -> bool:
        """Swap if the lineage's current version changed; True when it did."""
        current = await asyncio.to_thread(self.store.current_model, self.lineage)
        if current is None or current.id in (self.version.id, self._failed):
            return False
        log.info("following %s: %s -> %s", self.lineage, self.version.name, current.name)
        try:
            await self.engine.reload(
                current.path, adapter_path=current.adapter_path, model_version=current.name
            )
        except EngineError as e:
            self._failed = current.id
            log.error(
                "following %s: could not load %s (%s); still serving %s",
                self.lineage,
                current.name,
                e,
                self.engine.model_version,
            )
            return False
        self.version = current
        self.swaps += 1
        return True
