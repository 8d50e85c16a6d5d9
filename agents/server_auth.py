"""What `strop serve` checks before a request reaches the app: the API key and the size of the body.

Why here, as plain ASGI middleware around the whole app: every route, `/v1` and the episode endpoints of the
capture work alike, is covered by one check that a new route cannot forget. Without a key configured (strop's
own in-process servers, bound to 127.0.0.1) nothing is asked. With one, a request without
`Authorization: Bearer KEY` answers 401 in OpenAI's error shape (the `openai` client raises
AuthenticationError); the key is compared in constant time (hmac.compare_digest), so response timing does not
leak how much of a guess was right.

A body over `max_body_bytes` answers 413 before the app parses anything: by its Content-Length when the
client sends one (before reading any of it), else once the bytes read pass the limit; then the rest, up to as
much again, is read and dropped, so that a client still sending reads the 413 instead of a reset connection.
The body is read here, whole, and handed to
the app as one message (OpenAI requests are small JSON documents, which FastAPI buffers anyway); after it the
app's `receive` is the server's own, so the app still sees the client's disconnect.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from strop.agents.server_api import error_body

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # far above any chat request a model's context window can take


class NetworkGuard:
    """ASGI middleware: 401 without the API key (when one is set), 413 for a body over the limit."""

    def __init__(self, app: ASGIApp, *, api_key: str | None = None, max_body_bytes: int) -> None:
        if api_key is not None and not api_key.strip():
            raise ValueError("the API key is empty: give a non-empty key, or none to leave the server open")
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be at least 1, got {max_body_bytes}")
        self.app = app
        self.key = api_key.encode() if api_key is not None else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan (and websockets, which this app has none of) pass through
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        if self.key is not None and not self._authorized(headers.get("authorization", "")):
            await _reply(
                send,
                401,
                "a valid API key is required: send the header `Authorization: Bearer <key>` with the key the "
                "server was started with (strop serve --api-key, or $STROP_API_KEY)",
                code="invalid_api_key",
                extra=[(b"www-authenticate", b'Bearer realm="strop"')],
            )
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(send)
            return
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":  # gone while sending its body: nothing to answer
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _drain(receive, message, self.max_body_bytes)
                await self._too_large(send)
                return
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(parts), "more_body": False}
            return await receive()  # the server's own: the disconnect, once the client is gone

        await self.app(scope, replay, send)

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if self.key is None or scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(token.strip().encode(), self.key)

    async def _too_large(self, send: Send) -> None:
        limit = self.max_body_bytes
        await _reply(
            send,
            413,
            f"the request body is over the server's limit of {limit} bytes: send a shorter request, or start the "
            "server with a larger --max-body-bytes",
            code="request_too_large",
            extra=[(b"connection", b"close")],  # the unread rest of the body must not be parsed as a request
        )


async def _drain(receive: Receive, message: Message, most: int) -> None:
    """Read and drop the rest of a body that is over the limit, up to `most` more bytes (memory stays flat)."""
    while message.get("more_body", False) and most > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        most -= len(message.get("body", b""))


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def _reply(
    send: Send, status: int, message: str, *, code: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body: dict[str, Any] = error_body(message, kind="invalid_request_error", code=code)
    raw = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": raw, "more_body": False})
