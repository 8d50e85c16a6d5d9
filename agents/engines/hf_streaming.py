"""Streaming from the hf engine: carrying each decoding step's tokens from the worker to the client's stream.

A streamed row has a sink. On the worker thread, RowStop hands every step's new tokens to `deliver` on the
event loop (`call_soon_threadsafe`), which passes each token to its row's sink; the sink queues it as
(choice index, model version, token update), and the row's end queues (index, '', None). `merge_events` turns
what a stream finds queued into StreamEvents: consecutive tokens of a choice in one event, then its final
event carrying the Completion, so a slow reader gets several steps at once rather than a backlog.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from strop.agents.engines.hf_rows import Row, TokenUpdate
from strop.agents.engines.streaming import StreamEvent, TextDeltas

# What a stream's queue holds: (choice index, model version, the token or None once the row is done).
Queued = tuple[int, str, TokenUpdate | None]


def deliver(version: str, updates: list[tuple[Row, TokenUpdate]]) -> None:
    """On the event loop: hand one decoding step's tokens to their streams."""
    for row, update in updates:
        if row.sink is not None and not row.cancelled:
            row.sink(version, update)


def to_sink(sink: Callable[[Queued], None], index: int, version: str, update: TokenUpdate) -> None:
    """A row's sink: queue its token under its choice index."""
    sink((index, version, update))


def end_of_row(sink: Callable[[Queued], None], index: int, future: Any) -> None:
    """A row's future is done: queue the end of its choice (unless the caller cancelled it)."""
    if not future.cancelled():
        sink((index, "", None))


def merge_events(
    items: list[Queued],
    rows: list[Row],
    texts: list[TextDeltas],
    want_lp: bool,
    want_top: bool,
) -> list[StreamEvent]:
    """One event per choice for consecutive tokens, then its final event once its row is done."""
    out: list[StreamEvent] = []
    pending: dict[int, StreamEvent] = {}
    for index, version, update in items:
        if update is not None:
            token, logprob, top = update
            ev = pending.get(index)
            if ev is None or ev.model_version != version:
                if ev is not None:
                    out.append(ev)
                ev = pending[index] = StreamEvent(
                    index,
                    version,
                    logprobs=[] if want_lp else None,
                    top_logprobs=[] if want_top else None,
                )
            ev.token_ids.append(token)
            if ev.logprobs is not None:
                ev.logprobs.append(logprob)
            if ev.top_logprobs is not None:
                ev.top_logprobs.append(top or {})
            continue
        if index in pending:
            out.append(pending.pop(index))
        completion = rows[index].future.result()  # raises the engine's error, if any
        out.append(StreamEvent(index, completion.model_version, completion=completion))
    out.extend(pending.values())
    for ev in out:
        ev.text = (
            texts[ev.index].finish(ev.completion.text)
            if ev.completion
            else texts[ev.index].push(ev.token_ids)
        )
    return out
