"""The recipe lease around `strop evolve` without training a model: which cycle --once picks, a second run
refused with the holder named, and a run stopped when another takes its lease over."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from strop.cli import app
from strop.memory import Store
from strop.memory.leases import LeaseHeldError, LeaseLostError
from strop.memory.schema import Lease
from strop.training.cycle_lease import (
    holder_is_dead,
    lease_name,
    new_holder,
    next_cycle,
    recipe_lease,
    run_cycles,
    target_cycle,
)
from strop.training.evolve import StagePhase
from tests.training.evolve_helpers import tiny_recipe


def _evo(done: dict[tuple[int, int], StagePhase], stages: int = 2, cycles: int = 2) -> Any:
    return SimpleNamespace(
        recipe=SimpleNamespace(stages=[None] * stages, cycles=cycles),
        phase=lambda k, s: done.get((k, s), StagePhase.COLLECT),
    )


def test_once_picks_the_first_unfinished_cycle() -> None:
    d, sk = StagePhase.DONE, StagePhase.SKIPPED
    assert next_cycle(_evo({})) == 1
    assert next_cycle(_evo({(1, 0): d})) == 1  # stage 1 of cycle 1 still to do
    assert next_cycle(_evo({(1, 0): d, (1, 1): sk})) == 2  # skipped (nothing to train) counts as finished
    assert next_cycle(_evo({(1, 0): d, (1, 1): d, (2, 0): StagePhase.TRAIN})) == 2
    evo = _evo({(1, 0): d, (1, 1): d, (2, 0): d, (2, 1): d})
    assert target_cycle(evo, cycles=None, once=True) == 3  # --once is not capped by the recipe's cycles
    assert target_cycle(evo, cycles=2, once=True) is None  # ... unless --cycles says so
    assert target_cycle(evo, cycles=5, once=True) == 3
    assert target_cycle(evo, cycles=None, once=False) == 2  # plain evolve: the recipe's cycles
    assert target_cycle(evo, cycles=4, once=False) == 4


def test_a_second_evolve_says_who_holds_the_recipe_and_exits_0(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 's.db'}"
    store = Store(db)
    store.acquire_lease(lease_name("tiny-star"), "otherhost:4242:abcd", ttl=60)
    res = CliRunner().invoke(app, ["evolve", "--recipe", str(tiny_recipe(tmp_path)), "--db", db, "--once"])
    out = " ".join(res.output.split())
    assert res.exit_code == 0, out
    assert (
        "tiny-star is being evolved by otherhost:4242:abcd since" in out
        and "not starting a second run" in out
    )
    assert store.get_lease(lease_name("tiny-star")).holder == "otherhost:4242:abcd"  # untouched
    store.close()


def test_a_run_whose_lease_is_taken_over_stops(db_url: str) -> None:
    store = Store(db_url)
    started = []

    class SlowEvolution:
        async def run(self, target: int) -> None:
            started.append(target)
            await asyncio.sleep(30)

    with recipe_lease(store, "r", ttl=0.3) as keeper:
        # Another process takes over (as if this one had stalled past its TTL).
        with store.db.write() as conn:
            conn.execute(update(Lease).where(Lease.name == lease_name("r")).values(holder="thief"))
        t = time.monotonic()
        with pytest.raises(LeaseLostError, match=r"taken over by thief.*this run stopped"):
            run_cycles(SlowEvolution(), 1, keeper)
        assert started == [1] and time.monotonic() - t < 5
    assert store.get_lease(lease_name("r")).holder == "thief"  # the old holder's exit released nothing
    store.close()


def test_a_dead_holder_on_this_machine_is_taken_over_at_once(db_url: str) -> None:
    store = Store(db_url)
    me = new_holder()
    host, pid, tail = me.split(":")
    assert pid == str(os.getpid()) and not holder_is_dead(me)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = f"{host}:{child.pid}:{tail}"
        assert not holder_is_dead(theirs)  # alive
        child.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not holder_is_dead(theirs):  # a zombie until reaped: dead already
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    assert holder_is_dead(theirs)
    # Not provably dead: another host, another kernel or pid namespace, a malformed holder.
    assert not holder_is_dead(f"otherhost:{child.pid}:{tail}")
    assert not holder_is_dead(f"{host}:{child.pid}:0000ffff.{tail.split('.')[1]}")
    assert not holder_is_dead("someone")

    store.acquire_lease(lease_name("r"), theirs, ttl=60)
    with recipe_lease(store, "r", ttl=30) as keeper:
        assert keeper.lease.previous.holder == theirs and keeper.holder != theirs
    store.acquire_lease(lease_name("r"), f"otherhost:{child.pid}:{tail}", ttl=60)
    with pytest.raises(LeaseHeldError), recipe_lease(store, "r", ttl=30):
        pass
    store.close()
