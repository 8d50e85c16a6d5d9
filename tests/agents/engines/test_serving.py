"""`strop serve` as the official `openai` client expects it: streaming, top_logprobs, refused parameters,
unknown models, the bounded queue, and following the registry through a promotion mid-stream.

Every test goes through a real uvicorn server on 127.0.0.1 (a thread), with the sync or the async client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from strop.agents.engines import GenerationRequest
from strop.agents.engines.hf import HFEngine
from strop.agents.server import create_app
from tests.servers import ThreadServer

MSG = [{"role": "user", "content": "What is 12 + 34?"}]


_Server = ThreadServer


@pytest.fixture(scope="module")
def engine(random_tiny_path: Path) -> HFEngine:
    return HFEngine(random_tiny_path, model_version="random-tiny")


@pytest.fixture(scope="module")
def server(engine: HFEngine) -> Iterator[_Server]:
    s = _Server(create_app(engine, max_queue=4))
    yield s
    s.stop()


@pytest.fixture
def client(server: _Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)


def test_streamed_chat_equals_the_non_streamed_completion(client: openai.OpenAI) -> None:
    args: dict[str, Any] = dict(
        model="random-tiny",
        messages=MSG,
        n=2,
        max_tokens=24,
        temperature=0.9,
        seed=7,
        logprobs=True,
        top_logprobs=2,
    )
    full = client.chat.completions.create(**args)
    texts, ids, chunks = ["", ""], [[], []], 0
    finish: dict[int, str] = {}
    usage = None
    for chunk in client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}):
        chunks += 1
        assert chunk.model == "random-tiny" and chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            ids[choice.index] += choice.model_extra["token_ids"]
            if choice.logprobs is not None:
                assert all(len(e.top_logprobs) == 2 for e in choice.logprobs.content)
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    assert texts == [c.message.content for c in full.choices]
    assert ids == [c.model_extra["token_ids"] for c in full.choices]
    assert finish == {c.index: c.finish_reason for c in full.choices}
    assert usage is not None and usage.model_dump() == full.usage.model_dump()
    assert chunks > 4, "the stream came as a few pieces, not one chunk per decoding step"


async def test_streamed_completion_with_a_stop_string_equals_the_non_streamed(server: _Server) -> None:
    client = openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0)
    args: dict[str, Any] = dict(
        model="random-tiny", prompt="the quick brown", max_tokens=32, temperature=1.0, seed=3
    )
    free = (await client.completions.create(**args)).choices[0].text
    stop = free[len(free) // 2 : len(free) // 2 + 2]  # a stop string that this seed is sure to produce
    assert stop
    full = (await client.completions.create(**args, stop=[stop])).choices[0]
    streamed, reasons = "", []
    async for chunk in await client.completions.create(**args, stop=[stop], stream=True):
        streamed += chunk.choices[0].text
        reasons.append(chunk.choices[0].finish_reason)
    assert streamed == full.text and stop not in streamed
    assert reasons[-1] == full.finish_reason == "stop" and not any(reasons[:-1])
    await client.close()


def test_top_logprobs_as_openai_returns_them(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="random-tiny", messages=MSG, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == len(r.choices[0].model_extra["token_ids"])
    for entry in content:
        alts = entry.top_logprobs
        assert len(alts) == 3 and [a.logprob for a in alts] == sorted((a.logprob for a in alts), reverse=True)
        assert alts[0].token == entry.token and alts[0].logprob == pytest.approx(entry.logprob)  # greedy
    text = (
        client.completions.create(
            model="random-tiny", prompt="the quick", max_tokens=4, temperature=0, logprobs=2
        )
        .choices[0]
        .logprobs
    )
    assert text is not None and len(text.top_logprobs) == len(text.tokens)
    assert all(len(step) <= 2 for step in text.top_logprobs)
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs"):
        client.chat.completions.create(model="random-tiny", messages=MSG, top_logprobs=2)
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model="random-tiny", messages=MSG, logprobs=True, top_logprobs=21)


@pytest.mark.parametrize(
    ("endpoint", "params", "name"),
    [
        ("chat", {"tool_choice": "auto"}, "tool_choice"),
        ("chat", {"response_format": {"type": "json_object"}}, "response_format"),
        ("chat", {"logit_bias": {"5": 10}}, "logit_bias"),
        ("chat", {"presence_penalty": 0.5}, "presence_penalty"),
        ("chat", {"frequency_penalty": 0.5}, "frequency_penalty"),
        ("chat", {"extra_body": {"guided_json": {}}}, "guided_json"),
        ("text", {"echo": True}, "echo"),
        ("text", {"best_of": 3}, "best_of"),
        ("text", {"suffix": "end"}, "suffix"),
    ],
)
def test_unimplemented_parameters_are_refused_by_name(
    client: openai.OpenAI, endpoint: str, params: dict[str, Any], name: str
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        if endpoint == "chat":
            client.chat.completions.create(model="random-tiny", messages=MSG, max_tokens=2, **params)
        else:
            client.completions.create(model="random-tiny", prompt="hi", max_tokens=2, **params)
    assert err.value.param == name and f"`{name}`" in err.value.message


def test_neutral_values_and_caller_ids_are_accepted(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="random-tiny",
        messages=MSG,
        max_tokens=2,
        response_format={"type": "text"},
        presence_penalty=0,
        frequency_penalty=0,
        user="someone",
        metadata={"k": "v"},
        tool_choice="none",
    )
    assert r.choices[0].finish_reason in ("stop", "length")


def test_an_unknown_model_is_a_404_in_openai_shape(client: openai.OpenAI, server: _Server) -> None:
    assert [m.id for m in client.models.list()] == ["random-tiny"]
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=2)
    assert err.value.code == "model_not_found" and err.value.param == "model"
    body = httpx.post(f"{server.url}/completions", json={"model": "gpt-4o", "prompt": "x"}).json()
    assert body["error"]["type"] == "invalid_request_error" and "gpt-4o" in body["error"]["message"]


async def test_a_full_queue_answers_429_and_a_closed_stream_stops_decoding(
    server: _Server, engine: HFEngine
) -> None:
    client = openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0)
    greedy: dict[str, Any] = dict(
        model="random-tiny", prompt="the quick brown", max_tokens=200, temperature=0
    )
    [[plain]] = await engine.generate(
        [GenerationRequest(prompt="the quick brown", sampling={"max_tokens": 200, "temperature": 0})]
    )
    assert len(plain.token_ids) == 200, "this test needs a prompt that runs to max_tokens"
    before = engine.stats.tokens_generated
    stream = await client.completions.create(**greedy, n=4, stream=True)  # fills the queue (max_queue=4)
    await anext(aiter(stream))
    with pytest.raises(openai.RateLimitError) as err:
        await client.completions.create(model="random-tiny", prompt="hi", max_tokens=2)
    assert err.value.response.headers["retry-after"] == "1" and err.value.code == "queue_full"
    await stream.close()  # the client goes away: its 4 rows stop at the next step
    deadline = time.monotonic() + 10
    while True:  # the queue frees once the server has seen the disconnect
        try:
            await client.completions.create(model="random-tiny", prompt="hi", max_tokens=2)
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "the closed stream never left the queue"
            await asyncio.sleep(0.05)
    assert engine.stats.tokens_generated - before < 4 * 200 / 2, "the closed stream decoded on to max_tokens"
    await client.close()
