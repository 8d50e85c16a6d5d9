"""The capture hub: the open episodes of a server (or of an in-process `AgentRun`), and where they go.

The hub owns the lifecycle (open -> calls -> rewards -> finished | failed | aborted) and the group credit;
a sink persists it. `StoreSink` queues each step as the call returns and commits what is queued together
(writer.py), so a server killed mid-episode leaves the episode `running`, with its calls so far (less those
of its last few milliseconds), and never trained; with no sink the episodes live in memory only, which is
what the `agent` loop uses, since it writes one record per task itself.

Why groups are credited here and not at training time: the advantage of an episode needs the rewards of its
whole group, which arrive one by one and in any order; the last close of a group computes them once.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

from strop.agents.capture.credit import group_examples
from strop.agents.capture.episodes import (
    CapturedCall,
    CapturedEpisode,
    ClosedEpisodeError,
    UnknownEpisodeError,
    closed_message,
    unknown_message,
)
from strop.agents.capture.writer import CaptureWriter
from strop.memory.captures import AppendOp, CloseOp, ExamplesOp, OpenOp, UpdateOp
from strop.memory.records import EpisodeStatus, ExampleRecord, RunRecord, StepRecord, new_id


class CaptureSink(Protocol):
    """Where a hub's episodes are kept beyond its memory."""

    async def opened(self, episode: CapturedEpisode) -> None: ...

    async def called(self, episode: CapturedEpisode, steps: list[StepRecord]) -> None: ...

    async def rewarded(self, episode: CapturedEpisode) -> None: ...

    async def closed(self, episode: CapturedEpisode) -> None: ...

    async def credited(self, examples: dict[str, list[ExampleRecord]]) -> None: ...

    async def status(self, episode_id: str) -> EpisodeStatus | None: ...

    # optional: `async def flush(self) -> None`, for a sink that writes behind (CaptureHub.flush)


class StoreSink:
    """Persists captured episodes in a strop store through one group-committing writer (writer.py).

    Opens and steps are written behind (the reply does not wait for the commit, so replies to calls that
    were decoded together go out together); rewards, closes and examples wait for theirs, and come after every
    write queued before them, so a finished episode has all its steps stored before `finish` answers."""

    def __init__(self, store: Any, *, loop: str = "capture") -> None:
        self.store = store
        self.loop = loop
        self.writer = CaptureWriter(store.captures)
        self._runs: set[str] = set()
        self._creating: dict[str, asyncio.Future[None]] = {}

    async def _ensure_run(self, run_id: str) -> None:
        """The run, created once (concurrent opens of a new run wait for the one that creates it)."""
        if run_id in self._runs:
            return
        pending = self._creating.get(run_id)
        if pending is None:
            pending = self._creating[run_id] = asyncio.ensure_future(self._create_run(run_id))
        try:
            await asyncio.shield(pending)
        finally:
            if pending.done():
                self._creating.pop(run_id, None)  # a failed creation is tried again by the next open
        self._runs.add(run_id)

    async def _create_run(self, run_id: str) -> None:
        if await asyncio.to_thread(self.store.get_run, run_id) is None:
            await asyncio.to_thread(
                self.store.create_run, RunRecord(id=run_id, loop=self.loop, config={"capture": True})
            )

    async def opened(self, episode: CapturedEpisode) -> None:
        await self._ensure_run(episode.run_id)
        await self.writer.behind(OpenOp(episode.record(self.loop, with_steps=False)))

    async def called(self, episode: CapturedEpisode, steps: list[StepRecord]) -> None:
        await self.writer.behind(AppendOp(episode.id, steps))

    async def rewarded(self, episode: CapturedEpisode) -> None:
        await self.writer.write(UpdateOp(episode.id, reward=episode.reward, outcome=episode.outcome()))

    async def closed(self, episode: CapturedEpisode) -> None:
        op = CloseOp(episode.id, episode.status, reward=episode.reward, outcome=episode.outcome())
        await self.writer.write(op)

    async def credited(self, examples: dict[str, list[ExampleRecord]]) -> None:
        writes = [self.writer.write(ExamplesOp(episode_id, rows)) for episode_id, rows in examples.items()]
        await asyncio.gather(*writes)

    async def status(self, episode_id: str) -> EpisodeStatus | None:
        await self.writer.flush()  # a status read after this server's own writes sees them
        return await asyncio.to_thread(self.store.captures.episode_status, episode_id)

    async def flush(self) -> None:
        """Wait until every write queued so far is committed."""
        await self.writer.flush()

    def close(self) -> None:
        """Commit what is queued and stop the writer thread (the store stays open: its owner closes it)."""
        self.writer.close()


class CaptureHub:
    """Open episodes by id; every route and `AgentRun` goes through one of these.

    `sink`: where episodes are persisted (None: memory only). `run_id`: the run episodes join when they name
    none. `keep_closed`: closed episodes kept in memory so a repeated finish, a late reward or a call after
    the end get a precise answer; older ones are asked of the sink.
    """

    def __init__(
        self,
        sink: CaptureSink | None = None,
        *,
        run_id: str | None = None,
        keep_closed: int = 10_000,
        sft: bool = False,
    ) -> None:
        self.sink = sink
        self.run_id = run_id or new_id()
        self.keep_closed = keep_closed
        self.sft = sft
        self._episodes: OrderedDict[str, CapturedEpisode] = OrderedDict()
        self._groups: dict[tuple[str, str], list[str]] = {}
        # closes the sink has written, oldest first: a group is credited only from these, or a member closed
        # in memory whose close is still being written would get examples while its stored row is still
        # running; and the oldest are forgotten first (kept in order so that is not a scan of every episode)
        self._settled: OrderedDict[str, None] = OrderedDict()
        self._lock = asyncio.Lock()

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def open(
        self,
        *,
        task_id: str | None = None,
        run_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        group: str | None = None,
        group_size: int = 1,
        seed: int | None = None,
        seed_stride: int = 1,
        episode_id: str | None = None,
        split: str = "train",
    ) -> CapturedEpisode:
        eid = episode_id or new_id()
        if eid in self._episodes:
            return self._episodes[eid]  # a retried open
        task = task_id or f"adhoc-{eid[:12]}"
        meta = dict(metadata or {})
        meta.setdefault("split", split)
        episode = CapturedEpisode(
            id=eid,
            run_id=run_id or self.run_id,
            task_id=task,
            group=group or task,
            group_size=group_size,
            metadata=meta,
            seed=seed,
            seed_stride=seed_stride,
        )
        if self.sink is not None:
            await self.sink.opened(episode)
        self._episodes[eid] = episode
        self._groups.setdefault((episode.run_id, episode.group), []).append(eid)
        return episode

    async def get(self, episode_id: str, *, open_only: bool = True) -> CapturedEpisode:
        """The episode, or the error a route turns into a 404 naming it."""
        episode = self._episodes.get(episode_id)
        if episode is None:
            status = await self.sink.status(episode_id) if self.sink is not None else None
            if status is None:
                raise UnknownEpisodeError(unknown_message(episode_id))
            if status == EpisodeStatus.RUNNING:  # stored open, not in memory: its server died or restarted
                raise ClosedEpisodeError(
                    f"episode {episode_id} was opened by a server that stopped before it closed: it stays "
                    "incomplete and is never trained on. Open a new one with POST /episodes"
                )
            raise ClosedEpisodeError(closed_message(episode_id, status))
        if open_only and not episode.open:
            raise ClosedEpisodeError(closed_message(episode_id, episode.status))
        return episode

    async def status(self, episode_id: str) -> EpisodeStatus | None:
        """Where the episode is (None: unknown here and in the sink)."""
        episode = self._episodes.get(episode_id)
        if episode is not None:
            return episode.status
        return await self.sink.status(episode_id) if self.sink is not None else None

    async def record(self, episode_id: str, call: CapturedCall) -> None:
        """Store a call that returned. A call that ends after its episode closed is dropped from training but
        still answered: the agent did nothing wrong, its episode was closed under it."""
        episode = await self.get(episode_id, open_only=False)
        if not episode.open:
            return
        steps = episode.add_call(call)
        if self.sink is not None:
            await self.sink.called(episode, steps)

    async def reward(self, episode_id: str, rewards: dict[str, float]) -> CapturedEpisode:
        """Add (or replace) named rewards; allowed until the group is credited."""
        episode = await self._known(episode_id)
        if episode.status == EpisodeStatus.ABORTED:
            raise ClosedEpisodeError(closed_message(episode_id, episode.status))
        episode.rewards.update(rewards)
        if self.sink is not None:
            await self.sink.rewarded(episode)
        return episode

    async def finish(self, episode_id: str, *, answer: str | None = None) -> CapturedEpisode:
        return await self._close(episode_id, EpisodeStatus.FINISHED, answer=answer)

    async def fail(self, episode_id: str, error: str) -> CapturedEpisode:
        return await self._close(episode_id, EpisodeStatus.FAILED, error=error)

    async def abort(self, episode_id: str, reason: str = "aborted by the client") -> CapturedEpisode:
        return await self._close(episode_id, EpisodeStatus.ABORTED, error=reason)

    async def _known(self, episode_id: str) -> CapturedEpisode:
        episode = self._episodes.get(episode_id)
        if episode is None:
            return await self.get(episode_id)  # raises, naming the id
        return episode

    async def _close(
        self, episode_id: str, status: EpisodeStatus, *, answer: str | None = None, error: str | None = None
    ) -> CapturedEpisode:
        episode = self._episodes.get(episode_id)
        if episode is None and self.sink is not None and await self.sink.status(episode_id) == status:
            return CapturedEpisode(id=episode_id, run_id="", task_id="", group="", status=status)  # a retry
        episode = await self._known(episode_id)
        async with self._lock:
            if not episode.close(status):
                return episode
            if answer is not None:
                episode.answer = answer
            if error is not None:
                episode.error = error
        if self.sink is not None:
            await self.sink.closed(episode)
        self._settled[episode.id] = None
        await self._credit_if_complete(episode)
        self._forget_closed()
        return episode

    async def _credit_if_complete(self, episode: CapturedEpisode) -> None:
        key = (episode.run_id, episode.group)
        members = [self._episodes[i] for i in self._groups.get(key, []) if i in self._episodes]
        # a task run again under the same run and group is a new group: credit what closed since the last credit
        closed = [m for m in members if m.id in self._settled and not m.credited]
        if len(closed) < episode.group_size:
            return
        for m in closed:
            m.credited = True
        examples = self.examples(closed)
        if self.sink is not None and examples:
            await self.sink.credited(examples)

    def examples(self, episodes: Sequence[CapturedEpisode]) -> dict[str, list[ExampleRecord]]:
        """The group's examples (see credit.group_examples); split from the episodes' metadata."""
        split = str(episodes[0].metadata.get("split", "train")) if episodes else "train"
        return group_examples(episodes, split=split, sft=self.sft)

    def _forget_closed(self) -> None:
        while len(self._settled) > self.keep_closed:
            i, _ = self._settled.popitem(last=False)
            episode = self._episodes.pop(i, None)
            if episode is None:
                continue
            ids = self._groups.get((episode.run_id, episode.group))
            if ids and i in ids:
                ids.remove(i)
                if not ids:
                    self._groups.pop((episode.run_id, episode.group), None)

    def episodes(self) -> list[CapturedEpisode]:
        return list(self._episodes.values())

    async def flush(self) -> None:
        """Wait until the sink has stored every write so far (a sink that writes behind, like StoreSink, has
        `flush`); a server calls this as it shuts down, since SIGTERM ends `strop serve` without atexit."""
        flush = getattr(self.sink, "flush", None)
        if flush is not None:
            await flush()
