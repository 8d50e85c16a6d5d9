"""Open (running) episodes on both backends: open, append, rewards, close; guards, idempotent retries, the
closers' race, and running or aborted episodes never counted as done work."""

from __future__ import annotations

import asyncio
import threading

import pytest

from strop.memory import (
    EpisodeClosedError,
    EpisodeStateError,
    HeldoutLeakError,
    NotFoundError,
    Store,
)
from strop.memory.captures import AppendOp, CloseOp, ExamplesOp, OpenOp, UpdateOp
from strop.memory.records import (
    EPISODE_TRANSITIONS,
    EpisodeRecord,
    EpisodeStatus,
    ExampleKind,
    ExampleRecord,
    RunRecord,
    StepRecord,
)
from tests.memory.factories import make_episode, sft_payload

RUNNING = EpisodeStatus.RUNNING


@pytest.fixture
def run(store: Store) -> RunRecord:
    return store.create_run(RunRecord(loop="capture"))


def opened(store: Store, run: RunRecord, task_id: str = "t1") -> EpisodeRecord:
    ep = EpisodeRecord(run_id=run.id, task_id=task_id, loop="capture", status=RUNNING, outcome={"n": 0})
    assert store.captures.open_episode(ep) is True
    return ep


def call(i: int) -> StepRecord:
    """One captured model call: prompt ids as tokenized, sampled ids and their log-probs."""
    return StepRecord(
        index=i,
        model_version="m0",
        text=f"call {i}",
        prompt_token_ids=[1, 2, 3 + i],
        token_ids=[10 + i, 11 + i],
        logprobs=[-0.5, -0.25],
    )


def test_open_append_reward_close(store: Store, run: RunRecord) -> None:
    caps = store.captures
    ep = opened(store, run)
    assert caps.open_episode(ep) is False  # a retried open changes nothing
    assert caps.episode_status(ep.id) == RUNNING
    first = [call(0), call(1)]
    assert caps.append_steps(ep.id, first) == 2
    assert caps.append_steps(ep.id, first) == 0  # retry: skipped
    assert caps.append_steps(ep.id, [first[1], call(2)]) == 1
    assert caps.append_steps(ep.id, []) == 0
    # Readable while it runs, with its steps so far.
    got = store.get_episode(ep.id)
    assert got is not None and got.status == RUNNING
    assert [s.token_ids for s in got.steps] == [[10, 11], [11, 12], [12, 13]]
    assert [e.id for e in caps.list_open(run.id)] == [ep.id] and caps.list_open("other") == []

    after = caps.update_episode(ep.id, reward=0.5, outcome={"tool_calls": 1})
    assert (after.reward, after.outcome, after.status) == (0.5, {"n": 0, "tool_calls": 1}, RUNNING)
    assert caps.close_episode(ep.id, EpisodeStatus.FINISHED, outcome={"n": 3}) is True
    assert caps.close_episode(ep.id, "finished", reward=9.0) is False  # idempotent, and changes nothing
    got = store.get_episode(ep.id)
    assert got is not None
    assert (got.status, got.reward, got.outcome) == (EpisodeStatus.FINISHED, 0.5, {"n": 3, "tool_calls": 1})
    assert [s.token_ids for s in got.steps] == [[10, 11], [11, 12], [12, 13]]
    assert caps.list_open() == []
    # A reward that arrives after the finish is still taken.
    assert caps.update_episode(ep.id, reward=1.0).reward == 1.0


def test_closed_episode_refuses_steps_and_other_closings(store: Store, run: RunRecord) -> None:
    caps = store.captures
    ep = opened(store, run)
    caps.close_episode(ep.id, EpisodeStatus.FINISHED)
    with pytest.raises(EpisodeClosedError, match=f"episode {ep.id} is finished"):
        caps.append_steps(ep.id, [call(0)])
    with pytest.raises(EpisodeClosedError, match="already finished; cannot abort it"):
        caps.close_episode(ep.id, EpisodeStatus.ABORTED)
    with pytest.raises(ValueError, match="closed status"):
        caps.close_episode(ep.id, RUNNING)

    aborted = opened(store, run, "t2")
    assert caps.close_episode(aborted.id, EpisodeStatus.ABORTED, reward=0.0) is True
    with pytest.raises(EpisodeClosedError, match="aborted"):
        caps.update_episode(aborted.id, reward=1.0)
    with pytest.raises(EpisodeClosedError, match="already aborted; cannot finish it"):
        caps.close_episode(aborted.id, EpisodeStatus.FINISHED)
    assert caps.episode_status(aborted.id) == EpisodeStatus.ABORTED
    assert all(not EPISODE_TRANSITIONS[s] for s in EpisodeStatus if s != RUNNING)


def test_unknown_ids_and_bad_opens(store: Store, run: RunRecord) -> None:
    caps = store.captures
    for fn in (
        lambda: caps.append_steps("nope", [call(0)]),
        lambda: caps.update_episode("nope", reward=1.0),
        lambda: caps.close_episode("nope", EpisodeStatus.FINISHED),
        lambda: caps.add_examples("nope", []),
    ):
        with pytest.raises(NotFoundError, match="nope"):
            fn()
    assert caps.episode_status("nope") is None
    with pytest.raises(NotFoundError, match="create_run"):
        caps.open_episode(EpisodeRecord(run_id="no-run", task_id="t", loop="capture", status=RUNNING))
    with pytest.raises(ValueError, match="running episode"):
        caps.open_episode(EpisodeRecord(run_id=run.id, task_id="t", loop="capture"))
    with pytest.raises(ValueError, match="open it bare"):
        caps.open_episode(
            EpisodeRecord(run_id=run.id, task_id="t", loop="capture", status=RUNNING, steps=[call(0)])
        )
    # A step id another episode holds is a mistake, not a retry.
    a, b = opened(store, run), opened(store, run)
    step = call(0)
    caps.append_steps(a.id, [step])
    with pytest.raises(Exception, match="already stored for episode"):
        caps.append_steps(b.id, [step])


def test_examples_only_for_finished_episodes(store: Store, run: RunRecord) -> None:
    caps = store.captures
    ep = opened(store, run)
    examples = [ExampleRecord(kind=ExampleKind.SFT, payload=sft_payload("q", "a")) for _ in range(2)]
    with pytest.raises(EpisodeStateError, match="running"):
        caps.add_examples(ep.id, examples)
    caps.close_episode(ep.id, EpisodeStatus.FINISHED)
    assert caps.add_examples(ep.id, examples) == 2
    assert caps.add_examples(ep.id, examples) == 0  # retry
    stored = store.list_examples(run_id=run.id)
    assert {x.episode_id for x in stored} == {ep.id} and {x.task_id for x in stored} == {"t1"}
    held = ExampleRecord(kind=ExampleKind.SFT, payload=sft_payload("q", "a"), split="heldout")
    with pytest.raises(HeldoutLeakError):
        caps.add_examples(ep.id, [held])
    failed = opened(store, run, "t2")
    caps.close_episode(failed.id, EpisodeStatus.FAILED)
    with pytest.raises(EpisodeStateError, match="failed"):
        caps.add_examples(failed.id, examples)


def test_running_and_aborted_episodes_are_not_done_work(store: Store, run: RunRecord) -> None:
    caps = store.captures
    done = make_episode(run.id, task_id="t0")
    store.write_episode(done)
    running, aborted = opened(store, run, "t1"), opened(store, run, "t2")
    caps.close_episode(aborted.id, EpisodeStatus.ABORTED)
    # What a resumed run skips (runner.py) and what the reflection index counts.
    assert store.episode_ids(run.id) == {done.id}
    assert store.episodes.task_ids([run.id]) == {"t0"}
    # ... but both are readable.
    assert {e.id for e in store.list_episodes(run.id)} == {done.id, running.id, aborted.id}
    caps.close_episode(running.id, EpisodeStatus.FINISHED)
    assert store.episode_ids(run.id) == {done.id, running.id}
    assert store.episodes.task_ids([run.id]) == {"t0", "t1"}


def test_group_is_every_episode_of_a_task_with_steps(store: Store, run: RunRecord) -> None:
    caps = store.captures
    members = [opened(store, run, "t1") for _ in range(3)]
    opened(store, run, "t2")
    for i, ep in enumerate(members):
        caps.append_steps(ep.id, [call(i)])
    group = caps.group(run.id, "t1")
    assert [e.id for e in group] == [e.id for e in members]  # oldest first
    assert [e.steps[0].token_ids for e in group] == [[10, 11], [11, 12], [12, 13]]


def race(store: Store, episode_id: str, statuses: list[EpisodeStatus]) -> list[bool | str]:
    """Close one episode from one thread per status, all at once; what each closer got."""
    barrier = threading.Barrier(len(statuses))
    results: list[bool | str] = [""] * len(statuses)

    def close(i: int) -> None:
        barrier.wait()
        try:
            results[i] = store.captures.close_episode(episode_id, statuses[i], reward=1.0)
        except EpisodeClosedError:
            results[i] = "refused"

    threads = [threading.Thread(target=close, args=(i,)) for i in range(len(statuses))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_closers_race_exactly_one_wins(store: Store, run: RunRecord) -> None:
    for _ in range(3):
        ep = opened(store, run)
        results = race(store, ep.id, [EpisodeStatus.FINISHED] * 6)
        assert sorted(results, key=str) == [False] * 5 + [True]
        assert store.captures.episode_status(ep.id) == EpisodeStatus.FINISHED


def test_finish_and_abort_race_one_wins(store: Store, run: RunRecord) -> None:
    ep = opened(store, run)
    statuses = [EpisodeStatus.FINISHED, EpisodeStatus.ABORTED]
    results = race(store, ep.id, statuses)
    assert sorted(results, key=str) == [True, "refused"]
    assert store.captures.episode_status(ep.id) == statuses[results.index(True)]


def test_async_twins(store: Store, run: RunRecord) -> None:
    ep = EpisodeRecord(run_id=run.id, task_id="t", loop="capture", status=RUNNING)

    async def go() -> EpisodeStatus | None:
        caps = store.captures
        assert await caps.aopen_episode(ep) is True
        assert await caps.aappend_steps(ep.id, [call(0)]) == 1
        assert await caps.aclose_episode(ep.id, EpisodeStatus.FINISHED) is True
        return await caps.aepisode_status(ep.id)

    assert asyncio.run(go()) == EpisodeStatus.FINISHED


def running(run: RunRecord, task_id: str = "t") -> EpisodeRecord:
    return EpisodeRecord(run_id=run.id, task_id=task_id, loop="capture", status=RUNNING, outcome={"n": 0})


def test_write_many_applies_ops_in_order_as_one_at_a_time(store: Store, run: RunRecord) -> None:
    """Many episodes' changes in one transaction: each op's result is what it alone would have returned, in
    order (a reward before a close, a close retried, a step or example id sent twice)."""
    caps = store.captures
    a, b, c = running(run, "ta"), running(run, "tb"), running(run, "tc")
    s0, s1, s2, s3 = call(0), call(1), call(2), call(3)
    xs = [ExampleRecord(kind=ExampleKind.SFT, payload=sft_payload("q", "a")) for _ in range(2)]
    ops = [
        OpenOp(a),
        OpenOp(b),
        OpenOp(a),  # a retried open
        AppendOp(a.id, [s0, s1, s0]),
        AppendOp(b.id, [s2]),
        OpenOp(c),
        AppendOp(a.id, [s1, s3]),  # s1 again: a retried call
        UpdateOp(a.id, reward=0.5, outcome={"tool_calls": 1}),
        CloseOp(a.id, EpisodeStatus.FINISHED, outcome={"n": 4}),
        CloseOp(a.id, EpisodeStatus.FINISHED, reward=9.0),  # a retry changes nothing
        UpdateOp(b.id, reward=0.0),
        CloseOp(b.id, EpisodeStatus.ABORTED),
        ExamplesOp(a.id, xs),
        ExamplesOp(a.id, [xs[1]]),
        UpdateOp(a.id, reward=1.0),  # a reward after the finish is taken
    ]
    results = caps.write_many(ops)
    assert results == [True, True, False, 2, 1, True, 1, None, True, False, None, True, 2, 0, None]
    got_a, got_b = store.get_episode(a.id), store.get_episode(b.id)
    assert got_a is not None and got_b is not None
    assert (got_a.status, got_a.reward, got_a.outcome) == (
        EpisodeStatus.FINISHED,
        1.0,
        {"n": 4, "tool_calls": 1},
    )
    assert [s.id for s in got_a.steps] == [s0.id, s1.id, s3.id] and len(got_a.examples) == 2
    assert (got_b.status, got_b.reward, [s.id for s in got_b.steps]) == (EpisodeStatus.ABORTED, 0.0, [s2.id])
    assert caps.episode_status(c.id) == RUNNING
    assert caps.write_many([]) == []


def test_write_many_is_all_or_nothing(store: Store, run: RunRecord) -> None:
    """One bad op rolls back the whole batch and raises its own error (the capture writer then retries each
    op alone, so the error reaches its episode and the others are written)."""
    caps = store.captures
    done = opened(store, run)
    caps.close_episode(done.id, EpisodeStatus.FINISHED)
    fresh = running(run, "t-fresh")
    for bad, error in [
        (AppendOp(done.id, [call(0)]), EpisodeClosedError),
        (CloseOp(done.id, EpisodeStatus.ABORTED), EpisodeClosedError),
        (UpdateOp("nope", reward=1.0), NotFoundError),
        (
            ExamplesOp(fresh.id, [ExampleRecord(kind=ExampleKind.SFT, payload=sft_payload("q", "a"))]),
            EpisodeStateError,
        ),
        (OpenOp(running(RunRecord(id="no-run", loop="x"))), NotFoundError),
    ]:
        with pytest.raises(error):
            caps.write_many([OpenOp(fresh), AppendOp(fresh.id, [call(1)]), bad])
        assert caps.episode_status(fresh.id) is None  # nothing of the batch was kept
    other = running(run, "t-other")
    step = call(5)
    with pytest.raises(Exception, match="already stored for episode"):
        caps.write_many(
            [OpenOp(fresh), OpenOp(other), AppendOp(fresh.id, [step]), AppendOp(other.id, [step])]
        )
    assert caps.write_many([OpenOp(fresh), AppendOp(fresh.id, [step])]) == [True, 1]
