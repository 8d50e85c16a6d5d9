"""Group commit for a capture server's store writes: one writer thread commits everything pending at once.

Why: with dozens of agents, one transaction per event (open, each call's step, reward, close, examples) made
every reply wait for its own commit, one after another; the replies then went out spread over tens of
milliseconds, and the next calls missed the engine's batch window and were decoded in extra batches (half the
throughput on a small model, see docs/benchmarks.md). Here every write is queued in arrival order, and the
writer thread takes all that is queued when it becomes free and applies it in ONE transaction
(`store.captures.write_many`). An awaited write is committed at once, with whatever is queued before it;
writes nobody awaits linger a few milliseconds for company (see `linger_s`).

Two ways to write: `write` awaits the commit (closes, rewards, examples: what the caller answers with must be
stored), `behind` returns at once (opens, steps: a SIGKILL loses at most the writes of the last moment, which
is the calls still in flight). Order is kept: a close is applied after every write queued before it, so an
awaited close means the episode's steps are stored. A write-behind that fails marks its episode: its later
FINISHED close and examples are refused with that error, so an episode that lost a step is never finished
and never trained on (it stays running, or takes a failed or aborted close).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import queue
import threading
import time
import weakref
from concurrent.futures import Future
from typing import Any

from strop.memory.captures import CaptureOp, CloseOp, ExamplesOp
from strop.memory.errors import StoreError
from strop.memory.records import EpisodeStatus

log = logging.getLogger(__name__)

_STOP = None
_IDLE_S = 10.0  # an idle writer's thread ends (one per StoreSink, and an AgentRun never closes its sink)
_Item = tuple[CaptureOp, Future[Any], bool]  # the op, its result, whether someone awaits it


class CaptureWriter:
    """Queues captured episodes' writes and commits them in order, in as few transactions as it can.

    `captures`: the store's captures part (`store.captures`). `linger_s`: how long writes that nobody awaits
    wait for company before they are committed; an awaited write ends the wait at once and takes them along.
    Replies go out one by one as the event loop sends them, so without it every step was committed nearly
    alone, and the commits' CPU (about 1 ms each) was taken from the server's other threads.
    `max_batch`: most writes in one transaction. `max_behind`: most writes queued before a write-behind
    waits for its commit (memory stays bounded when the store is slower than the agents)."""

    def __init__(
        self, captures: Any, *, linger_s: float = 0.025, max_batch: int = 1024, max_behind: int = 8192
    ) -> None:
        self.captures = captures
        self.linger_s = linger_s
        self.max_batch = max_batch
        self.max_behind = max_behind
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending = 0
        self._failed: dict[str, BaseException] = {}  # episodes that lost a write-behind, and why
        self.transactions = 0  # for tests and benchmarks
        self.writes = 0
        _WRITERS.add(self)

    def submit(self, op: CaptureOp, *, awaited: bool = True) -> Future[Any]:
        """Queue one write; the future holds its result once committed (or its error). `awaited`: someone
        waits for it, so the writer commits it (and what is queued before it) without lingering."""
        future: Future[Any] = Future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="strop-capture-writer", daemon=True)
                self._thread.start()
            self._pending += 1
            self._queue.put((op, future, awaited))
        return future

    async def write(self, op: CaptureOp) -> Any:
        """Queue a write and wait for its commit (after every write queued before it)."""
        return await asyncio.wrap_future(self.submit(op))

    async def behind(self, op: CaptureOp) -> None:
        """Queue a write and return at once; past `max_behind` pending writes it is committed at once and
        awaited instead (the agents then wait for the store, and memory stays bounded)."""
        if self._pending >= self.max_behind:
            await self.write(op)
            return
        self.submit(op, awaited=False)

    async def flush(self) -> None:
        """Wait until everything queued so far is committed (a marker write that does nothing)."""
        if self._pending:
            await asyncio.wrap_future(self.submit(_NOTHING))

    def sync(self, timeout: float | None = None) -> None:
        """Block until everything queued so far is committed; from any thread, no event loop needed (tests
        and tools that read the store while episodes run)."""
        if self._pending:
            self.submit(_NOTHING).result(timeout)

    def close(self) -> None:
        """Commit what is queued, then stop the thread (a later write starts it again)."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None:
            thread.join()

    # --- the writer thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=_IDLE_S)
            except queue.Empty:
                with self._lock:  # submit queues under this lock: nothing can slip in between
                    if self._queue.empty():
                        if self._thread is threading.current_thread():
                            self._thread = None  # idle: a later write starts a new thread
                        return
                continue
            if item is _STOP:
                return
            batch, stop, urgent = [item], False, item[2]
            deadline = time.monotonic() + self.linger_s
            while len(batch) < self.max_batch:
                try:
                    if urgent:
                        nxt = self._queue.get_nowait()
                    else:
                        nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
                urgent = urgent or nxt[2]
            try:
                self._flush(batch)
            finally:
                with self._lock:
                    self._pending -= len(batch)
            if stop:
                return

    def _flush(self, batch: list[_Item]) -> None:
        live = [(op, f) for op, f, _ in batch if not self._refused(op, f)]
        ops = [op for op, _ in live if op is not _NOTHING]
        try:
            results = self.captures.write_many(ops) if ops else []
        except BaseException as exc:
            if len(live) > 1:
                # One bad write must not fail its neighbours: apply each alone, in order (all are idempotent
                # and nothing of the batch was committed), so the error reaches its own episode.
                for op, future in live:
                    self._flush([(op, future, True)])
                return
            for op, future in live:
                self._fail(op, future, exc)
            return
        self.transactions += bool(ops)
        self.writes += len(ops)
        done = iter(results)
        for op, future in live:
            future.set_result(None if op is _NOTHING else next(done))

    def _refused(self, op: CaptureOp, future: Future[Any]) -> bool:
        """An episode that lost a write is never finished or trained on: refuse those, with the first error."""
        lost = self._failed.get(op.episode_id) if op is not _NOTHING else None
        finishing = isinstance(op, ExamplesOp) or (
            isinstance(op, CloseOp) and op.status == EpisodeStatus.FINISHED
        )
        if lost is None or not finishing:
            return False
        future.set_exception(
            StoreError(
                f"episode {op.episode_id} lost a write before it closed ({lost}): it is not finished and is "
                "never trained on; abort it and run its task again"
            )
        )
        return True

    def _fail(self, op: CaptureOp, future: Future[Any], exc: BaseException) -> None:
        if op is not _NOTHING:
            self._failed.setdefault(op.episode_id, exc)
        if not future.done():
            future.set_exception(exc)
        # a write-behind has no one awaiting it: say so here, its episode's finish says it again
        log.warning("capture write %s for episode %s failed: %s", type(op).__name__, op.episode_id, exc)


class _Nothing:
    """The flush marker: applies nothing, and is answered once every write queued before it committed."""

    episode_id = ""


_NOTHING: Any = _Nothing()

# Writers still holding writes when the interpreter exits (a SIGTERM'd `strop serve`) commit them first.
_WRITERS: weakref.WeakSet[CaptureWriter] = weakref.WeakSet()


def sync_all(timeout: float | None = None) -> None:
    """Block until every live writer of this process has committed what is queued (see `sync`)."""
    for writer in list(_WRITERS):
        writer.sync(timeout)


@atexit.register
def _drain() -> None:
    for writer in list(_WRITERS):
        writer.close()
