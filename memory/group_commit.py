"""Group commit for `Store.awrite_episode`: episodes that finish while a transaction is being written
share the next transaction.

A runner drives dozens of episodes at once and each finishes with an `await store.awrite_episode(ep)`.
One transaction per episode makes the commit (and on PostgreSQL the round trips) the bottleneck; the
committer thread instead takes everything queued when it becomes free and writes it in one transaction.
Nothing waits on a timer, so a lone episode is written at once; each caller still gets its own result
(True, False for an already stored id, or its own exception) only after its episode is committed, and an
episode is never partially written.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from strop.memory.records import EpisodeRecord

_STOP = None


class GroupCommitter:
    def __init__(self, write: Callable[[Sequence[EpisodeRecord]], set[str]], max_batch: int = 256) -> None:
        """`write` stores a batch in one transaction and returns the ids it newly stored."""
        self._write = write
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[EpisodeRecord, Future[bool]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.transactions = 0  # how many transactions it used: for tests and benchmarks

    def submit(self, episode: EpisodeRecord) -> Future[bool]:
        future: Future[bool] = Future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="strop-store-commit", daemon=True)
                self._thread.start()
            self._queue.put((episode, future))
        return future

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._flush(batch)
            if stop:
                return

    def _flush(self, batch: list[tuple[EpisodeRecord, Future[bool]]]) -> None:
        try:
            new = self._write([ep for ep, _ in batch])
            self.transactions += 1
        except BaseException as exc:
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
                return
            # One bad episode must not fail its neighbours: retry each alone so the error reaches its caller.
            for item in batch:
                self._flush([item])
            return
        for ep, future in batch:
            future.set_result(ep.id in new)
            new.discard(ep.id)  # the same id twice in one batch: only the first caller stored it
