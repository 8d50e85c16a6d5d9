"""Episode capture through `strop serve` as a user's agent meets it: the official `openai` client (sync, async,
streaming) and LangChain's `ChatOpenAI` pointed at an episode's base URL, nothing else changed.

Every test goes through a real uvicorn server on 127.0.0.1 (a thread) over the real tiny model, recording into
the real store on SQLite and PostgreSQL; what the store holds afterwards is what training will read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from strop.agents.capture.hub import CaptureHub, StoreSink
from strop.agents.capture.writer import sync_all
from strop.agents.engines.hf import HFEngine
from strop.agents.server import create_app
from strop.memory.records import EpisodeRecord, ExampleKind, StepRecord
from tests.servers import ThreadServer

QUESTION = [{"role": "user", "content": "What is 12 + 34?"}]


class _Server(ThreadServer):
    """The test server, with an HTTP client for the episode endpoints."""

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.http = httpx.Client(base_url=self.root, timeout=60)

    def open(self, **body: Any) -> dict[str, Any]:
        r = self.http.post("/episodes", json=body)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def post(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return self.http.post(path, json=body or {})

    def stop(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def engine(tiny_model_path: Path) -> HFEngine:
    return HFEngine(tiny_model_path, model_version="tiny")


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Any]:
    """SQLite here: the capture writes themselves run on both backends in tests/memory/test_captures.py and
    test_writer.py, and `test_capture_on_postgresql_end_to_end` runs this path once on PostgreSQL."""
    from strop.memory import Store

    s = Store(sqlite_url)
    yield s
    s.close()


@pytest.fixture
def server(engine: HFEngine, store: Any) -> Iterator[_Server]:
    s = _Server(create_app(engine, hub=CaptureHub(StoreSink(store))))
    yield s
    s.stop()


def _client(episode: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(base_url=episode["base_url"], api_key="unused", max_retries=0)


def _aclient(episode: dict[str, Any]) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=episode["base_url"], api_key="unused", max_retries=0)


def _stored(store: Any, episode_id: str) -> EpisodeRecord:
    sync_all()  # steps are written behind the replies (capture/writer.py): read what the server queued
    ep = store.get_episode(episode_id)
    assert ep is not None, f"episode {episode_id} is not in the store"
    return ep


def _assert_trainable(step: StepRecord) -> None:
    """What a `pg` action needs: the engine's own prompt ids, sampled ids and one log-prob per sampled id."""
    assert step.prompt_token_ids and step.token_ids
    assert step.logprobs is not None and len(step.logprobs) == len(step.token_ids)
    assert all(lp <= 0 for lp in step.logprobs)
    assert step.model_version == "tiny"


def test_openai_client_sync_async_and_streaming_calls_are_each_one_step(server: _Server, store: Any) -> None:
    ep = server.open(task_id="t-openai", metadata={"who": "test"})
    assert ep["status"] == "running" and ep["base_url"] == f"{server.root}/episodes/{ep['id']}/v1"
    client = _client(ep)
    assert [m.id for m in client.models.list()] == ["tiny"]
    # any model name: the user's agent keeps its hard-coded one; no logprobs asked, still recorded
    chat = client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=8, temperature=0)
    assert chat.choices[0].logprobs is None
    text = client.completions.create(model="gpt-4o", prompt="What is 1 + 2?", max_tokens=6, temperature=0)
    streamed_ids: list[int] = []
    streamed_text = ""
    for chunk in client.chat.completions.create(
        model="x", messages=QUESTION, max_tokens=8, temperature=0.7, seed=1, stream=True
    ):
        for choice in chunk.choices:
            streamed_ids += choice.model_extra.get("token_ids") or []
            streamed_text += choice.delta.content or ""

    async def async_calls() -> tuple[Any, list[int]]:
        aclient = _aclient(ep)
        achat = await aclient.chat.completions.create(
            model="m", messages=QUESTION, max_tokens=8, temperature=0
        )
        ids: list[int] = []
        async for chunk in await aclient.completions.create(
            model="m", prompt="What is 5 + 6?", max_tokens=6, temperature=0, stream=True
        ):
            ids += chunk.choices[0].model_extra.get("token_ids") or []
        await aclient.close()
        return achat, ids

    achat, atext_ids = asyncio.run(async_calls())
    client.close()

    stored = _stored(store, ep["id"])
    assert stored.status == "running" and stored.task_id == "t-openai"
    steps = stored.steps
    assert [s.metadata["endpoint"] for s in steps] == ["chat", "text", "chat", "chat", "text"]
    assert [s.index for s in steps] == [0, 1, 2, 3, 4]
    for s in steps:
        _assert_trainable(s)
    # the ids stored are the ids the client was sent
    assert steps[0].token_ids == chat.choices[0].model_extra["token_ids"]
    assert steps[0].prompt_token_ids == chat.model_extra["prompt_token_ids"]
    assert steps[0].text == chat.choices[0].message.content
    assert steps[0].metadata["messages"] == QUESTION
    assert steps[1].token_ids == text.choices[0].model_extra["token_ids"]
    assert steps[1].metadata["prompt"] == "What is 1 + 2?"
    assert steps[2].token_ids == streamed_ids and steps[2].text == streamed_text
    assert steps[2].metadata["temperature"] == pytest.approx(0.7)
    assert steps[3].token_ids == achat.choices[0].model_extra["token_ids"]
    assert steps[4].token_ids == atext_ids
    assert all(s.metadata["latency_s"] >= 0 and s.metadata["started_at"] > 0 for s in steps)
    shown = server.http.get(f"/episodes/{ep['id']}").json()
    assert shown["calls"] == 5 and shown["status"] == "running"
    assert shown["episode"]["outcome"]["metadata"] == {"who": "test", "split": "train"}


def test_a_call_that_resends_the_reply_is_recorded_as_extending_the_previous(
    server: _Server, store: Any
) -> None:
    ep = server.open()
    client = _client(ep)
    first = client.chat.completions.create(model="m", messages=QUESTION, max_tokens=8, temperature=0)
    follow = [
        *QUESTION,
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And 1 + 2?"},
    ]
    client.chat.completions.create(model="m", messages=follow, max_tokens=8, temperature=0)
    client.completions.create(model="m", prompt="unrelated", max_tokens=4, temperature=0)  # a new context
    client.close()
    steps = _stored(store, ep["id"]).steps
    assert [s.metadata["extends_previous"] for s in steps] == [None, True, False]
    # what "extends" means, checked on the stored ids themselves
    before = steps[0].prompt_token_ids + steps[0].token_ids
    assert steps[1].prompt_token_ids[: len(before)] == before
    assert server.post(f"/episodes/{ep['id']}/finish").json()["drift"] == {
        "checked": 2,
        "extended": 1,
        "differed": 1,
    }
    assert _stored(store, ep["id"]).outcome["drift"] == {"checked": 2, "extended": 1, "differed": 1}


def test_rewards_are_named_and_closing_is_idempotent(server: _Server, store: Any) -> None:
    ep = server.open(task_id="t-close")
    eid = ep["id"]
    assert server.post(f"/episodes/{eid}/reward", {"reward": 1.0}).status_code == 200
    assert (
        server.post(f"/episodes/{eid}/reward", {"rewards": {"format": 0.5, "length": -0.25}}).status_code
        == 200
    )
    r = server.post(f"/episodes/{eid}/reward", {"name": "style", "value": 0.125})
    assert r.json()["rewards"] == {"reward": 1.0, "format": 0.5, "length": -0.25, "style": 0.125}
    assert r.json()["reward"] == pytest.approx(1.375)
    bad = server.post(f"/episodes/{eid}/reward", {"reward": 1, "value": 2})
    assert bad.status_code == 400 and "send one of" in bad.json()["error"]["message"]

    first = server.post(f"/episodes/{eid}/finish", {"answer": "46"})
    again = server.post(f"/episodes/{eid}/finish", {"answer": "46"})
    assert first.status_code == again.status_code == 200
    assert first.json()["status"] == again.json()["status"] == "finished"
    stored = _stored(store, eid)
    assert stored.status == "finished" and stored.reward == pytest.approx(1.375)
    assert stored.outcome["rewards"]["style"] == 0.125 and stored.outcome["answer"] == "46"

    late = server.post(f"/episodes/{eid}/abort", {"reason": "too late"})
    assert late.status_code == 404, late.text
    err = late.json()["error"]
    assert err["code"] == "episode_closed" and eid in err["message"] and "finished" in err["message"]
    assert _stored(store, eid).status == "finished"

    other = server.open()["id"]
    a1 = server.post(f"/episodes/{other}/abort", {"reason": "user gave up"})
    a2 = server.post(f"/episodes/{other}/abort")
    assert a1.status_code == a2.status_code == 200
    assert a1.json()["status"] == a2.json()["status"] == "aborted"
    stored = _stored(store, other)
    assert stored.status == "aborted" and stored.outcome["error"] == "user gave up" and not stored.examples
    refused = server.post(f"/episodes/{other}/reward", {"reward": 1})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "episode_closed"


def test_calls_outside_an_episode_are_served_and_record_nothing(server: _Server, store: Any) -> None:
    client = openai.OpenAI(base_url=f"{server.root}/v1", api_key="unused", max_retries=0)
    r = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=6, temperature=0)
    assert r.choices[0].message.content and r.choices[0].model_extra["token_ids"]
    assert client.completions.create(model="tiny", prompt="What is", max_tokens=4).choices[0].text is not None
    list(client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=4, stream=True))
    client.close()
    counts = store.counts()
    assert counts["episodes"] == counts["steps"] == counts["examples"] == 0


def test_unknown_and_closed_episodes_are_404s_naming_them(server: _Server, store: Any) -> None:
    missing = "no-such-episode-123"
    client = openai.OpenAI(base_url=f"{server.root}/episodes/{missing}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="m", messages=QUESTION, max_tokens=4)
    assert err.value.code == "episode_not_found" and missing in str(err.value.message)
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="m", prompt="x", max_tokens=4)
    assert err.value.code == "episode_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.list()
    for path in ("reward", "finish", "abort"):
        body = {"reward": 1} if path == "reward" else {}
        r = server.post(f"/episodes/{missing}/{path}", body)
        assert r.status_code == 404 and r.json()["error"]["code"] == "episode_not_found", (path, r.text)
        assert missing in r.json()["error"]["message"]
    assert server.http.get(f"/episodes/{missing}").status_code == 404
    client.close()

    ep = server.open()
    closed = _client(ep)
    closed.chat.completions.create(model="m", messages=QUESTION, max_tokens=4)
    assert server.post(f"/episodes/{ep['id']}/finish").status_code == 200
    # a late call on a finished episode is served and not recorded, like a call outside any episode
    late = closed.chat.completions.create(model="m", messages=QUESTION, max_tokens=4)
    assert late.choices[0].finish_reason in ("stop", "length")
    list(closed.chat.completions.create(model="m", messages=QUESTION, max_tokens=4, stream=True))
    closed.close()
    assert len(_stored(store, ep["id"]).steps) == 1  # the late calls recorded nothing

    ep = server.open()
    aborted = _client(ep)
    assert server.post(f"/episodes/{ep['id']}/abort").status_code == 200
    with pytest.raises(openai.NotFoundError) as err:
        aborted.chat.completions.create(model="m", messages=QUESTION, max_tokens=4)
    assert err.value.code == "episode_closed" and ep["id"] in str(err.value.message)
    with pytest.raises(openai.NotFoundError) as err:
        list(aborted.chat.completions.create(model="m", messages=QUESTION, max_tokens=4, stream=True))
    assert err.value.code == "episode_closed"
    aborted.close()
    assert not _stored(store, ep["id"]).steps  # the refused calls recorded nothing


def test_closed_episodes_the_hub_forgot_are_answered_from_the_store(engine: HFEngine, store: Any) -> None:
    """A server keeps a bounded number of closed episodes in memory; past that (or after a restart) the store
    says what happened to them."""
    s = _Server(create_app(engine, hub=CaptureHub(StoreSink(store), keep_closed=0)))
    try:
        eid = s.open()["id"]
        assert s.post(f"/episodes/{eid}/finish").json()["status"] == "finished"
        assert s.post(f"/episodes/{eid}/finish").json()["status"] == "finished"  # a retry, from the store
        call = s.post(f"/episodes/{eid}/v1/chat/completions", {"messages": QUESTION, "max_tokens": 2})
        assert call.status_code == 200, call.text  # finished: served, not recorded
        assert not _stored(store, eid).steps
        abort = s.post(f"/episodes/{eid}/abort")
        assert abort.status_code == 404 and abort.json()["error"]["code"] == "episode_closed"
    finally:
        s.stop()


def test_langchain_chat_openai_invoke_and_ainvoke_are_recorded(server: _Server, store: Any) -> None:
    pytest.importorskip("langchain_openai", reason="the langchain extra: pip install -e '.[langchain]'")
    from langchain_openai import ChatOpenAI

    ep = server.open(task_id="t-langchain")
    llm = ChatOpenAI(base_url=ep["base_url"], api_key="x", model="anything", max_tokens=8, temperature=0)
    reply = llm.invoke("What is 2 + 3?")
    areply = asyncio.run(llm.ainvoke([("system", "Be brief."), ("user", "What is 4 + 4?")]))
    steps = _stored(store, ep["id"]).steps
    assert len(steps) == 2
    for s in steps:
        _assert_trainable(s)
    assert steps[0].text == reply.content and steps[1].text == areply.content
    assert steps[0].metadata["messages"] == [{"role": "user", "content": "What is 2 + 3?"}]
    assert [m["role"] for m in steps[1].metadata["messages"]] == ["system", "user"]


def test_group_credit_waits_for_the_whole_group(server: _Server, store: Any) -> None:
    """Three episodes of one task, group_size 3, rewards 1, 0, 0: no example until the third closes, then
    advantages 2/3, -1/3, -1/3 on actions that are exactly the stored steps."""
    run = "run-group"
    eps = [server.open(task_id="t-group", run_id=run, group_size=3) for _ in range(3)]
    for i, ep in enumerate(eps):
        client = _client(ep)
        question = [{"role": "user", "content": f"What is {i} + 7?"}]
        client.chat.completions.create(model="m", messages=question, max_tokens=6, temperature=0.8, seed=i)
        client.close()
    for ep, reward in zip(eps, [1.0, 0.0, 0.0], strict=True):
        assert server.post(f"/episodes/{ep['id']}/reward", {"reward": reward}).status_code == 200
    server.post(f"/episodes/{eps[0]['id']}/finish")
    server.post(f"/episodes/{eps[1]['id']}/finish")
    assert store.count_examples(run_ids=[run]) == 0, "credited before the group was complete"
    server.post(f"/episodes/{eps[2]['id']}/finish")

    advantages = {}
    for ep in eps:
        stored = _stored(store, ep["id"])
        [step] = stored.steps
        [ex] = stored.examples
        assert ex.kind == ExampleKind.ADVANTAGE and ex.task_id == "t-group" and ex.split == "train"
        assert ex.payload["prompt_ids"] == step.prompt_token_ids
        assert ex.payload["completion_ids"] == step.token_ids
        assert ex.payload["logprobs"] == pytest.approx(step.logprobs)
        assert ex.payload["temperature"] == pytest.approx(0.8)
        assert ex.payload["model_version"] == "tiny"
        advantages[ep["id"]] = ex.payload["advantage"]
    assert [advantages[ep["id"]] for ep in eps] == pytest.approx([2 / 3, -1 / 3, -1 / 3])
    assert store.count_examples(kind=ExampleKind.ADVANTAGE, run_ids=[run]) == 3

    # the same task again makes a new group of three, credited on its own once it is complete
    again = [server.open(task_id="t-group", run_id=run, group_size=3) for _ in range(3)]
    for i, (ep, reward) in enumerate(zip(again, [0.0, 0.0, 1.0], strict=True)):
        client = _client(ep)
        question = [{"role": "user", "content": f"What is {i} + 8?"}]
        client.chat.completions.create(model="m", messages=question, max_tokens=6, temperature=0.8, seed=i)
        client.close()
        server.post(f"/episodes/{ep['id']}/reward", {"reward": reward})
        server.post(f"/episodes/{ep['id']}/finish")
        assert store.count_examples(run_ids=[run]) == (3 if i < 2 else 6)
    second = [_stored(store, ep["id"]).examples[0].payload["advantage"] for ep in again]
    assert second == pytest.approx([-1 / 3, -1 / 3, 2 / 3])


@pytest.mark.slow
def test_64_concurrent_episodes_stay_isolated(server: _Server, store: Any, engine: HFEngine) -> None:
    """Each episode's steps hold only its own conversation, and the ids its own client was sent."""

    async def agent(i: int) -> tuple[str, str, list[list[int]]]:
        async with httpx.AsyncClient(base_url=server.root, timeout=120) as http:
            ep = (await http.post("/episodes", json={"task_id": f"t-{i}"})).json()
        client = _aclient(ep)
        question = f"What is {i} + {100 + i}?"
        messages: list[dict[str, str]] = [{"role": "user", "content": question}]
        sent: list[list[int]] = []
        for _ in range(2):
            r = await client.chat.completions.create(
                model="m", messages=messages, max_tokens=4, temperature=1.0
            )
            sent.append(r.choices[0].model_extra["token_ids"])
            messages += [
                {"role": "assistant", "content": r.choices[0].message.content},
                {"role": "user", "content": f"Again: {question}"},
            ]
        await client.close()
        return ep["id"], question, sent

    async def all_agents() -> list[tuple[str, str, list[list[int]]]]:
        return await asyncio.gather(*(agent(i) for i in range(64)))

    results = asyncio.run(all_agents())
    assert len({eid for eid, _, _ in results}) == 64
    for eid, question, sent in results:
        steps = _stored(store, eid).steps
        assert [s.token_ids for s in steps] == sent, f"episode {eid} holds another client's ids"
        for s in steps:
            said = [m["content"] for m in s.metadata["messages"] if m["role"] == "user"]
            assert all(question in text for text in said), (eid, question, said)
            assert question in engine.tokenizer.decode(s.prompt_token_ids)


def test_capture_on_postgresql_end_to_end(engine: HFEngine, pg_url: str) -> None:
    """The whole path once on PostgreSQL: calls stored as steps, a group credited, examples on its episodes."""
    from strop.memory import Store

    pg = Store(pg_url)
    s = _Server(create_app(engine, hub=CaptureHub(StoreSink(pg))))
    try:
        ids = []
        for reward in (1.0, 0.0):
            ep = s.open(task_id="t", group_size=2)
            client = _client(ep)
            client.chat.completions.create(model="m", messages=QUESTION, max_tokens=4, temperature=0.8)
            client.close()
            assert s.post(f"/episodes/{ep['id']}/reward", {"reward": reward}).status_code == 200
            assert s.post(f"/episodes/{ep['id']}/finish").status_code == 200
            ids.append(ep["id"])
        stored = [_stored(pg, i) for i in ids]
        assert all(len(e.steps) == 1 and e.steps[0].token_ids and e.status == "finished" for e in stored)
        advantages = sorted(x.payload["advantage"] for e in stored for x in e.examples)
        assert advantages == [-0.5, 0.5]
    finally:
        s.stop()
        pg.close()
