"""The serving queue's slots: taken at admission, and given back on every path a request can end.

A request holds its rows' place in the queue (`Admission`) from admission until its last byte is sent or
its client is gone. Why a `Slot` object and not a `finally` in the response generator: a streaming client that
disconnects before the first chunk cancels the response before its generator ever starts, and a generator that
never started has no `finally` to run; the slot stayed taken, the rows decoded on, and enough such clients made
the server answer 429 for ever. A slot is closed by whoever ends the request first (the stream's end, the
response's own `finally`, an error, a disconnect seen while waiting for the engine), and closing twice is safe.

A client that goes away while its request waits for the engine (the first token of a stream, or the whole
answer of a plain request) cancels the generation: the engine takes its rows out at the next step instead of
decoding to max_tokens for nobody.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


class Admission:
    """A bound on the completions (rows) queued or decoding at once; beyond it requests get 429.

    Why rows, not requests: a request with n=16 costs the engine 16 rows. Without a bound, a burst grows the
    engine's queue without limit and every client waits longer; with one, the excess is told to come back.
    """

    def __init__(self, max_rows: int, retry_after_s: int = 1) -> None:
        if max_rows < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_rows}")
        self.max_rows = max_rows
        self.retry_after_s = retry_after_s
        self.rows = 0

    def enter(self, rows: int) -> Callable[[], None] | None:
        """A release function (idempotent), or None when the queue is full."""
        if self.rows + rows > self.max_rows and self.rows > 0:
            return None
        self.rows += rows
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.rows -= rows

        return release


class Slot:
    """One admitted request's place in the queue and, when it streams, its engine stream.

    `close` stops the stream (the engine frees its rows) and then gives the place back, once, even when the
    task closing it is being cancelled: a disconnect cancels the response task, and an interrupted close would
    leak the very slot it was freeing.
    """

    def __init__(self, release: Callable[[], None], events: AsyncIterator[Any] | None = None) -> None:
        self.release = release
        self.events = events
        self.closed = False

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.events is not None:
                with anyio.CancelScope(shield=True):
                    await self.events.aclose()  # type: ignore[attr-defined]
        finally:
            self.release()


class ClientGone(Exception):
    """The client disconnected while its request waited for the engine; the generation was cancelled."""


async def _disconnect(receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    """Return once the client is gone. The body was read already, so the next ASGI message is the disconnect
    (uvicorn answers `http.disconnect` once the connection is closed)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_gone(receive: Callable[[], Awaitable[dict[str, Any]]] | None, work: Awaitable[T]) -> T:
    """`await work`, cancelled if the client disconnects first (then ClientGone is raised).

    receive: the request's ASGI receive; None awaits `work` plainly (a caller with no connection to watch).
    """
    if receive is None:
        return await work
    job = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # both end here: no receive() of ours is left pending when a StreamingResponse starts listening for the
        # disconnect itself, and a job still running (the client is gone, or this handler was cancelled) stops
        gone.cancel()
        if not job.done():
            job.cancel()
        await asyncio.gather(gone, job, return_exceptions=True)
    if job.cancelled():
        raise ClientGone("the client disconnected before the engine answered")
    return job.result()
