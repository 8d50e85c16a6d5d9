"""The capture writer (group commit for captured episodes), on SQLite and PostgreSQL: writes of many episodes
share transactions, an awaited close comes after every write queued before it, a write-behind that fails keeps
its episode from ever finishing while its neighbours are written, and `sync` shows what is queued."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from strop.agents.capture.hub import CaptureHub, StoreSink
from strop.agents.capture.writer import CaptureWriter, sync_all
from strop.memory.captures import AppendOp, CloseOp, OpenOp, UpdateOp
from strop.memory.errors import StoreError
from strop.memory.records import EpisodeRecord, EpisodeStatus, RunRecord, StepRecord


def _episode(run_id: str, i: int) -> EpisodeRecord:
    return EpisodeRecord(run_id=run_id, task_id=f"t{i}", loop="capture", status=EpisodeStatus.RUNNING)


def _step(i: int) -> StepRecord:
    return StepRecord(
        index=i, model_version="m", text="x", prompt_token_ids=[1], token_ids=[2], logprobs=[-1.0]
    )


async def test_writes_of_many_episodes_share_transactions_and_a_close_follows_its_steps(store: Any) -> None:
    run = store.create_run(RunRecord(loop="capture"))
    writer = CaptureWriter(store.captures)
    eps = [_episode(run.id, i) for i in range(32)]
    for ep in eps:
        await writer.behind(OpenOp(ep))
    for k in range(3):
        for ep in eps:
            await writer.behind(AppendOp(ep.id, [_step(k)]))
    closes = [writer.write(CloseOp(ep.id, EpisodeStatus.FINISHED, reward=1.0)) for ep in eps]
    assert await asyncio.gather(*closes) == [True] * 32
    for ep in eps:  # an awaited close means every write queued before it is stored
        stored = store.get_episode(ep.id)
        assert stored.status == "finished" and [s.index for s in stored.steps] == [0, 1, 2]
    assert writer.writes == 32 * 5 and writer.transactions <= 8, writer.transactions
    writer.close()


async def test_a_failed_write_behind_keeps_its_episode_from_finishing(store: Any) -> None:
    run = store.create_run(RunRecord(loop="capture"))
    writer = CaptureWriter(store.captures)
    good, owner, clash = _episode(run.id, 0), _episode(run.id, 1), _episode(run.id, 2)
    for ep in (good, owner, clash):
        await writer.behind(OpenOp(ep))
    await writer.behind(AppendOp(good.id, [_step(0)]))
    await writer.behind(AppendOp(owner.id, [_step(1), _step(1).model_copy(update={"id": "taken"})]))
    await writer.behind(AppendOp(clash.id, [_step(2).model_copy(update={"id": "taken"})]))  # another's id
    # the batch failed as a whole; each write was then applied alone, so the neighbours are stored
    assert await writer.write(CloseOp(good.id, EpisodeStatus.FINISHED)) is True
    assert len(store.get_episode(good.id).steps) == 1 and len(store.get_episode(owner.id).steps) == 2
    with pytest.raises(StoreError, match=f"episode {clash.id} lost a write"):
        await writer.write(CloseOp(clash.id, EpisodeStatus.FINISHED))
    assert store.captures.episode_status(clash.id) == EpisodeStatus.RUNNING  # never finished, never trained
    assert await writer.write(CloseOp(clash.id, EpisodeStatus.ABORTED)) is True  # giving it up still works
    writer.close()


async def test_sync_and_max_behind_show_what_is_queued(store: Any) -> None:
    run = store.create_run(RunRecord(loop="capture"))
    lingering = CaptureWriter(store.captures, linger_s=5.0)
    ep = _episode(run.id, 0)
    await lingering.behind(OpenOp(ep))
    await lingering.behind(UpdateOp(ep.id, reward=0.5))
    await asyncio.sleep(0.05)
    assert store.captures.episode_status(ep.id) is None  # still lingering for company
    await asyncio.to_thread(sync_all)  # a marker that someone awaits ends the wait at once
    assert store.get_episode(ep.id).reward == 0.5
    lingering.close()

    bounded = CaptureWriter(store.captures, linger_s=5.0, max_behind=0)
    second = _episode(run.id, 1)
    await bounded.behind(OpenOp(second))  # over max_behind: committed at once and awaited
    assert store.captures.episode_status(second.id) == EpisodeStatus.RUNNING
    bounded.close()


async def test_store_sink_finish_returns_after_every_step_is_stored(store: Any) -> None:
    from strop.agents.capture.episodes import CapturedCall, ChoiceRecord

    sink = StoreSink(store)
    hub = CaptureHub(sink)
    choice = ChoiceRecord(
        text="x",
        prompt_token_ids=[1],
        token_ids=[2],
        logprobs=[-1.0],
        finish_reason="stop",
        model_version="m",
    )
    eps = await asyncio.gather(*(hub.open(task_id=f"t{i}") for i in range(16)))
    for _ in range(2):
        for ep in eps:
            await hub.record(ep.id, CapturedCall(index=ep.reserve_call(), choices=[choice]))
    await asyncio.gather(*(hub.reward(ep.id, {"r": 1.0}) for ep in eps))
    await asyncio.gather(*(hub.finish(ep.id) for ep in eps))
    for ep in eps:
        stored = store.get_episode(ep.id)
        assert (
            stored.status == "finished" and len(stored.steps) == 2 and len(stored.examples) == 2
        )  # a pg action per call
    await hub.flush()
    sink.close()


async def test_an_idle_writer_stops_its_thread_and_starts_again(store: Any, monkeypatch: Any) -> None:
    from strop.agents.capture import writer as writer_module

    monkeypatch.setattr(writer_module, "_IDLE_S", 0.05)
    run = store.create_run(RunRecord(loop="capture"))
    writer = CaptureWriter(store.captures)
    first, second = _episode(run.id, 0), _episode(run.id, 1)
    assert await writer.write(OpenOp(first)) is True
    await asyncio.sleep(0.3)
    assert writer._thread is None  # an AgentRun never closes its sink: no thread is left behind
    assert await writer.write(OpenOp(second)) is True
    writer.close()
