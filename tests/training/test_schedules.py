"""Schedules without training a model: `strop schedule` input checks, the firing record, and two schedulers on
one PostgreSQL store, with a stand-in cycle (tests/training/schedule_helpers.py) in place of a real one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from strop.cli import app
from strop.memory import Store
from strop.memory.firings import FiringStatus
from strop.training import schedules
from strop.training.schedules import add_schedule, fire, make_scheduler
from strop.training.triggers import interval_trigger
from tests.training import schedule_helpers as helpers
from tests.training.evolve_helpers import tiny_recipe

STAND_IN = "tests.training.schedule_helpers:record_cycle"
runner = CliRunner()


def _cli(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args))
    return res.exit_code, " ".join(res.output.split())


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    return tiny_recipe(tmp_path)


def test_schedule_add_refuses_bad_input_naming_the_field(recipe: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    add = ("schedule", "add", "--db", db, "--recipe")
    code, out = _cli(*add, str(recipe), "--cron", "61 * * * *")
    assert code == 1 and '--cron "61 * * * *": minute "61" is invalid: minute must be 0-59' in out
    code, out = _cli(*add, str(recipe), "--cron", "0 3 * *")
    assert code == 1 and "4 fields, a crontab line has 5: minute hour day month day_of_week" in out
    code, out = _cli(*add, str(recipe), "--cron", "0 3 * * 9")
    assert code == 1 and 'day_of_week "9" is invalid' in out
    code, out = _cli(*add, str(recipe), "--every", "6 hours")
    assert code == 1 and '--every "6 hours": not a duration' in out
    code, out = _cli(*add, str(recipe))
    assert code == 1 and "exactly one of --cron" in out
    code, out = _cli(*add, str(tmp_path / "nope.toml"), "--every", "6h")
    assert code == 1 and "nope.toml not found" in out
    recipe.write_text(recipe.read_text().replace("n = 4", 'n = "four"'))
    code, out = _cli(*add, str(recipe), "--every", "6h")
    assert code == 1 and "stages[0].config.n:" in out and "'four'" in out
    recipe.write_text(
        recipe.read_text().replace('n = "four"', "n = 4").replace('name = "arithmetic"', 'name = "arith"')
    )
    code, out = _cli(*add, str(recipe), "--every", "6h")
    assert code == 1 and "`stages[0].tasks.name`" in out and "'arith'" in out
    recipe.write_text(
        recipe.read_text().replace('name = "arith"', 'name = "arithmetic"').replace('"tiny"', '"nope"')
    )
    code, out = _cli(*add, str(recipe), "--every", "6h")
    assert code == 1 and "`roles.policy`" in out and "'nope'" in out
    (tmp_path / "x").mkdir()
    code, out = _cli(*add, str(tiny_recipe(tmp_path / "x", db=str(tmp_path / "other.db"))), "--every", "6h")
    assert code == 1 and "recipe field `db`" in out
    assert _cli("schedule", "list", "--db", db) == (
        0,
        'no schedules; add one with `strop schedule add --recipe R --cron "0 3 * * *"`',
    )


def test_add_list_pause_resume_remove(recipe: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    code, out = _cli("schedule", "add", "--db", db, "--recipe", str(recipe), "--cron", "0 3 * * 0")
    assert code == 0 and "schedule tiny-star: recipe tiny-star" in out and "cron 0 3 * * sun" in out, out
    code, out = _cli("schedule", "add", "--db", db, "--recipe", str(recipe), "--cron", "0 4 * * *")
    assert code == 1 and "schedule 'tiny-star' exists; pass --replace" in out
    assert (
        _cli("schedule", "add", "--db", db, "--recipe", str(recipe), "--cron", "0 4 * * *", "--replace")[0]
        == 0
    )
    code, out = _cli(
        "schedule",
        "add",
        "--db",
        db,
        "--recipe",
        str(recipe),
        "--every",
        "6h",
        "--name",
        "six",
        "--cycles",
        "3",
    )
    assert code == 0 and "every 6h" in out
    code, out = _cli("schedule", "list", "--db", db)
    assert "six: every 6h, next 20" in out and "until cycle 3" in out and "tiny-star: cron 0 4 * * *" in out
    assert _cli("schedule", "pause", "six", "--db", db) == (0, "schedule six: paused")
    assert "six: every 6h, next paused" in _cli("schedule", "list", "--db", db)[1]
    assert _cli("schedule", "resume", "six", "--db", db)[0] == 0
    assert "six: every 6h, next 20" in _cli("schedule", "list", "--db", db)[1]
    assert _cli("schedule", "remove", "six", "--db", db) == (0, "schedule six: removed")
    code, out = _cli("schedule", "remove", "six", "--db", db)
    assert code == 1 and "no schedule 'six'" in out
    assert "six" not in _cli("schedule", "list", "--db", db)[1]


def test_a_failed_firing_is_recorded_and_the_next_one_retries(
    store: Store, recipe: Path, db_url: str
) -> None:
    helpers.reset(seconds=0, fail_first=True)
    t0 = datetime(2026, 1, 1, 3, tzinfo=UTC)
    kw: dict[str, Any] = {"cycle": STAND_IN, "db": db_url, "lease_ttl": 5}
    assert fire("nightly", str(recipe), scheduled_at=t0, **kw) == "failed"
    f = store.get_firing("nightly", t0)
    assert f.status == FiringStatus.FAILED and f.error.startswith(
        "RuntimeError: stand-in cycle failed on purpose"
    )
    assert "Traceback" in f.error and f.finished_at is not None
    assert (
        fire("nightly", str(recipe), scheduled_at=t0, **kw) == "duplicate"
    )  # a second scheduler, same due time
    assert fire("nightly", str(recipe), scheduled_at=t0 + timedelta(days=1), **kw) == "ok"
    assert store.get_firing("nightly", t0 + timedelta(days=1)).cycle == 2
    assert len(helpers.CALLS) == 2 and store.get_lease("evolve:tiny-star") is None  # released

    # The recipe held by another run: skipped, with the holder named; the next firing retries.
    store.acquire_lease("evolve:tiny-star", "otherhost:42:abc", ttl=30)
    assert fire("nightly", str(recipe), scheduled_at=t0 + timedelta(days=2), **kw) == "skipped"
    f = store.get_firing("nightly", t0 + timedelta(days=2))
    assert "held by otherhost:42:abc" in f.error and "the next firing retries" in f.error
    store.release_lease("evolve:tiny-star", "otherhost:42:abc")

    # A firing left 'running' by a process that died is closed by the next one, which resumes the cycle.
    store.claim_firing("nightly", t0 + timedelta(days=3), recipe=str(recipe), holder="deadhost:1:x")
    assert fire("nightly", str(recipe), scheduled_at=t0 + timedelta(days=4), **kw) == "ok"
    dead = store.get_firing("nightly", t0 + timedelta(days=3))
    assert dead.status == FiringStatus.FAILED and "stopped renewing the lease" in dead.error

    # A recipe broken after it was scheduled: failed, with the field.
    recipe.write_text(recipe.read_text().replace("n = 4", 'n = "four"'))
    assert fire("nightly", str(recipe), scheduled_at=t0 + timedelta(days=5), **kw) == "failed"
    assert "stages[0].config.n" in store.get_firing("nightly", t0 + timedelta(days=5)).error


def test_list_shows_the_last_firing_and_its_error(recipe: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    helpers.reset(seconds=0, fail_first=True)
    assert _cli("schedule", "add", "--db", db, "--recipe", str(recipe), "--every", "1h")[0] == 0
    fire("tiny-star", str(recipe), cycle=STAND_IN, db=db)
    code, out = _cli("schedule", "list", "--db", db)
    assert "last firing: due" in out and "failed: RuntimeError: stand-in cycle failed on purpose" in out
    code, out = _cli("schedule", "firings", "tiny-star", "--db", db)
    assert code == 0 and "tiny-star due" in out and "Traceback" in out


@pytest.fixture
def schedulers(pg_url: str) -> Iterator[list[tuple[Any, Store]]]:
    """Two started-on-demand schedulers on one PostgreSQL store, each with its own engine (as two hosts)."""
    made: list[tuple[Any, Store]] = []
    yield made
    for sched, store in made:
        if sched.running:
            sched.shutdown(wait=True)
        store.close()


def _scheduler(pg_url: str, made: list[tuple[Any, Store]], results: list[str], workers: int = 1) -> Any:
    from apscheduler.events import EVENT_JOB_EXECUTED

    store = Store(pg_url)
    sched = make_scheduler(store, background=True, poll=0.2, workers=workers)
    jobstore = sched._jobstores["default"]
    read = jobstore.get_due_jobs

    def slow_read(now: datetime) -> list[Any]:
        due = read(now)
        if due:
            time.sleep(0.3)  # widen the window in which both schedulers hold the same due job
        return due

    jobstore.get_due_jobs = slow_read
    sched.add_listener(lambda e: results.append(e.retval), EVENT_JOB_EXECUTED)
    made.append((sched, store))
    return sched


@pytest.mark.timeout(120)
def test_two_schedulers_on_one_postgresql_run_each_due_firing_once(
    schedulers: list[tuple[Any, Store]], pg_url: str, recipe: Path
) -> None:
    helpers.reset(seconds=0.3)
    store = Store(pg_url)
    add_schedule(store, interval_trigger("2s"), recipe, schedule_id="often", cycle=STAND_IN, lease_ttl=5)
    results: list[str] = []
    a, b = _scheduler(pg_url, schedulers, results), _scheduler(pg_url, schedulers, results)
    a.start()
    b.start()
    time.sleep(7.5)
    a.shutdown(wait=True)
    b.shutdown(wait=True)

    ok = [f for f in store.list_firings("often") if f.status == FiringStatus.OK]
    assert len(ok) >= 2, store.list_firings("often")
    # Both schedulers fired the same due times; each ran once, by whichever claimed it first.
    assert results.count("duplicate") >= 1, results
    assert results.count("ok") == len(ok) == len(helpers.CALLS)
    assert sorted(c["holder"] for c in helpers.CALLS) == sorted(f.holder for f in ok)
    assert not helpers.overlaps()
    assert all(f.status != FiringStatus.RUNNING for f in store.list_firings("often"))
    store.close()


@pytest.mark.timeout(120)
def test_one_cycle_of_a_recipe_at_a_time_across_schedules_and_schedulers(
    schedulers: list[tuple[Any, Store]], pg_url: str, recipe: Path
) -> None:
    # Two schedules of one recipe, each firing more often than a cycle lasts, on two schedulers with two
    # workers each: plenty of chances to overlap, which only the recipe's lease prevents.
    helpers.reset(seconds=1.5)
    store = Store(pg_url)
    for sid in ("x", "y"):
        add_schedule(store, interval_trigger("1s"), recipe, schedule_id=sid, cycle=STAND_IN, lease_ttl=5)
    results: list[str] = []
    a, b = (_scheduler(pg_url, schedulers, results, workers=2) for _ in range(2))
    a.start()
    b.start()
    time.sleep(6)
    a.shutdown(wait=True)
    b.shutdown(wait=True)
    firings = store.list_firings(limit=None)
    assert len(helpers.CALLS) >= 2 and not helpers.overlaps(), helpers.CALLS
    assert len([f for f in firings if f.status == FiringStatus.OK]) == len(helpers.CALLS)
    skipped = [f for f in firings if f.status == FiringStatus.SKIPPED]
    assert any("held by" in f.error for f in skipped), [f.error for f in skipped]
    assert all(f.error for f in skipped) and all(f.status != FiringStatus.RUNNING for f in firings)
    store.close()


@pytest.mark.timeout(60)
def test_a_firing_later_than_the_grace_time_is_recorded_missed(db_url: str, recipe: Path) -> None:
    helpers.reset(seconds=0)
    store = Store(db_url)
    add_schedule(store, interval_trigger("1h"), recipe, schedule_id="late", cycle=STAND_IN, misfire_grace=1)
    due = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    with schedules._jobs(store) as manager:  # as if the scheduler had been down since `due`
        manager.modify_job("late", next_run_time=due)
    sched = make_scheduler(Store(db_url), background=True, poll=0.2)
    sched.start()
    deadline = time.monotonic() + 20
    while store.get_firing("late", due) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    sched.shutdown(wait=True)
    missed = store.get_firing("late", due)
    assert missed is not None and missed.status == FiringStatus.MISSED and "misfire grace" in missed.error
    assert not helpers.CALLS
    assert schedules.get_schedule(store, "late").next_run > datetime.now(UTC) + timedelta(minutes=50)
    store.close()
