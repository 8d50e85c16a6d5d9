"""`AgentRun`, the Python side of capture: in-process over the real tiny model (a uvicorn server in this event
loop) into the real store on SQLite and PostgreSQL, and remote against `strop serve`'s app in a thread.

What is checked is what a user relies on: every call of an episode stored with its token ids, rewards kept,
group credit written only after the group's last episode closed, what goes wrong (a raise, a hang, a model
never called, a broken reward) kept as a failed episode with its error and no examples, 64 concurrent rollouts
that never see each other's calls, and no server left running after `close()`.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from strop.agents.capture import AgentRun, AgentRunError, CaptureHub, StoreSink
from strop.agents.engines.hf import HFEngine
from strop.agents.server import create_app
from strop.memory.records import ExampleKind
from strop.sandbox.tasks import ArithmeticTaskSet, Split, Task
from tests.servers import ThreadServer

TS = ArithmeticTaskSet()


async def ask(task: Task, client: Any, **kw: Any) -> str:
    r = await client.chat.completions.create(
        model="gpt-4o-mini",  # a user's hard-coded name: an episode serves any
        messages=[{"role": "user", "content": task.prompt}],
        max_tokens=kw.pop("max_tokens", 16),
        temperature=kw.pop("temperature", 1.0),
        **kw,
    )
    return r.choices[0].message.content or ""


@pytest.fixture
async def engine(tiny_model_path: Path) -> Any:
    e = HFEngine(tiny_model_path, model_version="tiny")
    yield e
    await e.close()


async def test_local_run_stores_each_call_and_credits_the_group_after_its_last_close(
    engine: HFEngine, store: Any
) -> None:
    task = TS.tasks(Split.TRAIN, 1)[0]
    async with AgentRun(engine, store=store, run_id="capture-run") as run:
        a = await run.episode(task, group_size=2)
        b = await run.episode(task, group_size=2)
        assert a.base_url == f"{run.root}/episodes/{a.id}/v1"
        for ep in (a, b):
            await ask(task, ep.client())
        await a.reward(1.0)
        await a.finish("#### 1")
        first = store.get_episode(a.id)
        assert first.status == "finished" and first.reward == 1.0 and first.run_id == "capture-run"
        assert len(first.steps) == 1 and first.examples == []  # its group is not complete yet
        step = first.steps[0]
        assert step.prompt_token_ids and step.token_ids and len(step.logprobs or []) == len(step.token_ids)
        await b.reward({"correct": 0.0, "format": 0.5})  # named rewards: the episode's is their sum
        await b.finish()
    stored = {i: store.get_episode(i) for i in (a.id, b.id)}
    assert stored[b.id].reward == 0.5
    for eid, advantage in ((a.id, 0.25), (b.id, -0.25)):
        [ex] = stored[eid].examples
        assert ex.kind == ExampleKind.ADVANTAGE and ex.payload["advantage"] == advantage
        assert ex.payload["prompt_ids"] == stored[eid].steps[0].prompt_token_ids
        assert ex.payload["completion_ids"] == stored[eid].steps[0].token_ids


async def test_rollouts_keep_what_goes_wrong_as_failed_episodes_without_examples(
    engine: HFEngine, sqlite_url: str
) -> None:
    from strop.memory import Store

    async def raises(task: Task, client: Any) -> str:
        await ask(task, client)
        raise KeyError("no such tool")

    async def hangs(task: Task, client: Any) -> str:
        await asyncio.sleep(30)
        return ""

    async def silent(task: Task, client: Any) -> str:
        return "#### 3"

    async def tool_timeout(task: Task, client: Any) -> str:
        await ask(task, client)
        raise TimeoutError("the search tool timed out")  # the agent's own error, not the run's deadline

    def broken_reward(task: Task, answer: str) -> float:
        raise ZeroDivisionError("reward")

    store = Store(sqlite_url)
    tasks = TS.tasks(Split.TRAIN, 2)
    async with AgentRun(engine, store=store) as run:
        failed = {
            "raises": await run.rollouts(raises, tasks, n=2, reward=TS),
            "hangs": await run.rollouts(hangs, tasks, n=2, timeout_s=0.3, reward=TS),
            "silent": await run.rollouts(silent, tasks, n=2, reward=TS),
            "tool_timeout": await run.rollouts(tool_timeout, tasks, n=2, timeout_s=30, reward=TS),
            "reward": await run.rollouts(ask, tasks, n=2, reward=broken_reward),
        }
        ok = await run.rollouts(ask, tasks, n=2, reward=lambda task, answer: len(answer) % 2)
    errors = {
        "raises": "KeyError: 'no such tool'",
        "hangs": "timed out after 0.3 s",
        "silent": "the agent never called the model (call it through the client it was given)",
        "tool_timeout": "TimeoutError: the search tool timed out",
        "reward": "the reward failed: ZeroDivisionError: reward",
    }
    for name, groups in failed.items():
        for group in groups:
            assert group.statuses == ["failed", "failed"]
            for r in group.rollouts:
                assert r.error == errors[name]
                stored = store.get_episode(r.episode_id)
                assert stored.status == "failed" and stored.outcome["error"] == errors[name]
                assert stored.examples == []
    assert [len(store.get_episode(r.episode_id).steps) for r in failed["raises"][0].rollouts] == [1, 1]
    for group in ok:
        assert group.statuses == ["finished", "finished"]
        assert group.rewards == [len(a or "") % 2 for a in group.answers]
    store.close()


async def test_an_episode_used_as_a_context_manager_fails_with_the_error_and_reraises(
    engine: HFEngine,
) -> None:
    task = TS.tasks(Split.TRAIN, 1)[0]
    async with AgentRun(engine) as run:
        with pytest.raises(RuntimeError, match="tool down"):
            async with await run.episode(task) as ep:
                await ask(task, ep.client())
                raise RuntimeError("tool down")
        assert ep.status == "failed" and ep.captured is not None
        assert ep.captured.error == "RuntimeError: tool down" and len(ep.captured.calls) == 1
        async with await run.episode(task) as done:
            await ask(task, done.client())
        assert done.status == "finished"
        with pytest.raises(openai.NotFoundError, match=ep.id):  # a failed episode takes no more calls
            await ask(task, ep.client())
        await ask(task, done.client())  # a late call on a finished one is served, not recorded
        assert done.captured is not None and len(done.captured.calls) == 1
        with pytest.raises(AgentRunError, match="404"):
            await run.request("POST", "/episodes/nope/finish", {})


async def test_64_concurrent_rollouts_each_see_only_their_own_calls(engine: HFEngine) -> None:
    async def marked(task: Task, client: Any) -> str:
        mark = uuid.uuid4().hex[:8]
        for turn in range(2):
            await client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": f"[{mark}:{turn}] {task.prompt}"}],
                max_tokens=4,
            )
        return mark

    async with AgentRun(engine) as run:
        groups = await run.rollouts(marked, TS.tasks(Split.TRAIN, 16), n=4, concurrency=64)
    rollouts = [r for g in groups for r in g.rollouts]
    assert len(rollouts) == 64 and len({r.answer for r in rollouts}) == 64
    for r in rollouts:
        assert r.status == "finished" and r.captured is not None
        calls = sorted(r.captured.calls, key=lambda c: c.index)
        assert [c.index for c in calls] == [0, 1]
        assert [c.messages[0]["content"].split("]")[0] for c in calls] == [f"[{r.answer}:0", f"[{r.answer}:1"]
        assert r.captured.task_id == r.task_id


async def test_close_aborts_open_episodes_and_stops_the_server(engine: HFEngine) -> None:
    run = AgentRun(engine)
    ep = await run.episode(TS.tasks(Split.TRAIN, 1)[0])
    root = run.root
    await run.close()
    assert ep.captured is not None and ep.captured.status == "aborted"
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as c:
            await c.get(f"{root}/v1/models")
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("strop-agent-run")]
    with pytest.raises(AgentRunError, match="closed"):
        await run.episode()


def test_a_run_needs_one_engine_or_one_server() -> None:
    with pytest.raises(ValueError, match="needs an engine"):
        AgentRun()
    with pytest.raises(ValueError, match="not both"):
        AgentRun(object(), base_url="http://localhost:1")
    with pytest.raises(ValueError, match="strop serve MODEL --db"):
        AgentRun(base_url="http://localhost:1", store=object())


async def test_chat_model_is_langchains_chat_openai_bound_to_the_episode(
    engine: HFEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("langchain_openai")
    task = TS.tasks(Split.TRAIN, 1)[0]
    async with AgentRun(engine) as run, await run.episode(task) as ep:
        reply = await ep.chat_model(max_tokens=8, temperature=1.0).ainvoke(task.prompt)
        assert isinstance(reply.content, str)
        assert ep.captured is not None and len(ep.captured.calls) == 1
        monkeypatch.setitem(sys.modules, "langchain_openai", None)
        with pytest.raises(ImportError, match=r"pip install 'strop\[langchain\]'"):
            ep.chat_model()


# --- remote ------------------------------------------------------------------------------------------------


_Server = ThreadServer


@pytest.fixture
def remote(tiny_model_path: Path, store: Any) -> Iterator[_Server]:
    engine = HFEngine(tiny_model_path, model_version="tiny")
    s = _Server(create_app(engine, hub=CaptureHub(StoreSink(store), run_id="served"), owns_engine=True))
    yield s
    s.stop()


async def test_remote_run_against_strop_serve_records_in_the_servers_store(
    remote: _Server, store: Any
) -> None:
    async def crashes(task: Task, client: Any) -> str:
        await ask(task, client)
        raise OSError("disk full")

    tasks = TS.tasks(Split.TRAIN, 2)
    async with AgentRun(base_url=remote.url) as run:  # '/v1' or not, the root is the server's
        assert run.root == remote.url.removesuffix("/v1") and run.hub is None
        good = await run.rollouts(ask, tasks, n=2, reward=TS, seed=1)
        bad = await run.rollouts(crashes, tasks[:1], n=1, reward=TS)
        ep = await run.episode(task_id="adhoc", metadata={"who": "me"})
        await ask(tasks[0], ep.client())
        assert await ep.calls() == 1 and ep.captured is None
        summary = await ep.summary()
        assert summary["calls"] == 1 and summary["episode"]["steps"][0]["token_ids"]
        await ep.abort("changed my mind")
    for group in good:
        assert group.statuses == ["finished", "finished"]
        for r in group.rollouts:
            stored = store.get_episode(r.episode_id)
            assert stored.run_id == "served" and stored.reward == r.reward and len(stored.steps) == 1
            assert stored.steps[0].token_ids and stored.outcome["answer"] == r.answer
    [crash] = bad[0].rollouts
    assert crash.error == "OSError: disk full" and store.get_episode(crash.episode_id).status == "failed"
    assert store.get_episode(ep.id).status == "aborted"


async def test_a_group_is_credited_only_once_every_close_is_written() -> None:
    """A member closed in memory whose close is still being written must not get examples yet: the store
    refuses examples for a row that is still running (seen as a 500 on /finish under load)."""
    from strop.agents.capture.episodes import CapturedCall, ChoiceRecord

    events: list[str] = []

    class SlowSink:
        async def opened(self, episode: Any) -> None: ...
        async def called(self, episode: Any, steps: Any) -> None: ...
        async def rewarded(self, episode: Any) -> None: ...
        async def status(self, episode_id: str) -> None: ...

        async def closed(self, episode: Any) -> None:
            await asyncio.sleep(0.2 if episode.answer == "slow" else 0.0)
            events.append(f"closed {episode.answer}")

        async def credited(self, examples: dict[str, Any]) -> None:
            events.append(f"credited {len(examples)}")

    hub = CaptureHub(SlowSink())
    a = await hub.open(task_id="t", group_size=2)
    b = await hub.open(task_id="t", group_size=2)
    choice = ChoiceRecord(
        text="x",
        prompt_token_ids=[1],
        token_ids=[2],
        logprobs=[-1.0],
        finish_reason="stop",
        model_version="m",
    )
    for ep, reward in ((a, 1.0), (b, 0.0)):
        await hub.record(ep.id, CapturedCall(index=ep.reserve_call(), choices=[choice]))
        await hub.reward(ep.id, {"r": reward})
    await asyncio.gather(hub.finish(a.id, answer="slow"), hub.finish(b.id, answer="fast"))
    assert events == ["closed fast", "closed slow", "credited 2"]
