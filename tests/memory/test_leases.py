"""Leases and the firing record, on SQLite and PostgreSQL: acquire, renew, release, expire, take over, and
the races that make them worth having (two acquirers, a holder killed with SIGKILL, a firing fired twice)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from strop.memory import Store
from strop.memory.firings import FiringStatus
from strop.memory.leases import LeaseHeldError, LeaseKeeper, LeaseLostError

REPO = Path(__file__).resolve().parents[2]


def test_acquire_renew_release(store: Store) -> None:
    got = store.acquire_lease("evolve:a", "h1", ttl=30)
    assert got.holder == "h1" and got.previous is None
    assert timedelta(seconds=29) < got.expires_at - got.heartbeat_at <= timedelta(seconds=30)
    # The holder may take it again (a renewal that keeps its acquisition time); nobody else may.
    again = store.acquire_lease("evolve:a", "h1", ttl=30)
    assert again.acquired_at == got.acquired_at and again.expires_at >= got.expires_at
    with pytest.raises(LeaseHeldError, match="held by h1") as e:
        store.acquire_lease("evolve:a", "h2", ttl=30)
    assert e.value.lease.holder == "h1" and e.value.lease.expires_at == again.expires_at
    renewed = store.renew_lease("evolve:a", "h1", ttl=60)
    assert renewed.expires_at > again.expires_at
    with pytest.raises(LeaseLostError):
        store.renew_lease("evolve:a", "h2", ttl=60)
    # Another name is another lease.
    assert store.acquire_lease("evolve:b", "h2", ttl=30).holder == "h2"
    assert not store.release_lease("evolve:a", "h2")
    assert store.release_lease("evolve:a", "h1")
    assert store.get_lease("evolve:a") is None and [x.name for x in store.list_leases()] == ["evolve:b"]
    assert store.acquire_lease("evolve:a", "h2", ttl=30).holder == "h2"


def test_an_expired_lease_is_taken_over_and_its_holder_learns_it(store: Store) -> None:
    store.acquire_lease("evolve:a", "h1", ttl=0.3)
    time.sleep(0.5)
    got = store.acquire_lease("evolve:a", "h2", ttl=30)
    assert got.holder == "h2" and got.previous is not None and got.previous.holder == "h1"
    with pytest.raises(LeaseLostError, match="taken over by h2"):
        store.renew_lease("evolve:a", "h1", ttl=30)
    assert not store.release_lease("evolve:a", "h1")
    assert store.get_lease("evolve:a").holder == "h2"


def test_an_expired_lease_nobody_took_is_still_its_holders(store: Store) -> None:
    store.acquire_lease("evolve:a", "h1", ttl=0.2)
    time.sleep(0.3)
    assert store.renew_lease("evolve:a", "h1", ttl=30).holder == "h1"
    with pytest.raises(LeaseHeldError):
        store.acquire_lease("evolve:a", "h2", ttl=30)


def test_concurrent_acquirers_exactly_one_wins(db_url: str) -> None:
    n = 8
    stores = [Store(db_url) for _ in range(n)]
    barrier = threading.Barrier(n)
    won: list[str] = []
    held: list[str] = []

    def go(i: int) -> None:
        barrier.wait()
        try:
            stores[i].acquire_lease("evolve:race", f"h{i}", ttl=30)
            won.append(f"h{i}")
        except LeaseHeldError as e:
            held.append(e.lease.holder)

    for round_ in range(3):  # a fresh row, then takeovers of an expired one
        won.clear()
        held.clear()
        threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, f"round {round_}: {won} all acquired"
        assert held == [won[0]] * (n - 1)
        stores[0].acquire_lease("evolve:race", won[0], ttl=0.05)  # let it expire for the next round
        time.sleep(0.2)
    for s in stores:
        s.close()


def test_the_keeper_renews_past_the_ttl_and_reports_a_takeover(store: Store) -> None:
    lost: list[str] = []
    keeper = LeaseKeeper(store, store.acquire_lease("evolve:k", "h1", ttl=0.6), 0.6, on_lost=lost.append)
    time.sleep(1.5)  # 2.5 TTLs: without heartbeats it would have expired
    with pytest.raises(LeaseHeldError):
        store.acquire_lease("evolve:k", "h2", ttl=30)
    assert keeper.lease.expires_at > datetime.now(UTC)
    # Stopped without release (a stalled holder): the lease expires, someone takes it, the holder is told.
    keeper._stop.set()
    keeper._thread.join()
    time.sleep(0.8)
    store.acquire_lease("evolve:k", "h2", ttl=30)
    keeper2 = LeaseKeeper(store, keeper.lease, 0.3, on_lost=lost.append)
    deadline = time.monotonic() + 5
    while not lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lost and "taken over by h2" in lost[0]
    assert keeper2.release() is False and store.get_lease("evolve:k").holder == "h2"


def test_a_holder_killed_with_sigkill_loses_the_lease_after_its_ttl(
    store: Store, db_url: str, tmp_path: Path
) -> None:
    ttl = 2.0
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.memory._lease_worker", db_url, "evolve:kill", str(ttl), str(ready)],
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            assert proc.poll() is None, "the worker died before taking the lease"
            time.sleep(0.05)
        holder = ready.read_text()
        time.sleep(ttl * 1.5)  # heartbeats keep it alive past its TTL
        with pytest.raises(LeaseHeldError, match=holder):
            store.acquire_lease("evolve:kill", "next", ttl=30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = time.monotonic()
        with pytest.raises(LeaseHeldError):  # not before its TTL ...
            store.acquire_lease("evolve:kill", "next", ttl=30)
        while True:  # ... but within it
            try:
                got = store.acquire_lease("evolve:kill", "next", ttl=30)
                break
            except LeaseHeldError:
                assert time.monotonic() - killed_at < ttl + 2, "the killed holder's lease never expired"
                time.sleep(0.1)
        assert got.previous is not None and got.previous.holder == holder
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_firing_is_claimed_once_and_its_outcome_kept(store: Store) -> None:
    # A scheduled time in another zone is the same firing as its UTC twin.
    at = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    paris = at.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris"))
    assert store.claim_firing("nightly", at, recipe="r.toml", holder="a")
    assert not store.claim_firing("nightly", paris, recipe="r.toml", holder="b")
    assert store.get_firing("nightly", at).status == FiringStatus.RUNNING
    store.finish_firing("nightly", paris, FiringStatus.FAILED, error="boom")
    f = store.get_firing("nightly", at)
    assert f.status == FiringStatus.FAILED and f.error == "boom" and f.holder == "a" and f.finished_at
    later = at + timedelta(hours=6)
    assert store.claim_firing("nightly", later, recipe="r.toml", holder="c", status="missed", error="late")
    assert store.claim_firing("other", at, recipe="o.toml", holder="a")
    assert store.abandon_firings("other", "z", "its holder died") == 1
    assert store.get_firing("other", at).status == FiringStatus.FAILED
    assert store.abandon_firings("nightly", "z", "x") == 0  # none running
    last = store.last_firings()
    assert last["nightly"].scheduled_at == later and last["nightly"].status == FiringStatus.MISSED
    assert [f.scheduled_at for f in store.list_firings("nightly")] == [later, at]


def test_take_over_from_a_named_holder_only(store: Store) -> None:
    store.acquire_lease("evolve:t", "dead", ttl=60)
    got = store.take_over_lease("evolve:t", "dead", "me", ttl=30)
    assert got.holder == "me" and got.previous.holder == "dead"
    with pytest.raises(LeaseHeldError, match="held by me"):  # it changed hands: not "dead"'s to take any more
        store.take_over_lease("evolve:t", "dead", "other", ttl=30)
    store.release_lease("evolve:t", "me")
    assert store.take_over_lease("evolve:t", "dead", "other", ttl=30).holder == "other"  # gone: acquired
