"""`strop schedule ...`: self-evolution on a schedule (training/schedules.py has the design).

Typer and stdlib only at module level: apscheduler, sqlalchemy and the training stack load inside commands.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from strop.cli.common import fail

app = typer.Typer(
    no_args_is_help=True,
    help=(
        'Run recipes\' cycles on a schedule: `strop schedule add --recipe R --cron "0 3 * * *"`, then keep '
        "`strop schedule run` running on one or more hosts that share the store."
    ),
)

_DB = typer.Option("--db", help="Store URL or SQLite path (the schedules live in the store).")


def _store(db: str | None) -> Any:
    from strop.memory import Store, StoreError

    try:
        return Store(db)
    except StoreError as e:
        fail(str(e))


def _when(t: datetime | None) -> str:
    return "-" if t is None else t.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


@app.command("add")
def add_cmd(
    recipe: Annotated[
        Path,
        typer.Option("--recipe", "-r", help="Recipe TOML file; validated now, read again at each firing."),
    ],
    cron: Annotated[
        str | None,
        typer.Option(
            help='Crontab line: minute hour day month day_of_week, e.g. "0 3 * * *" (Sunday is 0 or 7).'
        ),
    ] = None,
    every: Annotated[str | None, typer.Option(help="Interval: 6h, 30m, 1h30m, 1d, 2w.")] = None,
    name: Annotated[str | None, typer.Option(help="Schedule id (default: the recipe's name).")] = None,
    cycles: Annotated[
        int | None,
        typer.Option(help="Stop once cycle N is done (default: never; each firing runs the next cycle)."),
    ] = None,
    misfire_grace: Annotated[
        str,
        typer.Option(
            help="A firing later than this (scheduler down or busy) is recorded missed, not run; the next one runs."
        ),
    ] = "1h",
    lease_ttl: Annotated[
        float, typer.Option(help="Seconds a killed firing keeps the recipe before another may take it over.")
    ] = 60.0,
    timezone: Annotated[
        str | None, typer.Option(help="Time zone of --cron, e.g. Europe/Paris (default: this host's).")
    ] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace a schedule with the same id.")] = False,
    db: Annotated[str | None, _DB] = None,
) -> None:
    """Add a schedule; refused (naming the field) if the trigger or the recipe is wrong."""
    from strop.training.schedules import ScheduleError, add_schedule
    from strop.training.triggers import TriggerError, cron_trigger, interval_trigger, parse_every

    if (cron is None) == (every is None):
        fail('give exactly one of --cron "0 3 * * *" or --every 6h')
    try:
        tz = None
        if timezone is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                tz = ZoneInfo(timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise TriggerError(
                    f"--timezone {timezone}: unknown time zone; use an IANA name such as Europe/Paris or UTC"
                ) from None
        trigger = cron_trigger(cron, tz) if cron is not None else interval_trigger(str(every), tz)
        grace = parse_every(misfire_grace, "--misfire-grace").total_seconds()
    except TriggerError as e:
        fail(str(e))
    store = _store(db)
    try:
        info = add_schedule(
            store,
            trigger,
            recipe,
            schedule_id=name,
            cycles=cycles,
            lease_ttl=lease_ttl,
            misfire_grace=grace,
            replace=replace,
        )
    except ScheduleError as e:
        fail(str(e))
    typer.echo(
        f"schedule {info.id}: recipe {info.recipe_name} ({info.recipe}), {info.trigger}, next run "
        f"{_when(info.next_run)}. Keep `strop schedule run` running on a host that shares this store."
    )


@app.command("list")
def list_cmd(db: Annotated[str | None, _DB] = None) -> None:
    """Schedules with their next run, last firing (status and error) and the recipe's current holder."""
    from strop.training.schedules import list_schedules

    infos = list_schedules(_store(db))
    if not infos:
        typer.echo('no schedules; add one with `strop schedule add --recipe R --cron "0 3 * * *"`')
        return
    for i in infos:
        cap = f", until cycle {i.cycles}" if i.cycles else ""
        typer.echo(
            f"{i.id}: {i.trigger}, next {'paused' if i.paused else _when(i.next_run)}{cap}; recipe "
            f"{i.recipe_name} ({i.recipe})"
        )
        if (f := i.last) is not None:
            what = f"cycle {f.cycle}" if f.cycle is not None else ""
            if f.error:
                what = f.error.splitlines()[0]
            typer.echo(
                f"    last firing: due {_when(f.scheduled_at)}: {f.status}{': ' + what if what else ''}"
            )
        if (lease := i.lease) is not None:
            typer.echo(
                f"    running: {lease.holder} since {_when(lease.acquired_at)}, lease until "
                f"{_when(lease.expires_at)}"
            )


@app.command("firings")
def firings_cmd(
    schedule_id: Annotated[str | None, typer.Argument(help="Only this schedule's firings.")] = None,
    limit: Annotated[int, typer.Option(help="Most recent firings to show.")] = 20,
    db: Annotated[str | None, _DB] = None,
) -> None:
    """Past firings, newest first, with their full errors."""
    firings = _store(db).list_firings(schedule_id, limit)
    if not firings:
        typer.echo("no firings yet")
    for f in firings:
        took = f" in {(f.finished_at - f.started_at).total_seconds() / 60:.1f} min" if f.finished_at else ""
        what = f" cycle {f.cycle}" if f.cycle is not None else ""
        typer.echo(f"{f.schedule_id} due {_when(f.scheduled_at)}: {f.status}{what}{took} on {f.holder}")
        if f.error:
            typer.echo("    " + f.error.rstrip().replace("\n", "\n    "))


def _change(action: str, schedule_id: str, db: str | None) -> None:
    from strop.training import schedules

    try:
        getattr(schedules, f"{action}_schedule")(_store(db), schedule_id)
    except schedules.ScheduleError as e:
        fail(str(e))
    typer.echo(f"schedule {schedule_id}: {action}d")


@app.command("remove")
def remove_cmd(
    schedule_id: Annotated[str, typer.Argument(help="Schedule id.")], db: Annotated[str | None, _DB] = None
) -> None:
    """Delete a schedule (its firings stay recorded; a cycle running now finishes)."""
    _change("remove", schedule_id, db)


@app.command("pause")
def pause_cmd(
    schedule_id: Annotated[str, typer.Argument(help="Schedule id.")], db: Annotated[str | None, _DB] = None
) -> None:
    """Stop firing until `strop schedule resume` (a cycle running now finishes)."""
    _change("pause", schedule_id, db)


@app.command("resume")
def resume_cmd(
    schedule_id: Annotated[str, typer.Argument(help="Schedule id.")], db: Annotated[str | None, _DB] = None
) -> None:
    """Fire again from the next due time (due times while paused are not caught up)."""
    _change("resume", schedule_id, db)


@app.command("run")
def run_cmd(
    workers: Annotated[
        int, typer.Option(help="Cycles of different schedules this process runs at once.")
    ] = 1,
    poll: Annotated[
        float, typer.Option(help="Seconds between reads of the schedules (to see ones added elsewhere).")
    ] = 10.0,
    db: Annotated[str | None, _DB] = None,
) -> None:
    """The scheduler: fire due schedules until stopped.

    Run it on as many hosts as you like: each due firing runs once, and one cycle of a recipe at a time.
    Stopping it waits for the running cycle; a SIGKILL is safe too (the recipe's lease expires and the next
    firing resumes the cycle).
    """
    import logging
    import signal
    import warnings

    from strop.memory.db import masked
    from strop.training.schedules import make_scheduler

    if workers < 1 or poll <= 0:
        fail("--workers must be at least 1 and --poll above 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
    store = _store(db)
    sched = make_scheduler(store, workers=workers, poll=poll)
    signal.signal(signal.SIGTERM, lambda *_: sched.shutdown(wait=False))
    typer.echo(
        f"scheduler on {masked(store.url)}: {workers} worker(s), reading schedules every {poll:g} s; "
        "Ctrl-C or SIGTERM stops it after the running cycle"
    )
    try:
        sched.start()
    except KeyboardInterrupt:
        sched.shutdown(wait=False)
    typer.echo("scheduler stopped; waiting for a running cycle to finish")
