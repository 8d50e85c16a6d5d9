"""`strop serve`'s app and the `openai` backend, tested together through the official `openai` client."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import uvicorn

from strop.agents.engines import (
    EngineError,
    GenerationRequest,
    PromptTooLongError,
    SamplingParams,
    load_engine,
)
from strop.agents.engines.hf import HFEngine
from strop.agents.engines.openai import OpenAIEngine
from strop.agents.server import create_app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def base_url(random_tiny_path: Path) -> Iterator[str]:
    engine = HFEngine(random_tiny_path, model_version="random-tiny")
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)


def test_models_and_chat_through_the_official_client(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key="unused")
    assert [m.id for m in client.models.list()] == ["random-tiny"]
    response = client.chat.completions.create(
        model="random-tiny",
        messages=[{"role": "user", "content": "What is 2 + 2?"}],
        n=2,
        max_tokens=6,
        temperature=0.8,
        seed=1,
        logprobs=True,
    )
    assert len(response.choices) == 2
    assert response.usage is not None and response.usage.completion_tokens > 0
    for choice in response.choices:
        assert choice.finish_reason in ("stop", "length")
        assert choice.logprobs is not None and choice.logprobs.content
        token_ids = choice.model_extra["token_ids"]
        assert len(token_ids) == len(choice.logprobs.content)
    assert response.usage.completion_tokens == sum(len(c.model_extra["token_ids"]) for c in response.choices)


def test_bad_input_is_a_400_naming_the_field(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], temperature=-1.0
        )
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="m", messages="hi")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="random-tiny", messages=[{"role": "user", "content": "fox " * 400}], max_tokens=8
        )
    assert "context window of 256" in str(err.value)


async def test_openai_engine_against_strop_serve(base_url: str) -> None:
    engine = OpenAIEngine(base_url, "random-tiny", max_concurrency=4)
    requests = [GenerationRequest.chat(f"What is {i} + 1?", n=2, max_tokens=5, seed=i) for i in range(6)]
    requests.append(
        GenerationRequest(prompt="the quick", sampling=SamplingParams(max_tokens=4, temperature=0))
    )
    results = await engine.generate(requests)
    assert [len(r) for r in results] == [2] * 6 + [1]
    for completions in results:
        for c in completions:
            assert c.token_ids and c.prompt_token_ids
            assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
            assert all(lp <= 0 for lp in c.logprobs)
            assert c.model_version == "random-tiny"
    with pytest.raises(PromptTooLongError, match="context window"):
        await engine.generate([GenerationRequest.chat("fox " * 400, max_tokens=8)])
    await engine.close()


async def test_a_server_that_does_not_answer_fails_fast_and_clearly() -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    engine = load_engine("some-model", "openai", base_url=url, max_retries=2, timeout_s=2)
    started = time.monotonic()
    with pytest.raises(EngineError, match=r"no answer from .* after 3 attempts.*strop serve"):
        await engine.generate([GenerationRequest.chat("hi", max_tokens=2)])
    assert time.monotonic() - started < 15
    await engine.close()


async def test_openai_backend_refuses_tools_instead_of_dropping_them() -> None:
    engine = load_engine("some-model", "openai", base_url="http://127.0.0.1:9/v1")
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    request = GenerationRequest(messages=[{"role": "user", "content": "2+3"}], tools=tools)
    with pytest.raises(EngineError, match="does not forward `tools`"):
        await engine.generate([request])
    await engine.close()


def test_openai_backend_needs_a_base_url() -> None:
    with pytest.raises(EngineError, match="base_url"):
        load_engine("tiny", "openai")


async def test_a_server_that_hangs_times_out_with_bounded_retries() -> None:
    with socket.socket() as listener:  # accepts connections (kernel backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        engine = OpenAIEngine(url, "some-model", timeout_s=0.5, max_retries=1)
        started = time.monotonic()
        with pytest.raises(EngineError, match=r"after 2 attempts \(APITimeoutError"):
            await engine.generate([GenerationRequest.chat("hi", max_tokens=2)])
        assert time.monotonic() - started < 10
        await engine.close()


async def test_continue_final_message_round_trips(base_url: str, random_tiny_path: Path) -> None:
    from transformers import AutoTokenizer

    from strop.agents.engines import Message

    messages = [Message(role="user", content="What is 1 + 1?"), Message(role="assistant", content="Step 1:")]
    request = GenerationRequest(
        messages=messages, continue_final=True, sampling=SamplingParams(max_tokens=3, temperature=0)
    )
    engine = OpenAIEngine(base_url, "random-tiny")
    [[c]] = await engine.generate([request])
    await engine.close()
    # the prompt ends inside the assistant turn: no end-of-turn token after the partial answer
    text = AutoTokenizer.from_pretrained(random_tiny_path).decode(c.prompt_token_ids)
    assert text.endswith("<|user|>What is 1 + 1?<|end|><|assistant|>Step 1:")
