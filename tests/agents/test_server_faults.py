"""`strop serve` under faults and on a network: queue slots that never leak, the API key, the body limit.

Every test goes through a real uvicorn server (a thread) over the real tiny model. The slot test drops 200
streaming connections at random moments (while sending the body, before the first chunk, after the headers,
mid-stream, with a reset, plain requests cancelled while decoding), then checks that no slot is left taken,
that the dropped rows stopped decoding, and that a normal request is served at once.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from starlette.requests import ClientDisconnect
from typer.testing import CliRunner

from strop.agents.capture import AgentRun
from strop.agents.engines import EngineError, GenerationRequest
from strop.agents.engines.hf import HFEngine
from strop.agents.engines.streaming import StreamEvent
from strop.agents.server import create_app
from tests.servers import ThreadServer

KEY = "sekret"
LONG = "the quick brown"  # the tiny model never ends this one: it decodes to max_tokens unless stopped
MSG = [{"role": "user", "content": "What is 12 + 34?"}]


@pytest.fixture(scope="module")
def engine(tiny_model_path: Path) -> HFEngine:
    return HFEngine(tiny_model_path, model_version="tiny")


@pytest.fixture(scope="module")
def server(engine: HFEngine) -> Iterator[ThreadServer]:
    s = ThreadServer(create_app(engine, max_queue=64))
    yield s
    s.stop()


def rows_taken(server: ThreadServer) -> int:
    return int(server.server.config.app.state.admission.rows)  # type: ignore[union-attr]


def wait_free(server: ThreadServer, timeout_s: float = 10.0) -> float:
    """Seconds until every slot is free again (the server sees a disconnect as soon as the socket closes)."""
    start = time.monotonic()
    while rows_taken(server):
        assert time.monotonic() - start < timeout_s, f"{rows_taken(server)} rows still hold a slot"
        time.sleep(0.01)
    return time.monotonic() - start


def raw_request(
    path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[bytes, bytes]:
    data = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"Content-Length: {len(data)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), data


async def drop(port: int, rng: random.Random) -> str:
    """One connection, dropped at a random moment; returns how."""
    how = rng.choice(["in_body", "before_first", "after_headers", "mid_stream", "reset", "plain_cancelled"])
    long = rng.random() < 0.5
    body: dict[str, Any] = (
        {"prompt": LONG, "max_tokens": 200} if long else {"messages": MSG, "max_tokens": 24}
    )
    body.update(temperature=1.0, seed=rng.randrange(10**6), n=rng.choice([1, 1, 2]))
    body["stream"] = how != "plain_cancelled"
    head, data = raw_request("/v1/completions" if long else "/v1/chat/completions", body)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if how == "in_body":
            writer.write(head + data[: len(data) // 2])
            await writer.drain()
            return how
        writer.write(head + data)
        await writer.drain()
        if how == "before_first":
            return how
        if how == "plain_cancelled":
            await asyncio.sleep(rng.uniform(0, 0.05))
            return how
        await reader.readuntil(b"\r\n\r\n")
        if how in ("mid_stream", "reset"):
            await reader.read(rng.randint(1, 600))
        if how == "reset":
            writer.transport.abort()  # an RST, not a FIN: a client that crashed
        return how
    finally:
        writer.close()


async def test_disconnect_of_200_streams_at_random_moments_leaves_no_slot_taken(
    server: ThreadServer, engine: HFEngine
) -> None:
    before = engine.stats.tokens_generated
    gate = asyncio.Semaphore(25)  # 25 connections open at a time, so drops overlap with live decoding

    async def one(i: int) -> str:
        async with gate:
            return await drop(
                server.port, random.Random(27_000 + i)
            )  # one seed each: the same drops every run

    hows = await asyncio.gather(*(one(i) for i in range(200)))
    assert set(hows) == {"in_body", "before_first", "after_headers", "mid_stream", "reset", "plain_cancelled"}
    freed_s = wait_free(server)
    decoded = engine.stats.tokens_generated - before
    start = time.monotonic()
    async with openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0) as client:
        reply = await client.chat.completions.create(model="tiny", messages=MSG, max_tokens=8)
    next_s = time.monotonic() - start
    print(
        f"\n200 dropped: slots in use {rows_taken(server)}, freed {freed_s:.2f} s after the last close, "
        f"next request served in {next_s:.2f} s, {decoded} tokens decoded in all"
    )
    assert reply.choices[0].message.content is not None and rows_taken(server) == 0
    assert next_s < 5, "the server was still busy decoding for the dropped clients"
    # ~100 long streams of 200 tokens each: run on for nobody, they alone would decode ~20,000 tokens
    assert decoded < 8_000, f"{decoded} tokens decoded: the dropped streams decoded on"


def asgi_call(app: Any, path: str, body: dict[str, Any], fail_at: int) -> Any:
    """The app called as an ASGI 2.4 server calls it (hypercorn, granian): a disconnect shows as an OSError
    from `send`, here at the `fail_at`-th message (0: the status line, before the first chunk)."""
    raw = json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    messages = [{"type": "http.request", "body": raw, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)  # the server learns of the disconnect from send, not from here
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if len(sent) == fail_at:
            raise OSError("Connection reset by peer")
        sent.append(message)

    return app(scope, receive, send)


@pytest.mark.parametrize("fail_at", [0, 3])
async def test_disconnect_before_or_during_the_first_chunk_on_an_asgi_2_4_server_frees_the_slot(
    engine: HFEngine, fail_at: int
) -> None:
    app = create_app(engine, max_queue=8)
    before = engine.stats.tokens_generated
    with pytest.raises(ClientDisconnect):  # what the server sees
        await asgi_call(
            app, "/v1/completions", {"prompt": LONG, "max_tokens": 200, "n": 2, "stream": True}, fail_at
        )
    assert app.state.admission.rows == 0, (
        "a generator that never started (or was left suspended) kept its slot"
    )
    await asyncio.sleep(0.5)  # the rows stop at their next step, not at max_tokens
    assert engine.stats.tokens_generated - before < 2 * 200 / 2


class FailingStream:
    """The real tiny engine, whose streams fail after `after` events (a GPU fault, an OOM mid-decode)."""

    def __init__(self, engine: HFEngine, after: int) -> None:
        self.engine = engine
        self.after = after
        self.tokenizer = engine.tokenizer

    @property
    def model_version(self) -> str:
        return self.engine.model_version

    async def generate(self, requests: list[GenerationRequest]) -> Any:
        raise EngineError("the device fell over")

    async def stream(self, request: GenerationRequest) -> Any:
        events = self.engine.stream(request)
        try:
            for _ in range(self.after):
                ev: StreamEvent = await anext(events)
                yield ev
            raise EngineError("the device fell over mid-stream")
        finally:
            await events.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize("after", [0, 2])
async def test_an_engine_error_before_or_after_the_first_chunk_releases_the_slot(
    engine: HFEngine, after: int
) -> None:
    s = ThreadServer(create_app(FailingStream(engine, after), max_queue=4))  # type: ignore[arg-type]
    try:
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as http:
            body = {"prompt": LONG, "max_tokens": 50, "n": 4}
            plain = await http.post("/completions", json=body)
            assert plain.status_code == 500 and "fell over" in plain.json()["error"]["message"]
            assert rows_taken(s) == 0
            streamed = await http.post("/completions", json={**body, "stream": True})
            if after == 0:  # before the status line: a plain 500
                assert streamed.status_code == 500
            else:  # after it: an error event in the stream
                assert streamed.status_code == 200 and "fell over mid-stream" in streamed.text
            wait_free(s, 5)
    finally:
        s.stop()


async def test_a_prompt_too_long_and_a_closed_engine_release_their_slots(tiny_model_path: Path) -> None:
    engine = HFEngine(tiny_model_path, model_version="tiny")
    s = ThreadServer(create_app(engine, max_queue=2))
    try:
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as http:
            huge = {"prompt": "1 + 1 = 2. " * 5000, "max_tokens": 4, "n": 2}
            for stream in (False, True):
                r = await http.post("/completions", json={**huge, "stream": stream})
                assert r.status_code == 400 and r.json()["error"]["code"] == "prompt_too_long"
                assert rows_taken(s) == 0
            await engine.close()
            for stream in (False, True):
                r = await http.post("/completions", json={"prompt": LONG, "max_tokens": 4, "stream": stream})
                assert r.status_code == 500 and "closed" in r.json()["error"]["message"]
                assert rows_taken(s) == 0
    finally:
        s.stop()


@pytest.fixture(scope="module")
def keyed(tiny_model_path: Path) -> Iterator[ThreadServer]:
    engine = HFEngine(tiny_model_path, model_version="tiny")
    s = ThreadServer(create_app(engine, api_key=KEY, max_body_bytes=4096))
    yield s
    s.stop()


async def test_api_key_guards_every_endpoint_the_episode_ones_too(keyed: ThreadServer) -> None:
    chat = {"messages": MSG, "max_tokens": 4}
    async with httpx.AsyncClient(base_url=keyed.root, timeout=30) as http:
        good = {"Authorization": f"Bearer {KEY}"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            for method, path, body in [
                ("GET", "/v1/models", None),
                ("POST", "/v1/chat/completions", chat),
                ("POST", "/episodes", {}),
                ("POST", "/episodes/ep-1/v1/chat/completions", chat),
                ("GET", "/docs", None),
            ]:
                r = await http.request(method, path, json=body, headers=headers)
                assert r.status_code == 401, (path, headers, r.status_code)
                err = r.json()["error"]
                assert err["code"] == "invalid_api_key" and "Authorization: Bearer <key>" in err["message"]
                assert r.headers["www-authenticate"].startswith("Bearer")
        assert (await http.get("/v1/models", headers=good)).status_code == 200
        assert (await http.post("/v1/chat/completions", json=chat, headers=good)).status_code == 200
    bad = openai.AsyncOpenAI(base_url=keyed.url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await bad.models.list()
    await bad.close()
    async with AgentRun(base_url=keyed.url, api_key=KEY) as run:  # the capture client sends the key
        ep = await run.episode(task_id="keyed")
        reply = await ep.client().chat.completions.create(model="any", messages=MSG, max_tokens=4)
        assert reply.choices[0].message.content is not None
        await ep.finish("done")
        assert (await ep.summary())["calls"] == 1


async def test_api_key_from_the_environment_reaches_a_remote_agent_run(
    keyed: ThreadServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STROP_API_KEY", KEY)
    async with AgentRun(base_url=keyed.root) as run:
        ep = await run.episode(task_id="from-env")
        await ep.client().completions.create(model="tiny", prompt="1 + 1", max_tokens=2)
        await ep.abort("enough")


async def test_without_an_api_key_everything_stays_open(server: ThreadServer) -> None:
    async with httpx.AsyncClient(base_url=server.root, timeout=30) as http:
        for headers in ({}, {"Authorization": "Bearer anything"}):
            assert (await http.get("/v1/models", headers=headers)).status_code == 200
            opened = await http.post("/episodes", json={}, headers=headers)
            assert opened.status_code == 200
            path = f"/episodes/{opened.json()['id']}/v1/chat/completions"
            r = await http.post(path, json={"messages": MSG, "max_tokens": 2}, headers=headers)
            assert r.status_code == 200


async def test_a_body_over_the_limit_is_a_413_with_or_without_content_length(keyed: ThreadServer) -> None:
    good = {"Authorization": f"Bearer {KEY}"}
    big = {"messages": [{"role": "user", "content": "x" * 5000}], "max_tokens": 2}
    async with httpx.AsyncClient(base_url=keyed.root, timeout=30, headers=good) as http:
        r = await http.post("/v1/chat/completions", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert "--max-body-bytes" in r.json()["error"]["message"]

        async def chunked() -> Any:  # no Content-Length: counted as it arrives
            raw = json.dumps(big).encode()
            for i in range(0, len(raw), 1000):
                yield raw[i : i + 1000]

        r = await http.post(
            "/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413
        small = await http.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 2})
        assert small.status_code == 200  # a body under the limit reaches the app whole


def test_strop_serve_binds_127_0_0_1_by_default_and_documents_the_key() -> None:
    from strop.cli import app

    out = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert "[default: 127.0.0.1]" in out
    assert "--api-key" in out and "STROP_API_KEY" in out and "--max-body-bytes" in out
