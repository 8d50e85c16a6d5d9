"""`strop worker`: join a run's rollout from any host that can reach the store (docs/scale.md).

Typer and stdlib only at module level; the worker machinery loads inside the command.
"""

from __future__ import annotations

from typing import Annotated

import typer

from strop.cli.common import fail


def worker_cmd(
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="The run's store: a postgresql:// URL every host can reach "
            "(default $STROP_DB or ./strop.db).",
        ),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option(help="Serve this run only (default: every run with work left, oldest first)."),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Episodes in flight (the engine batches across them).")
    ] = 64,
    lease_ttl: Annotated[
        float,
        typer.Option(
            min=1.0,
            help="Seconds a claim outlives this worker's last heartbeat: "
            "how long its episodes wait if it dies.",
        ),
    ] = 60.0,
    poll: Annotated[float, typer.Option(min=0.05, help="Seconds between looks at an empty queue.")] = 1.0,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--exit-when-idle", help="Keep waiting for new runs instead of exiting when none has work."
        ),
    ] = False,
) -> None:
    """Run episodes from the store's work queue with this host's own engines, until no run has work left.

    A driver (`strop run LOOP ... --workers N`, or `strop evolve` with a recipe's scale section) enqueues a run's
    episodes and says how to run them; any number of `strop worker` processes on any hosts join it. Each
    claims a batch with a lease, writes every finished episode in the transaction that marks it done, and
    reloads its engines when the run asks for another model version. A worker killed mid-run loses its
    claims after --lease-ttl seconds and the others re-run them: no episode is written twice. SIGTERM or
    Ctrl-C stops it gracefully: the episodes in flight are finished and written first.

    Example: [bold]strop worker --db postgresql://strop@db-host/strop --concurrency 32[/bold]
    """
    import asyncio
    import logging
    import signal

    from strop.agents.work_spec import WorkSpecError
    from strop.agents.worker import Worker, WorkerSettings
    from strop.memory import Store, StoreError

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    settings = WorkerSettings(
        concurrency=concurrency, lease_ttl=lease_ttl, poll=poll, exit_when_idle=not wait
    )
    try:
        store = Store(db, create=False)
    except StoreError as e:
        fail(str(e))
    worker = Worker(store, settings)
    typer.echo(f"worker {worker.owner} on {store!r}" + (f", run {run_id}" if run_id else ", every open run"))

    async def go():  # type: ignore[no-untyped-def]
        # SIGTERM (a pod being stopped) and Ctrl-C: finish the episodes in flight, claim nothing more, exit.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        return await worker.run(run_id)

    try:
        stats = asyncio.run(go())
    except WorkSpecError as e:
        fail(str(e))
    finally:
        store.close()
    store_share = (stats.claim_seconds + stats.write_seconds) / max(stats.wall_seconds, 1e-9)
    typer.echo(
        f"{stats.episodes} episodes written in {stats.wall_seconds:.0f} s ({stats.failed} raised, "
        f"{stats.lost} lost to expired leases, {stats.reloads} reloads); "
        f"{store_share:.1%} of the time claiming and writing"
    )


def register(app: typer.Typer) -> None:
    app.command("worker")(worker_cmd)
