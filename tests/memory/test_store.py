"""Store API on both backends: round trips, idempotency, guards, queries, registry, async twins."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from sqlalchemy import select

from strop.memory import HeldoutLeakError, InvalidTransitionError, NotFoundError, Store, StoreError
from strop.memory.records import (
    EpisodeRecord,
    ExampleKind,
    ModelStatus,
    ModelVersionRecord,
    RunRecord,
    RunStatus,
)
from strop.memory.schema import Step
from tests.memory.factories import make_episode


@pytest.fixture
def run(store: Store) -> RunRecord:
    return store.create_run(RunRecord(loop="best_of_n", config={"n": 8}, model_ids=["m0"], host="h1"))


def test_episode_round_trip_keeps_every_field(store: Store, run: RunRecord) -> None:
    ep = make_episode(run.id, n_tokens=100, examples=2)
    assert store.write_episode(ep) is True
    got = store.get_episode(ep.id)
    assert got is not None
    assert (got.run_id, got.task_id, got.loop, got.reward, got.outcome) == (
        ep.run_id,
        ep.task_id,
        ep.loop,
        ep.reward,
        ep.outcome,
    )
    for mine, theirs in zip(ep.steps, got.steps, strict=True):
        assert theirs.token_ids == mine.token_ids
        assert theirs.prompt_token_ids == mine.prompt_token_ids
        # float32 storage: exact to float32, which is what engines produce anyway
        assert theirs.logprobs == np.asarray(mine.logprobs, dtype=np.float32).tolist()
        assert theirs.model_dump(exclude={"logprobs"}) == mine.model_dump(exclude={"logprobs"})
    assert got.steps[2].parent_id == got.steps[1].id
    assert [c.model_dump(exclude={"episode_id"}) for c in got.critiques] == [
        c.model_dump(exclude={"episode_id"}) for c in ep.critiques
    ]
    assert got.critiques[0].episode_id == ep.id
    assert sorted(x.id for x in got.examples) == sorted(x.id for x in ep.examples)
    assert {x.episode_id for x in got.examples} == {ep.id}


def test_token_arrays_are_stored_as_compact_binary(store: Store, run: RunRecord) -> None:
    ep = make_episode(run.id, n_steps=1, n_tokens=100)
    store.write_episode(ep)
    with store.db.read() as conn:
        row = conn.execute(select(Step.token_ids, Step.logprobs).where(Step.id == ep.steps[0].id)).one()
    assert isinstance(row.token_ids, bytes) and len(row.token_ids) == 400
    assert len(row.logprobs) == 400


def test_rewriting_an_episode_is_a_no_op(store: Store, run: RunRecord) -> None:
    ep = make_episode(run.id)
    assert store.write_episode(ep) is True
    changed = ep.model_copy(update={"reward": -1.0, "steps": ep.steps[:1]})
    assert store.write_episode(changed) is False
    assert store.get_episode(ep.id).reward == 1.0  # the first write stands
    assert store.counts()["steps"] == 4


def test_concurrent_duplicate_writes_store_one_episode(store: Store, run: RunRecord) -> None:
    ep = make_episode(run.id)
    results: list[bool] = []
    barrier = threading.Barrier(6)

    def write() -> None:
        barrier.wait()
        results.append(store.write_episode(ep))

    threads = [threading.Thread(target=write) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 5 + [True]
    assert store.counts()["episodes"] == 1 and store.counts()["steps"] == 4


def test_batch_write_skips_stored_episodes(store: Store, run: RunRecord) -> None:
    eps = [make_episode(run.id, seed=i) for i in range(5)]
    assert store.write_episode(eps[0])
    assert store.write_episodes(eps) == 4
    assert store.episode_ids(run.id) == {e.id for e in eps}


def test_heldout_examples_are_refused(store: Store, run: RunRecord) -> None:
    ep = make_episode(run.id, split="heldout")
    with pytest.raises(HeldoutLeakError, match="held-out"):
        store.write_episode(ep)
    assert not store.has_episode(ep.id)
    assert store.counts()["examples"] == 0


def test_episode_of_unknown_run_names_create_run(store: Store) -> None:
    with pytest.raises(NotFoundError, match="create_run"):
        store.write_episode(make_episode("no-such-run"))


def test_queries(store: Store, run: RunRecord) -> None:
    other = store.create_run(RunRecord(loop="scrit"))
    assert store.create_run(RunRecord(id=other.id, loop="ignored")).loop == "scrit"  # idempotent
    eps = [make_episode(run.id, seed=i, verdict="correct" if i % 2 else "incorrect") for i in range(4)]
    eps.append(make_episode(other.id, seed=9, kind=ExampleKind.PAIR))
    for ep in eps:
        store.write_episode(ep)
    assert len(store.list_episodes(run.id)) == 4
    assert len(store.list_episodes(limit=2, children=False)) == 2
    assert store.list_episodes(run.id, children=False)[0].steps == []
    assert len(store.list_critiques(verdict="correct")) == 2
    assert len(store.list_critiques(episode_id=eps[0].id)) == 1
    assert len(store.list_critiques(run_id=other.id)) == 1
    assert len(store.list_examples(kind="sft")) == 4
    assert len(store.list_examples(kind="pair", role="policy")) == 1
    assert len(store.list_examples(run_id=other.id)) == 1
    assert {r.id for r in store.list_runs()} == {run.id, other.id}
    store.finish_run(run.id, RunStatus.FINISHED)
    finished = store.get_run(run.id)
    assert finished.status == RunStatus.FINISHED and finished.finished_at is not None
    assert finished.config == {"n": 8} and finished.model_ids == ["m0"]
    with pytest.raises(NotFoundError):
        store.finish_run("nope")


def test_registry(store: Store) -> None:
    base = store.register_model(
        ModelVersionRecord(name="tiny", lineage="tiny", path="/m/tiny", status="base")
    )
    assert store.register_model(base.model_copy(update={"path": "/other"})).path == "/m/tiny"
    assert store.current_model("tiny").id == base.id
    cand = store.register_model(
        ModelVersionRecord(
            name="tiny-c1", lineage="tiny", path="/m/tiny", adapter_path="/a/c1", parent_id=base.id
        )
    )
    assert store.get_model("tiny-c1").id == cand.id
    assert store.current_model("tiny").id == base.id  # a candidate is not live
    promoted = store.set_model_status(cand.id, ModelStatus.PROMOTED)
    assert promoted.promoted_at is not None
    assert store.current_model("tiny").id == cand.id
    with pytest.raises(InvalidTransitionError, match="candidate"):
        store.set_model_status(cand.id, ModelStatus.CANDIDATE)
    store.update_model_metrics(cand.id, {"heldout_accuracy": 0.3})
    assert store.update_model_metrics(cand.id, {"n": 100}).metrics == {"heldout_accuracy": 0.3, "n": 100}
    assert [m.id for m in store.list_models("tiny")] == [base.id, cand.id]
    store.set_model_status(cand.id, ModelStatus.REJECTED)  # rollback
    assert store.current_model("tiny").id == base.id
    with pytest.raises(NotFoundError, match="parent"):
        store.register_model(ModelVersionRecord(name="x", lineage="tiny", path="/x", parent_id="missing"))
    assert store.current_model("unknown") is None


async def test_async_twins_do_not_block_the_event_loop(store: Store, run: RunRecord) -> None:
    eps = [make_episode(run.id, seed=i, n_tokens=100) for i in range(150)]
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    tick_task = asyncio.create_task(ticker())
    written = await asyncio.gather(*(store.awrite_episode(ep) for ep in eps))
    done.set()
    await tick_task
    assert all(written)
    assert ticks >= 3, "the event loop was blocked while episodes were written"
    got = await store.aget_episode(eps[0].id)
    assert isinstance(got, EpisodeRecord) and len(got.steps) == 4
    assert await store.acount_examples() == 150


async def test_concurrent_async_writes_share_transactions(store: Store, run: RunRecord) -> None:
    eps = [make_episode(run.id, seed=i) for i in range(120)]
    first = await asyncio.gather(*(store.awrite_episode(ep) for ep in eps))
    assert all(first)
    assert store.episodes._committer is not None and store.episodes._committer.transactions < len(eps)
    # retries, including the same id twice at once, store nothing new
    again = await asyncio.gather(*(store.awrite_episode(ep) for ep in eps[:10] + eps[:10]))
    assert not any(again)
    fresh = make_episode(run.id, seed=999)
    twice = await asyncio.gather(store.awrite_episode(fresh), store.awrite_episode(fresh))
    assert sorted(twice) == [False, True]
    assert store.counts()["episodes"] == 121 and store.counts()["steps"] == 4 * 121


async def test_one_bad_episode_fails_alone_in_a_group(store: Store, run: RunRecord) -> None:
    good = [make_episode(run.id, seed=i) for i in range(20)]
    bad = make_episode(run.id, seed=100, split="heldout")
    results = await asyncio.gather(*(store.awrite_episode(ep) for ep in [*good, bad]), return_exceptions=True)
    assert results[:-1] == [True] * 20
    assert isinstance(results[-1], HeldoutLeakError)
    assert not store.has_episode(bad.id) and store.counts()["episodes"] == 20


def test_reused_step_id_is_named_not_swallowed(store: Store, run: RunRecord) -> None:
    first = make_episode(run.id, seed=1)
    store.write_episode(first)
    clash = make_episode(run.id, seed=2)
    clash.steps[0].id = first.steps[0].id
    with pytest.raises(StoreError, match="ids must be unique"):
        store.write_episode(clash)
    assert not store.has_episode(clash.id)
