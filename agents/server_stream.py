"""Server-sent events for `stream=true`: the OpenAI chunk format, fed by an engine's own token stream.

Each engine event (one decoding step of one choice, or several when the client reads slower than the engine
decodes) becomes one chunk. Each choice's last chunk has its finish_reason; with
stream_options.include_usage a last chunk with empty choices carries the usage; then `data: [DONE]`. An
engine error after the first chunk is sent as an `error` event, which the openai client raises.

The response owns the request's queue slot (server_slots.Slot): it closes it when the stream ends, when the
client disconnects mid-stream, and when a disconnect cancels the response before the body generator started
(a generator that never started runs no `finally`).

With tools on, a choice's text is held back until it ends (a call cannot be told from text before then), and
then sent as content, or as a `delta.tool_calls` chunk followed by an empty delta with finish_reason
"tool_calls", as OpenAI streams a call.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from strop.agents.engines.base import Completion, EngineError, GenerationRequest
from strop.agents.engines.streaming import StreamEvent
from strop.agents.engines.tools import ParsedReply, tool_mode
from strop.agents.server_api import chat_logprobs, error_body, parse_reply, text_logprobs, usage
from strop.agents.server_slots import Slot


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
    slot: Slot,
    request: GenerationRequest | None = None,
) -> AsyncIterator[bytes]:
    """The SSE body of one streamed request; `slot` (its engine stream and queue place) closes however it ends.

    request: the generation request, so a chat reply is read for a tool call when it has tools on.
    """
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
        return envelope(choice, ev.model_version or version)

    def envelope(choice: dict[str, Any], model: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": rid,
            "object": kind,
            "created": created,
            "model": model,
            "choices": [choice],
        }
        if include_usage:
            body["usage"] = None
        return body

    tools_on = chat and request is not None and tool_mode(request.tools, request.tool_choice)[0] != "off"

    def tool_chunks(index: int, c: Completion) -> list[dict[str, Any]]:
        """A finished choice with tools on: its whole reply, as content or as one call."""
        parsed = parse_reply(c, request, tokenizer) or ParsedReply(content=c.text)
        lp = chat_logprobs(tokenizer, c.token_ids, c.logprobs, c.top_logprobs) if logprobs else None
        first: dict[str, Any] = {"index": index, "delta": {"role": "assistant", "content": parsed.content}}
        first.update(logprobs=lp, finish_reason=c.finish_reason.value, token_ids=c.token_ids)
        first["invalid_tool_call"] = parsed.invalid
        if not parsed.tool_calls:
            return [envelope(first, c.model_version)]
        call = parsed.tool_calls[0]
        first["delta"]["tool_calls"] = [{"index": 0, **call}]
        first["finish_reason"] = None
        last = {"index": index, "delta": {}, "logprobs": None, "finish_reason": "tool_calls", "token_ids": []}
        return [envelope(first, c.model_version), envelope(last, c.model_version)]

    try:
        ev: StreamEvent | None = first
        while ev is not None:
            if ev.completion is not None:
                done[ev.index] = ev.completion
            if ev.model_version:
                version = ev.model_version
            if not tools_on:
                yield sse(chunk(ev))
            elif ev.completion is not None:
                for body in tool_chunks(ev.index, ev.completion):
                    yield sse(body)
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
        await slot.close()  # stops the engine stream (its rows) and frees the queue place


class SlotStreamingResponse(StreamingResponse):
    """A StreamingResponse that closes its body and its slot however the response ends (see the module doc)."""

    def __init__(self, content: AsyncIterator[bytes], slot: Slot, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):  # a disconnect cancels this task: closing must finish anyway
                try:
                    await self.body_iterator.aclose()  # type: ignore[attr-defined]
                finally:
                    await self.slot.close()
