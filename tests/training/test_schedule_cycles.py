"""The lease and the scheduler around real cycles (tiny model, HF engine, TRL): `strop evolve --once` killed
with SIGKILL and taken over once its lease expires, and a `strop schedule run` firing that runs a cycle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from strop.cli import app
from strop.memory.firings import FiringStatus
from strop.memory.leases import LeaseHeldError
from strop.memory.schema import Lease
from strop.training.evolve import StagePhase
from tests.training.evolve_helpers import tiny_recipe

REPO = Path(__file__).resolve().parents[2]
PER_CYCLE = 16
FINISHED = (StagePhase.DONE, StagePhase.SKIPPED)


def _strop(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "strop", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )


def _strop_here(*args: str) -> str:
    """`strop` in this process, for a run that is not killed: what it reads and writes is all in the store, so
    it checks what a process of its own would, without a second interpreter importing torch and transformers.
    Its output, whitespace collapsed; fails on a non-zero exit."""
    res = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    return " ".join(res.output.split())


def _slow_recipe(tmp_path: Path) -> Path:
    """One stage, 16 tasks collected one at a time: a cycle long enough to be killed in the middle of."""
    p = tiny_recipe(tmp_path, train_per_cycle=PER_CYCLE)
    p.write_text(p.read_text().replace("concurrency = 16", "concurrency = 1"))
    return p


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_evolve_once_killed_with_sigkill_is_taken_over_after_its_ttl(
    pg_url: str, tmp_path: Path, tiny_model_path: Path
) -> None:
    from strop.memory import Store
    from strop.training.evolve import Evolution
    from strop.training.recipe import load_recipe

    ttl = 30.0  # long enough for the refused rerun below to start and stop inside it
    path = _slow_recipe(tmp_path)
    store = Store(pg_url)
    evo = Evolution(load_recipe(path), store, progress=False)
    evolve = (
        "evolve",
        "--recipe",
        str(path),
        "--db",
        pg_url,
        "--once",
        "--no-progress",
        "--lease-ttl",
        str(ttl),
    )

    first = _strop(*evolve)
    deadline = time.monotonic() + 300
    while (lease := store.get_lease("evolve:tiny-star")) is None or f":{first.pid}:" not in lease.holder:
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0].decode()
        time.sleep(0.1)
    holder = lease.holder

    # A second run while the first holds the recipe: says who, exits 0, touches nothing.
    out = _strop_here(*evolve)
    assert f"tiny-star is being evolved by {holder} since" in out, out

    # Kill the holder mid-cycle once it has collected something.
    while len(store.episode_ids(evo.collect_run_id(1))) < 2:
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0].decode()
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    out = first.communicate()[0].decode()
    assert first.returncode == -signal.SIGKILL
    assert evo.phase(1, 0) not in FINISHED, f"cycle 1 finished before the kill:\n{out}"
    with pytest.raises(LeaseHeldError, match=holder):  # its lease outlives it, up to its TTL
        store.acquire_lease("evolve:tiny-star", "probe", ttl=60)

    # A rerun on this machine would see the holder's pid gone and take over at once (test_evolve_kill.py).
    # Make it the lease of a process on another host, which nobody here can check: only the TTL frees it.
    remote = "otherhost" + holder[holder.index(":") :]
    with store.db.write() as conn:
        conn.execute(update(Lease).where(Lease.name == "evolve:tiny-star").values(holder=remote))
    out = _strop_here(*evolve)
    assert f"being evolved by {remote}" in out, out
    # Let the TTL run out: backdate the expiry rather than sleep through the rest of it (the clock itself is
    # tested in tests/memory/test_leases.py, with a holder SIGKILLed and its lease lapsing on time).
    with store.db.write() as conn:
        conn.execute(
            update(Lease)
            .where(Lease.name == "evolve:tiny-star")
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    out = _strop_here(*evolve)
    assert f"took over recipe tiny-star from {remote}, gone since its last heartbeat" in out, out

    # The cycle was continued, not restarted or doubled: every task once, a decided candidate, no cycle 2.
    episodes = store.list_episodes(evo.collect_run_id(1), children=False)
    assert len(episodes) == PER_CYCLE == len({e.task_id for e in episodes})
    assert evo.phase(1, 0) in FINISHED and store.get_run(evo.stage_run_id(2, 0)) is None
    assert store.get_lease("evolve:tiny-star") is None  # released at the end
    res = CliRunner().invoke(app, [*evolve[:-2], "--cycles", "1"])
    assert res.exit_code == 0 and "all 1 cycles are done; nothing to do" in res.output, res.output
    store.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_scheduled_firing_runs_a_real_cycle(sqlite_url: str, tmp_path: Path, tiny_model_path: Path) -> None:
    from strop.memory import Store
    from strop.training import schedules
    from strop.training.evolve import Evolution
    from strop.training.recipe import load_recipe

    path = tiny_recipe(tmp_path)
    res = CliRunner().invoke(
        app, ["schedule", "add", "--recipe", str(path), "--every", "1h", "--db", sqlite_url]
    )
    assert res.exit_code == 0, res.output
    store = Store(sqlite_url)
    due = datetime.now(UTC).replace(microsecond=0)
    with schedules._jobs(store) as manager:  # due now rather than in an hour
        manager.modify_job("tiny-star", next_run_time=due)

    proc = _strop("schedule", "run", "--db", sqlite_url, "--poll", "0.5")
    deadline = time.monotonic() + 600
    while (f := store.get_firing("tiny-star", due)) is None or f.status == FiringStatus.RUNNING:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0].decode()
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 0 and "scheduler stopped" in out, out
    assert f.status == FiringStatus.OK and f.cycle == 1 and f.error is None, (f, out)

    evo = Evolution(load_recipe(path), store, progress=False)
    assert evo.phase(1, 0) in FINISHED and len(store.episode_ids(evo.collect_run_id(1))) == 8
    assert "firing due at" in out and "ran cycle 1" in out
    code = CliRunner().invoke(app, ["schedule", "list", "--db", sqlite_url])
    assert "last firing: due" in code.output and "ok: cycle 1" in code.output, code.output
    store.close()
