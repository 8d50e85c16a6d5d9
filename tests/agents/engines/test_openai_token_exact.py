"""The `openai` engine's token-exact path against a real `strop serve` app (uvicorn in a thread, the tiny model):
prompts go as token ids, completions come back as the ids sampled, so `context_token_ids` works and the
multi-turn loops store the same ids through HTTP as in-process (greedy). A server that returns no ids (a hosted
API) still serves text, and the token path refuses it by name instead of storing empty ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi import FastAPI

from strop.agents.engines import EngineError, GenerationRequest, Message, load_engine
from strop.agents.engines.hf import HFEngine
from strop.agents.engines.openai import OpenAIEngine
from strop.agents.server import create_app
from tests.servers import ThreadServer


@pytest.fixture(scope="module")
def served(tiny_model_path: Path) -> Iterator[ThreadServer]:
    """`strop serve tiny` as the CLI runs it: the hf engine behind the app, in its own thread and loop."""
    server = ThreadServer(create_app(HFEngine(tiny_model_path, model_version="tiny"), owns_engine=True))
    yield server
    server.stop()


async def _both(run: Any, served: ThreadServer) -> tuple[Any, Any]:
    """`run(engine)` through HTTP and in-process."""
    remote, local = OpenAIEngine(served.url, "tiny"), load_engine("tiny")
    try:
        return await run(remote), await run(local)
    finally:
        await remote.close()
        await local.close()


async def test_openai_two_turns_are_token_exact_against_strop_serve(served: ThreadServer) -> None:
    async def two_turns(engine: Any) -> tuple[Any, ...]:
        [[a]] = await engine.generate(
            [GenerationRequest.chat("What is 12 + 34?", temperature=0, max_tokens=12)]
        )
        follow = GenerationRequest(
            messages=[Message(role="user", content="And 5 + 6?")],
            context_token_ids=a.prompt_token_ids + a.token_ids,
            sampling={"temperature": 0, "max_tokens": 12},
        )
        [[b]] = await engine.generate([follow])
        return a.prompt_token_ids, a.token_ids, b.prompt_token_ids, b.token_ids, b.text, b.logprobs

    remote, local = await _both(two_turns, served)
    assert remote[:5] == local[:5] and remote[1]
    assert remote[5] == pytest.approx(local[5], abs=1e-4)  # the server's log-probs, one per sampled token


async def test_openai_mcts_episode_stores_the_same_token_ids_as_in_process(served: ThreadServer) -> None:
    """Every node's step continues from ids (`messages=[]`, stop at a newline): the tree is the same tree."""
    from strop.agents.loops import mcts
    from strop.agents.loops.base import episode_input
    from strop.critics import VerifierCritic
    from strop.memory.records import EpisodeRecord
    from strop.sandbox.tasks import ArithmeticTaskSet, Split

    ts = ArithmeticTaskSet()
    cfg = mcts.MCTSConfig(
        system_prompt=None, k=2, budget_tokens=120, max_step_tokens=16, rollout_max_tokens=24, temperature=0.0
    )
    task = ts.tasks(Split.TRAIN, 1)[0]

    async def search(engine: Any) -> list[tuple[Any, ...]]:
        graph = mcts.build_graph(engine, VerifierCritic(ts), cfg).compile()
        out = await graph.ainvoke(episode_input(task, "run-openai-mcts"))
        steps = EpisodeRecord.model_validate(out["episode"]).steps
        return [(s.prompt_token_ids, s.token_ids, s.text, s.parent_id is None) for s in steps]

    remote, local = await _both(search, served)
    assert remote == local
    assert len(remote) >= 3  # the root's prompt and at least two steps, each continued from exact ids


async def test_openai_self_correction_stores_the_same_token_ids_as_in_process(
    served: ThreadServer, db_url: str
) -> None:
    from strop.agents.loops import self_correct as sc
    from strop.agents.loops.registry import LoopResources
    from strop.agents.runner import Runner
    from strop.memory import Store
    from strop.memory.records import RunRecord
    from strop.sandbox.tasks import ArithmeticTaskSet, Split

    ts = ArithmeticTaskSet()
    cfg = sc.SelfCorrectConfig(n=1, max_tokens=12, feedback="oracle", temperature=0.0, seed=0)
    store = Store(db_url)
    runs: list[str] = []

    async def run(engine: Any) -> list[list[tuple[Any, ...]]]:
        record = RunRecord(id=f"sc-openai-{len(runs)}", loop=sc.LOOP_NAME)
        runs.append(record.id)
        graph = sc.SPEC.make(LoopResources(engines={"policy": engine}, task_set=ts), cfg)
        await Runner(store, concurrency=1, progress=False).run(graph, ts.tasks(Split.TRAIN, 2), record)
        episodes = sorted(store.list_episodes(record.id), key=lambda e: e.task_id)
        return [[(s.prompt_token_ids, s.token_ids, s.text) for s in ep.steps] for ep in episodes]

    try:
        remote, local = await _both(run, served)
    finally:
        store.close()
    assert remote == local and len(remote) == 2
    for turns in remote:  # each revision read its attempt's own ids, verbatim, then the feedback turn
        assert (
            len(turns) == 2
            and turns[1][0][: len(turns[0][0]) + len(turns[0][1])] == turns[0][0] + turns[0][1]
        )


async def test_openai_token_prompt_is_checked_by_strop_serve(served: ThreadServer) -> None:
    client = openai.AsyncOpenAI(base_url=served.url, api_key="unused", max_retries=0)
    try:
        with pytest.raises(openai.BadRequestError, match="non-empty"):
            await client.completions.create(model="tiny", prompt=[], max_tokens=2)
        with pytest.raises(openai.BadRequestError, match="out of the vocabulary"):
            await client.completions.create(model="tiny", prompt=[4, 10**6], max_tokens=2)
        done = await client.completions.create(
            model="tiny", prompt=[4, 204], max_tokens=3, temperature=0, stop=["\n"], logprobs=0
        )
    finally:
        await client.close()
    choice = done.choices[0].model_extra
    assert choice["prompt_token_ids"] == [4, 204] and choice["token_ids"] and "stop_reason" in choice
    assert len(done.choices[0].logprobs.token_logprobs) == len(choice["token_ids"])


@pytest.fixture(scope="module")
def hosted() -> Iterator[ThreadServer]:
    """A server shaped like a hosted API: text answers, no token ids."""
    app = FastAPI()

    def choice(**fields: Any) -> dict[str, Any]:
        return {"index": 0, "finish_reason": "stop", "logprobs": None, **fields}

    @app.post("/v1/completions")
    async def complete(body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": "c",
            "object": "text_completion",
            "created": 0,
            "model": body["model"],
            "choices": [choice(text="46")],
        }

    @app.post("/v1/chat/completions")
    async def chat(body: dict[str, Any]) -> dict[str, Any]:
        message = {"role": "assistant", "content": "46"}
        return {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [choice(message=message)],
        }

    server = ThreadServer(app)
    yield server
    server.stop()


async def test_openai_text_path_serves_a_server_without_token_ids(hosted: ThreadServer) -> None:
    text = OpenAIEngine(hosted.url, "tiny", token_ids="never")
    [[c]] = await text.generate([GenerationRequest.chat("What is 12 + 34?", max_tokens=4)])
    assert c.text == "46" and c.token_ids == [] and text.tokenizer is None
    with pytest.raises(EngineError, match="token_context = false"):
        await text.generate([GenerationRequest(messages=[], context_token_ids=[1, 2])])
    # the tokenizer is here, the server returns no ids: refused by name, never stored as empty ids
    auto = OpenAIEngine(hosted.url, "tiny")
    with pytest.raises(EngineError, match=r"returned no token ids.*token_ids='never'"):
        await auto.generate([GenerationRequest.chat("What is 12 + 34?", max_tokens=4)])
    assert auto.tokenizer is not None


async def test_openai_token_mode_settings_name_the_fix() -> None:
    with pytest.raises(EngineError, match="token_ids must be one of auto, always, never"):
        OpenAIEngine("http://127.0.0.1:9/v1", "tiny", token_ids="sometimes")
    always = OpenAIEngine("http://127.0.0.1:9/v1", "gpt-4o-mini", token_ids="always")
    with pytest.raises(EngineError, match="pass tokenizer=PATH"):
        await always.generate([GenerationRequest.chat("hi")])
    # a hosted model name finds no tokenizer here: "auto" stays on text (no request is needed to decide)
    auto = OpenAIEngine("http://127.0.0.1:9/v1", "gpt-4o-mini")
    assert await auto._token_tokenizer() is None
