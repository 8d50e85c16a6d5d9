"""The work queue on both databases: idempotent enqueue, disjoint claims, leases that expire and are taken
over, and the exactly-once write of an episode with its done-mark."""

from __future__ import annotations

import threading
import time

import pytest

from strop.memory.errors import InvalidTransitionError
from strop.memory.queue import WORK_TRANSITIONS, WorkState, check_work_transition
from strop.memory.records import EpisodeRecord, RunRecord


def _items(n: int) -> list[tuple[str, str, dict]]:
    return [(f"ep{i}", f"task{i}", {"id": f"task{i}", "prompt": f"{i}+1"}) for i in range(n)]


def _episode(eid: str) -> EpisodeRecord:
    return EpisodeRecord(id=eid, run_id="r", task_id=eid.replace("ep", "task"), loop="best_of_n")


@pytest.fixture
def queued(store):
    store.create_run(RunRecord(id="r", loop="best_of_n"))
    assert store.enqueue_work("r", _items(10)) == 10
    return store


def test_enqueue_is_idempotent_and_skips_stored_episodes(store) -> None:
    store.create_run(RunRecord(id="r", loop="best_of_n"))
    store.write_episode(_episode("ep3"))
    assert store.enqueue_work("r", _items(5)) == 5
    assert store.enqueue_work("r", _items(8)) == 3  # the first five are left as they are
    counts = store.work_counts("r")
    assert (counts.todo, counts.done, counts.total) == (7, 1, 8)
    assert [w.episode_id for w in store.list_work("r", WorkState.DONE)] == ["ep3"]
    assert store.open_work_runs() == ["r"]


def test_claims_are_disjoint_in_order_and_renewed_by_the_heartbeat(queued) -> None:
    a = queued.claim_work("r", "A", ttl=30, limit=4)
    b = queued.claim_work("r", "B", ttl=30, limit=4)
    assert [w.episode_id for w in a] == ["ep0", "ep1", "ep2", "ep3"]
    assert [w.episode_id for w in b] == ["ep4", "ep5", "ep6", "ep7"]
    assert all(w.state == WorkState.CLAIMED and w.owner == "A" and w.attempts == 1 for w in a)
    assert a[0].payload == {"id": "task0", "prompt": "0+1"}
    before = a[0].expires_at
    time.sleep(0.01)
    assert queued.renew_work("A", ttl=60) == 4
    assert queued.list_work("r", WorkState.CLAIMED)[0].expires_at > before
    counts = queued.work_counts("r")
    assert (counts.todo, counts.claimed, counts.expired) == (2, 8, 0)


def test_complete_writes_the_episode_with_its_mark_only_for_the_holder(queued) -> None:
    queued.claim_work("r", "A", ttl=30, limit=2)
    done = queued.complete_work("A", [_episode("ep0")])
    assert done.written == {"ep0"} and not done.lost
    # B never held ep1: nothing is written, the item stays A's.
    refused = queued.complete_work("B", [_episode("ep1")])
    assert refused.lost == {"ep1"} and not refused.written
    assert not queued.has_episode("ep1")
    # Completing again is refused too (the item is done): the episode is never written twice.
    assert queued.complete_work("A", [_episode("ep0")]).lost == {"ep0"}
    assert queued.work_counts("r").done == 1


def test_an_expired_lease_is_taken_over_and_the_old_holder_writes_nothing(queued) -> None:
    queued.claim_work("r", "A", ttl=0.2, limit=3)
    assert queued.claim_work("r", "B", ttl=30, limit=10)[0].episode_id == "ep3"  # A's are not expired yet
    time.sleep(0.4)
    assert queued.work_counts("r").expired == 3
    taken = queued.claim_work("r", "C", ttl=30, limit=10)
    assert [w.episode_id for w in taken] == ["ep0", "ep1", "ep2"] and taken[0].attempts == 2
    assert queued.renew_work("A", ttl=30) == 0  # A's heartbeat no longer reaches them
    assert queued.complete_work("A", [_episode("ep0")]).lost == {"ep0"}
    assert queued.complete_work("C", [_episode("ep0")]).written == {"ep0"}
    assert len(queued.list_episodes("r")) == 1


def test_an_episode_stored_meanwhile_is_marked_done_not_written_again(queued) -> None:
    queued.claim_work("r", "A", ttl=30, limit=2)
    queued.write_episode(_episode("ep1"))  # e.g. the single-process runner got there first
    out = queued.complete_work("A", [_episode("ep0"), _episode("ep1")])
    assert (out.written, out.existing, out.lost) == ({"ep0"}, {"ep1"}, set())
    assert queued.work_counts("r").done == 2


def test_release_retries_until_attempts_run_out_then_fails(queued) -> None:
    for attempt in (1, 2):
        [item] = queued.claim_work("r", "A", ttl=30, limit=1, max_attempts=2)
        assert item.episode_id == "ep0" and item.attempts == attempt
        state = queued.release_work("A", "r", "ep0", "boom", max_attempts=2)
        assert state == (WorkState.TODO if attempt == 1 else WorkState.FAILED)
    [failed] = queued.list_work("r", WorkState.FAILED)
    assert failed.error == "boom"
    assert queued.release_work("B", "r", "ep1") is None  # not B's
    assert queued.requeue_failed("r") == 1 and queued.work_counts("r").failed == 0


def test_leases_that_keep_expiring_end_failed(queued) -> None:
    for attempt in (1, 2):
        items = queued.claim_work("r", "A", ttl=0.05, limit=10, max_attempts=2)
        assert len(items) == 10 and {w.attempts for w in items} == {attempt}
        time.sleep(0.15)
    assert queued.claim_work("r", "B", ttl=30, limit=10, max_attempts=2) == []  # no attempts left
    assert queued.fail_exhausted_work("r", max_attempts=2) == 10
    failed = queued.list_work("r", WorkState.FAILED)
    assert len(failed) == 10 and "expired 2 times" in (failed[0].error or "")


def test_todo_items_go_before_expired_ones(queued) -> None:
    queued.claim_work("r", "A", ttl=0.05, limit=2)  # ep0, ep1: their worker dies
    time.sleep(0.15)
    got = [w.episode_id for w in queued.claim_work("r", "B", ttl=30, limit=9)]
    assert got == [f"ep{i}" for i in range(2, 10)] + ["ep0"]  # the queue first, then the dead worker's


def test_concurrent_claimers_take_every_item_exactly_once(store) -> None:
    store.create_run(RunRecord(id="r", loop="best_of_n"))
    store.enqueue_work("r", _items(200))
    got: dict[str, list[str]] = {}

    def worker(name: str) -> None:
        got[name] = []
        while items := store.claim_work("r", name, ttl=30, limit=7):
            store.complete_work(name, [_episode(w.episode_id) for w in items])
            got[name].extend(w.episode_id for w in items)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [e for ids in got.values() for e in ids]
    assert sorted(claimed) == sorted(f"ep{i}" for i in range(200))
    assert store.work_counts("r").done == 200 and len(store.episode_ids("r")) == 200


def test_the_transition_table() -> None:
    assert WorkState.CLAIMED in WORK_TRANSITIONS[WorkState.TODO]
    check_work_transition("claimed", "claimed")  # an expired lease taken over
    with pytest.raises(InvalidTransitionError):
        check_work_transition(WorkState.DONE, WorkState.TODO)
