"""`strop evolve`: run a recipe's self-evolution cycles (collect, train, evaluate, promote), resumable.

Typer and stdlib only at module level: torch, trl and sqlalchemy load inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from strop.cli.common import fail, parse_options


def evolve_cmd(
    recipe: Annotated[
        Path, typer.Option("--recipe", "-r", help="Recipe TOML file, e.g. recipes/star-arithmetic.toml.")
    ],
    cycles: Annotated[
        int | None, typer.Option(help="Cycles to run (default: the recipe's `cycles`).")
    ] = None,
    db: Annotated[
        str | None, typer.Option("--db", help="Store URL or SQLite path (overrides the recipe's `db`).")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-o",
            help="Task-set option KEY=VALUE for every stage's task set (overrides the recipe's), "
            "repeatable: --option steps=2 --option word_problems=true.",
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="Run the next unfinished cycle, then exit (for cron, systemd timers, Kubernetes CronJobs). "
            "Ignores the recipe's `cycles`; with --cycles N, does nothing once cycle N is done.",
        ),
    ] = False,
    lease_ttl: Annotated[
        float,
        typer.Option(
            help="Seconds the recipe's lease outlives its last heartbeat (one every TTL/3): how soon a killed "
            "run's recipe can be taken over."
        ),
    ] = 60.0,
) -> None:
    """Run a recipe's cycles: each stage collects with its loop, trains a role, evaluates, promotes.

    Kill it at any point and run it again to continue where it stopped. One run of a recipe at a time: a
    second one (here or on another host on the same store) says who holds the recipe and exits with status 0;
    a killed run's hold expires after --lease-ttl seconds. Exit status: 0 done, nothing to do, or recipe busy;
    1 bad input, a failed cycle, or the hold taken over by another run (this one stalled past its TTL).
    """
    import warnings

    from strop.memory import Store
    from strop.memory.leases import LeaseHeldError, LeaseLostError
    from strop.training.cycle_lease import recipe_lease, run_cycles, target_cycle
    from strop.training.evolve import Evolution
    from strop.training.recipe import RecipeError, load_recipe

    try:
        r = load_recipe(recipe)
    except RecipeError as e:
        fail(str(e))
    if cycles is not None and cycles < 1:
        fail(f"--cycles must be at least 1, got {cycles}")
    if option:
        overrides = parse_options(option)
        for stage in r.stages:
            stage.tasks.options = {**stage.tasks.options, **overrides}
    # transformers 5 deprecations that TRL/PEFT trigger on every load; not ours to fix, only noise here.
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
    if lease_ttl <= 0:
        fail(f"--lease-ttl must be above 0 seconds, got {lease_ttl:g}")
    store = Store(db or r.db)
    try:
        evo = Evolution(r, store, progress=progress)
    except RecipeError as e:  # a task set, task option or model the recipe names that does not exist
        fail(str(e))
    try:
        with recipe_lease(store, r.name, ttl=lease_ttl) as keeper:
            if keeper.lease.previous is not None:
                p = keeper.lease.previous
                typer.echo(
                    f"took over recipe {r.name} from {p.holder}, gone since its last heartbeat at "
                    f"{p.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC (killed?); continuing its cycle"
                )
            target = target_cycle(evo, cycles=cycles, once=once)
            if target is None:
                typer.echo(f"{r.name}: all {cycles} cycles are done; nothing to do")
                return
            run_cycles(evo, target, keeper)
    except LeaseHeldError as e:
        held = e.lease
        typer.echo(
            f"{r.name} is being evolved by {held.holder} since {held.acquired_at:%Y-%m-%d %H:%M:%S} UTC "
            f"(lease expires {held.expires_at:%H:%M:%S} UTC unless renewed); not starting a second run"
        )
    except LeaseLostError as e:
        fail(str(e))


def register(app: typer.Typer) -> None:
    """Attach `strop evolve` to the root app."""
    app.command("evolve")(evolve_cmd)
