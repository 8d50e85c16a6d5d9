"""Scheduled self-evolution: APScheduler 3 with its SQLAlchemy job store in the trajectory store's database.

The schedules live in the store (table `apscheduler_jobs`, created by migration 0004), so `strop schedule add`
on one host and `strop schedule run` on others share them, and a scheduler that restarts finds them again.
Each firing runs the recipe's next unfinished cycle (`strop evolve --once`) in the scheduler's worker thread.

Three things make a schedule dependable rather than merely periodic:
- Run once per due time. APScheduler 3 lets every scheduler on a job store fire a due job. Each firing first
  claims the row (schedule, scheduled time) in `schedule_firings`; the scheduler that loses stands down. The
  recipe's lease (cycle_lease.py) then keeps firings of other times, and `strop evolve` run by hand, from
  overlapping the cycle.
- Never lose a failure. Every firing leaves a row: ok (with its cycle), failed (with the error), skipped (the
  lease was held; with the holder) or missed (the scheduler fired it later than the misfire grace time). The
  cycle is resumable, so the next firing retries whatever failed, from where it stopped.
- Catch up sanely. `coalesce=True`: a scheduler that was down for several due times fires once, not once per
  missed time. `misfire_grace_time` (default one hour): a firing later than that is recorded missed instead
  of starting a cycle at an unexpected hour; the next due time runs it.

APScheduler 3 sleeps until the next due time it knows of, so a schedule added by another process would wait
for that; the schedulers here also wake every `poll` seconds to read the job store again.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import traceback
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from strop.memory.firings import FiringRecord, FiringStatus
from strop.memory.leases import LeaseHeldError, LeaseRecord
from strop.memory.records import utcnow
from strop.training.cycle_lease import LEASE_TTL, lease_name, new_holder, recipe_lease
from strop.training.triggers import describe

log = logging.getLogger(__name__)

DEFAULT_CYCLE = "strop.training.cycle_lease:evolve_next_cycle"
MISFIRE_GRACE = 3600  # seconds (APScheduler wants whole seconds)
POLL = 10.0  # seconds between two reads of the job store


class ScheduleError(ValueError):
    """A schedule that cannot be added or changed; the message names the option or recipe field."""


class ScheduleInfo(BaseModel):
    id: str
    recipe: str
    recipe_name: str
    trigger: str
    next_run: datetime | None
    cycles: int | None = None
    lease_ttl: float = LEASE_TTL
    misfire_grace: int | None = MISFIRE_GRACE
    last: FiringRecord | None = None
    lease: LeaseRecord | None = None  # the recipe's lease while a cycle of it runs

    @property
    def paused(self) -> bool:
        return self.next_run is None


# ------------------------------------------------------------------------------------------------ firing
def fire(
    schedule_id: str,
    recipe: str,
    *,
    cycles: int | None = None,
    lease_ttl: float = LEASE_TTL,
    cycle: str = DEFAULT_CYCLE,
    scheduled_at: datetime | None = None,
    db: str | None = None,
) -> str:
    """One firing of a schedule; APScheduler calls it (by this importable name) in a worker thread.

    The scheduler's executor adds `scheduled_at` (the due time, the firing's key) and `db` (its store, so no
    URL or password is pickled into the job store). `cycle` is the dotted name of what runs under the lease,
    `cycle(recipe, store, keeper=..., cycles=...) -> int | None`; the default runs the next unfinished cycle.
    Returns the firing's status ('duplicate' when another scheduler had claimed it). Never raises for what
    the cycle did: the error is recorded on the firing instead, and the next firing retries.
    """
    from strop.memory import Store
    from strop.training.recipe import load_recipe

    at = scheduled_at if scheduled_at is not None else utcnow().replace(microsecond=0)
    store = Store(db)
    holder = new_holder()
    try:
        if not store.claim_firing(schedule_id, at, recipe=recipe, holder=holder):
            log.info("schedule %s: the firing due at %s was claimed by another scheduler", schedule_id, at)
            return "duplicate"
        status, k, error = FiringStatus.FAILED, None, None
        try:
            r = load_recipe(recipe)
            with recipe_lease(store, r.name, ttl=lease_ttl, holder=holder) as keeper:
                if keeper.lease.previous is not None:
                    log.warning(
                        "schedule %s: took over the expired lease of %s",
                        schedule_id,
                        keeper.lease.previous.holder,
                    )
                store.abandon_firings(
                    schedule_id,
                    holder,
                    f"its process stopped renewing the lease of recipe "
                    f"{r.name!r} (killed or hung); the firing due at {at} resumed the cycle",
                )
                k = _resolve(cycle)(r, store, keeper=keeper, cycles=cycles)
            status = FiringStatus.OK
        except LeaseHeldError as e:
            status, error = FiringStatus.SKIPPED, f"{e}; the next firing retries"
        except Exception as e:
            status, error = FiringStatus.FAILED, _error_text(e)
        store.finish_firing(schedule_id, at, status, cycle=k, error=error)
        if status == FiringStatus.OK:
            log.info(
                "schedule %s: firing due at %s ran %s",
                schedule_id,
                at,
                f"cycle {k}" if k is not None else f"nothing (all {cycles} cycles are done)",
            )
        else:
            log.error("schedule %s: firing due at %s %s: %s", schedule_id, at, status, error)
        return str(status)
    finally:
        store.close()


def _resolve(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _error_text(e: BaseException, limit: int = 4000) -> str:
    """The error first (what `schedule list` shows), then the end of the traceback."""
    tb = "".join(traceback.format_exception(e))
    head = f"{type(e).__name__}: {e}"
    return (head + "\n" + tb[-(limit - len(head)) :])[:limit]


# --------------------------------------------------------------------------------------- the scheduler
def _scheduler_classes() -> tuple[type, type, type, type]:
    """APScheduler classes with strop's two additions, built on first use (apscheduler loads lazily)."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.schedulers.blocking import BlockingScheduler

    class Polling:
        """Wake at least every `poll_interval` seconds: schedules added, paused or removed by other
        processes are read from the job store at the next wake-up."""

        poll_interval = POLL

        def _process_jobs(self) -> float | None:
            wait = super()._process_jobs()  # type: ignore[misc]
            return self.poll_interval if wait is None else min(wait, self.poll_interval)

    class Blocking(Polling, BlockingScheduler):
        pass

    class Background(Polling, BackgroundScheduler):
        pass

    class Manager(BackgroundScheduler):
        """Reads and writes schedules, never fires one: a scheduler that is shutting down would otherwise
        process due jobs once more (state stopped, not paused), consuming a due time it cannot run."""

        def _process_jobs(self) -> None:
            return None

    class FiringExecutor(ThreadPoolExecutor):
        """Hands `fire` the due time it runs for and the store it runs against."""

        def __init__(self, db_url: str, max_workers: int = 1) -> None:
            super().__init__(max_workers)
            self.db_url = db_url

        def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
            # Coalesced: one run time, the latest (see the module docstring).
            super()._do_submit_job(_Firing(job, scheduled_at=run_times[-1], db=self.db_url), run_times[-1:])

    return Blocking, Background, Manager, FiringExecutor


class _Firing:
    """A Job as APScheduler's run_job sees it, with the due time and the store added to its kwargs."""

    def __init__(self, job: Any, **extra: Any) -> None:
        self._job = job
        self.kwargs = {**job.kwargs, **extra}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._job, name)

    def __str__(self) -> str:
        return str(self._job)


def make_scheduler(
    store: Any, *, background: bool = False, workers: int = 1, poll: float = POLL, manager: bool = False
) -> Any:
    """A scheduler on the store's database, not started. `workers`: cycles this process runs at once
    (of different schedules; one schedule never overlaps itself). `manager`: one that never fires."""
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    blocking, bg, manage, executor = _scheduler_classes()
    sched = (manage if manager else bg if background else blocking)(
        jobstores={"default": SQLAlchemyJobStore(engine=store.engine, tablename="apscheduler_jobs")},
        executors={"default": executor(store.url, workers)},
        job_defaults={"coalesce": True, "misfire_grace_time": MISFIRE_GRACE, "max_instances": 1},
        timezone="UTC",
    )
    sched.poll_interval = poll

    def record(event: Any) -> None:
        """Firings that never reached `fire` (or that `fire` could not record) still leave a row."""
        if event.code == EVENT_JOB_MISSED:
            times, status = [event.scheduled_run_time], FiringStatus.MISSED
            why = "fired later than the misfire grace time allows; the next firing runs the cycle"
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            times, status = event.scheduled_run_times[-1:], FiringStatus.SKIPPED
            why = "the previous firing of this schedule was still running in this scheduler"
        else:
            times, status = [event.scheduled_run_time], FiringStatus.FAILED
            why = f"{type(event.exception).__name__}: {event.exception}\n{event.traceback}"
        try:
            job = sched.get_job(event.job_id)
            recipe = job.kwargs.get("recipe", "") if job is not None else ""
            for t in times:
                if (
                    not store.claim_firing(
                        event.job_id, t, recipe=recipe, holder=new_holder(), status=status, error=why
                    )
                    and status == FiringStatus.FAILED
                ):
                    store.finish_firing(event.job_id, t, status, error=why)
        except Exception:
            log.exception("schedule %s: could not record a %s firing", event.job_id, status)

    sched.add_listener(record, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR)
    return sched


@contextlib.contextmanager
def _jobs(store: Any) -> Iterator[Any]:
    """A paused scheduler on the job store: how another process adds, lists and changes schedules
    (APScheduler 3 writes to the store only through a started scheduler)."""
    sched = make_scheduler(store, manager=True)
    sched.start(paused=True)
    try:
        yield sched
    finally:
        sched.shutdown(wait=False)


# ------------------------------------------------------------------------------------------ management
def check_recipe(path: str | Path, store: Any) -> Any:
    """Load and validate a recipe the way a firing will (fields, task sets, models); ScheduleError if not."""
    from strop.memory.db import masked, resolve_db_url
    from strop.training.evolve import Evolution
    from strop.training.recipe import RecipeError, load_recipe

    try:
        recipe = load_recipe(path)
        if recipe.db is not None and resolve_db_url(recipe.db) != store.url:
            raise RecipeError(
                f"{path}: recipe field `db` is {recipe.db!r}, but scheduled cycles run against the "
                f"scheduler's store {masked(store.url)}: remove `db` from the recipe, or schedule "
                f"it with --db {recipe.db}"
            )
        Evolution(recipe, store, progress=False)  # task sets and models exist
    except RecipeError as e:
        raise ScheduleError(str(e) if str(path) in str(e) else f"--recipe {path}: {e}") from None
    return recipe


def add_schedule(
    store: Any,
    trigger: Any,
    recipe_path: str | Path,
    *,
    schedule_id: str | None = None,
    cycles: int | None = None,
    lease_ttl: float = LEASE_TTL,
    misfire_grace: float | None = MISFIRE_GRACE,
    replace: bool = False,
    cycle: str = DEFAULT_CYCLE,
) -> ScheduleInfo:
    """Validate the recipe and store the schedule; the schedulers running on this store pick it up."""
    if cycles is not None and cycles < 1:
        raise ScheduleError(f"--cycles must be at least 1, got {cycles}")
    if lease_ttl <= 0:
        raise ScheduleError(f"--lease-ttl must be above 0 seconds, got {lease_ttl:g}")
    if misfire_grace is not None and misfire_grace < 1:
        raise ScheduleError(f"--misfire-grace must be at least 1s, got {misfire_grace:g}s")
    if trigger.get_next_fire_time(None, utcnow()) is None:
        raise ScheduleError(f"{describe(trigger)} never fires (a date that does not exist?)")
    path = str(Path(recipe_path).expanduser().resolve())
    recipe = check_recipe(path, store)
    sid = schedule_id or recipe.name
    with _jobs(store) as sched:
        if sched.get_job(sid) is not None and not replace:
            raise ScheduleError(
                f"schedule {sid!r} exists; pass --replace to change it, or --name to add another"
            )
        sched.add_job(
            fire,
            trigger,
            id=sid,
            name=recipe.name,
            replace_existing=True,
            misfire_grace_time=None if misfire_grace is None else round(misfire_grace),
            kwargs={
                "schedule_id": sid,
                "recipe": path,
                "cycles": cycles,
                "lease_ttl": lease_ttl,
                "cycle": cycle,
            },
        )
    return get_schedule(store, sid)


def list_schedules(store: Any) -> list[ScheduleInfo]:
    with _jobs(store) as sched:
        jobs = sched.get_jobs()
    last = store.last_firings()
    out = []
    for job in sorted(jobs, key=lambda j: j.id):
        kw = job.kwargs
        out.append(
            ScheduleInfo(
                id=job.id,
                recipe=kw.get("recipe", ""),
                recipe_name=job.name,
                trigger=describe(job.trigger),
                next_run=job.next_run_time,
                cycles=kw.get("cycles"),
                lease_ttl=kw.get("lease_ttl", LEASE_TTL),
                misfire_grace=job.misfire_grace_time,
                last=last.get(job.id),
                lease=store.get_lease(lease_name(job.name)),
            )
        )
    return out


def get_schedule(store: Any, schedule_id: str) -> ScheduleInfo:
    for info in list_schedules(store):
        if info.id == schedule_id:
            return info
    raise ScheduleError(f"no schedule {schedule_id!r}; `strop schedule list` shows them")


def _change(store: Any, schedule_id: str, action: str) -> None:
    from apscheduler.jobstores.base import JobLookupError

    with _jobs(store) as sched:
        try:
            getattr(sched, f"{action}_job")(schedule_id)
        except JobLookupError:
            raise ScheduleError(f"no schedule {schedule_id!r}; `strop schedule list` shows them") from None


def remove_schedule(store: Any, schedule_id: str) -> None:
    """Delete the schedule (its firings stay in the store, for the record)."""
    _change(store, schedule_id, "remove")


def pause_schedule(store: Any, schedule_id: str) -> None:
    """No firing until `resume_schedule`; a cycle running now finishes."""
    _change(store, schedule_id, "pause")


def resume_schedule(store: Any, schedule_id: str) -> None:
    """Fire again from the next due time after now (due times while paused are not caught up)."""
    _change(store, schedule_id, "resume")
