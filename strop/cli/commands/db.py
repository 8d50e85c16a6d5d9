"""`strop db ...` commands: migrations, stats and exports of the trajectory store.

Only typer and the standard library are imported here; SQLAlchemy, datasets and rich load inside the
commands so `strop --help` stays fast.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from strop.cli.common import fail

app = typer.Typer(no_args_is_help=True)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="STROP_DB",
        help="Store URL (sqlite:///path.db, postgresql://user@host/db) or a SQLite file path. Default ./strop.db.",
    ),
]


class ExportKind(StrEnum):
    sft = "sft"
    pairs = "pairs"
    dpo = "dpo"  # = pairs: prompt/chosen/rejected
    rewards = "rewards"
    values = "values"
    turns = "turns"


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    parquet = "parquet"


@app.command()
def upgrade(
    db: DbOption = None,
    revision: Annotated[str, typer.Option(help="Target Alembic revision.")] = "head",
) -> None:
    """Create the store or migrate it to the schema this strop needs (the only command that alters tables)."""
    from strop.memory import StoreError
    from strop.memory import db as store_db

    url = store_db.resolve_db_url(db)
    engine = store_db.make_engine(url)
    try:
        with store_db.translate_errors(url, 30.0):
            with engine.connect() as conn:
                before = store_db.current_revision(conn)
            store_db.upgrade(engine, revision)
            with engine.connect() as conn:
                after = store_db.current_revision(conn)
    except StoreError as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    where = store_db.masked(url)
    if before == after:
        typer.echo(f"{where}: already at {after} (head {store_db.head_revision()})")
    else:
        typer.echo(f"{where}: upgraded {before or 'empty'} -> {after}")


@app.command()
def current(db: DbOption = None) -> None:
    """Show the store's schema revision and whether it needs `strop db upgrade`."""
    from strop.memory import StoreError
    from strop.memory import db as store_db

    url = store_db.resolve_db_url(db)
    if store_db.is_sqlite(url) and not store_db.sqlite_exists(url):
        fail(str(store_db.missing_sqlite_error(url)))
    engine = store_db.make_engine(url)
    try:
        with store_db.translate_errors(url, 30.0), engine.connect() as conn:
            rev = store_db.current_revision(conn)
    except StoreError as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    head = store_db.head_revision()
    state = "up to date" if rev == head else f"needs `strop db upgrade` (head is {head})"
    typer.echo(f"{store_db.masked(url)}: revision {rev or 'none (empty database)'}, {state}")


def _table(title: str, rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    if not rows:
        table.add_column("(empty)")
        return table
    for col in rows[0]:
        table.add_column(col, justify="right" if isinstance(rows[0][col], int | float) else "left")
    for row in rows:
        table.add_row(*(_cell(v) for v in row.values()))
    return table


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


@app.command()
def stats(db: DbOption = None) -> None:
    """Counts per run, loop, example kind and role, and consumer, as tables; running training jobs with their
    lease, and the claims stuck in abandoned jobs or released from them."""
    from rich.console import Console

    from strop.memory import Store, StoreError
    from strop.memory.export import stats as store_stats

    try:
        with Store(db, create=False) as store:
            data = store_stats(store)
            totals = store.counts()
            jobs = store.job_lease_report()
    except StoreError as exc:
        fail(str(exc))
    for row in data["runs"]:
        row["run"] = row["run"][:12]  # ids are 32 hex chars; 12 identify a run and keep the table readable
    console = Console()
    console.print(f"store {store!r}: " + ", ".join(f"{v} {k}" for k, v in totals.items()))
    for name, title in (
        ("runs", "Runs"),
        ("loops", "Loops"),
        ("examples", "Training examples by kind and role"),
        ("consumers", "Consumption by consumer"),
    ):
        console.print(_table(title, data[name]))
    _print_jobs(console, jobs)


def _print_jobs(console: Any, report: Any) -> None:
    """Running jobs and their leases: a job whose lease lapsed or whose process is gone holds its claims
    until the next claim (any `strop train` or cycle) settles it."""
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    rows = [
        {
            "job": r.job_id[:12],
            "algorithm": r.algorithm,
            "lease": r.lease,
            "holder": r.holder,
            "heartbeat": None
            if r.heartbeat_at is None
            else f"{(now - r.heartbeat_at).total_seconds():.0f} s ago",
            "claims": r.claims,
        }
        for r in report.running
    ]
    console.print(_table("Running training jobs", rows))
    console.print(
        f"training claims: {report.stuck_claims} stuck in abandoned jobs (lease lapsed or process gone; the "
        f"next claim returns them), {report.released_claims} released from {report.released_jobs} abandoned "
        "jobs so far"
    )


@app.command()
def export(
    kind: Annotated[ExportKind, typer.Option(help="Which training examples.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file.")],
    format: Annotated[ExportFormat, typer.Option("--format", help="File format.")] = ExportFormat.jsonl,
    role: Annotated[str | None, typer.Option(help="Only this role: policy, critic or generator.")] = None,
    db: DbOption = None,
) -> None:
    """Export training examples in TRL's format (one payload per line / row)."""
    from strop.memory import Store, StoreError
    from strop.memory.export import export_examples

    try:
        with Store(db, create=False) as store:
            n = export_examples(store, kind.value, format.value, out, role=role)
    except (StoreError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"wrote {n} {kind.value} examples to {out}")
