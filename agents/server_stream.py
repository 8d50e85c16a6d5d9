"""Server-sent events for `stream=true`: the OpenAI chunk format, fed by an engine's own token stream.

Each engine event (one decoding step of one choice, or several when the client reads slower than the engine
decodes) becomes one chunk. Each choice's last chunk has its finish_reason; with
stream_options.include_usage a last chunk with empty choices carries the usage; then `data: [DONE]`. An
engine error after the first chunk is sent as an `error` event, which the openai client raises.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from strop.agents.engines.base import Completion, EngineError
from strop.agents.engines.streaming import StreamEvent
from strop.agents.server_api import chat_logprobs, error_body, text_logprobs, usage


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def chunks(
    first: StreamEvent,
    events: AsyncIterator[StreamEvent],
    *,
    chat: bool,
    logprobs: bool,
    include_usage: bool,
    tokenizer: Any,
    release: Callable[[], None],
) -> AsyncIterator[bytes]:
    """The SSE body of one streamed request; `release` frees its place in the server's queue, however it ends."""
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"
    opened: set[int] = set()
    offsets: dict[int, int] = {}
    done: dict[int, Completion] = {}
    version = first.model_version

    def chunk(ev: StreamEvent) -> dict[str, Any]:
        c = ev.completion
        choice: dict[str, Any] = {"index": ev.index}
        if chat:
            delta: dict[str, Any] = {}
            if ev.index not in opened:
                delta["role"] = "assistant"
            if ev.text or ev.index not in opened:
                delta["content"] = ev.text
            choice["delta"] = delta
        else:
            choice["text"] = ev.text
        opened.add(ev.index)
        lp = None
        if logprobs and ev.token_ids:
            if chat:
                lp = chat_logprobs(tokenizer, ev.token_ids, ev.logprobs, ev.top_logprobs)
            else:
                lp = text_logprobs(
                    tokenizer, ev.token_ids, ev.logprobs, ev.top_logprobs, offsets.get(ev.index, 0)
                )
                offsets[ev.index] = offsets.get(ev.index, 0) + sum(len(t) for t in lp["tokens"])
        choice["logprobs"] = lp
        choice["finish_reason"] = c.finish_reason.value if c is not None else None
        choice["token_ids"] = ev.token_ids
        body: dict[str, Any] = {
            "id": rid,
            "object": kind,
            "created": created,
            "model": ev.model_version or version,
            "choices": [choice],
        }
        if include_usage:
            body["usage"] = None
        return body

    try:
        ev: StreamEvent | None = first
        while ev is not None:
            if ev.completion is not None:
                done[ev.index] = ev.completion
            if ev.model_version:
                version = ev.model_version
            yield sse(chunk(ev))
            ev = await anext(events, None)
        if include_usage:
            finished = [done[i] for i in sorted(done)]
            prompt = len(finished[0].prompt_token_ids) if finished else 0
            yield sse(
                {
                    "id": rid,
                    "object": kind,
                    "created": created,
                    "model": version,
                    "choices": [],
                    "usage": usage(prompt, finished),
                }
            )
        yield b"data: [DONE]\n\n"
    except EngineError as e:  # the status line is sent already: report it in the stream
        yield sse(error_body(str(e), kind="server_error"))
    finally:
        await events.aclose()  # type: ignore[attr-defined]
        release()
