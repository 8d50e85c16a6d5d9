"""`strop memory index|search`: reflection memory by hand. Loops and `strop eval --memory-k` index what is new
on their own before they recall; these commands let a user index ahead of time (the embedder loads once, not
inside a run) and look at what a problem would be shown. Heavy imports stay inside the commands."""

from __future__ import annotations

from typing import Annotated

import typer

from strop.cli import common
from strop.cli.common import DbOpt, OptionOpt, TasksOpt, fail, parse_options

app = typer.Typer(no_args_is_help=True)


@app.command("index")
def index_cmd(
    tasks: TasksOpt = "arithmetic",
    option: OptionOpt = None,
    n_tasks: Annotated[
        int | None,
        typer.Option(
            help="Train tasks to look failures up in (the first N; default as many as the runs have distinct tasks)."
        ),
    ] = None,
    db: DbOpt = None,
) -> None:
    """Remember the failures of every run on this task set (its train tasks only) that are not remembered yet.

    A failure is an episode's first wrong answer with its critique; it is embedded by its problem text
    (MiniLM) under the task set's label, e.g. arithmetic[word_problems=True]. Idempotent."""
    from strop.agents.evaluation import task_set_label
    from strop.agents.reflection import index_failures
    from strop.memory import Store, StoreError

    task_set = common.task_set(tasks, option)
    label = task_set_label(tasks, parse_options(option or []))
    try:
        with Store(db) as store:
            report = index_failures(store, task_set, label, n_tasks=n_tasks)  # type: ignore[arg-type]
    except StoreError as exc:
        fail(str(exc))
    skipped = f"; {report.skipped} skipped (held-out or unknown tasks)" if report.skipped else ""
    typer.echo(f"{label}: {report.indexed} failures indexed{skipped}; {report.total} remembered")


@app.command("search")
def search_cmd(
    problem: Annotated[str, typer.Argument(help="A problem text, as the actor would see it.")],
    tasks: TasksOpt = "arithmetic",
    option: OptionOpt = None,
    k: Annotated[int, typer.Option("-k", min=1, max=20, help="How many failures.")] = 3,
    db: DbOpt = None,
) -> None:
    """The remembered failures nearest to a problem, with their similarity: what a loop with memory_k=K shows."""
    from strop.agents.evaluation import task_set_label
    from strop.agents.reflection import memory_for, render_memory
    from strop.memory import Store, StoreError

    common.task_set(tasks, option)
    label = task_set_label(tasks, parse_options(option or []))
    try:
        with Store(db) as store:
            hits = memory_for(store).search(label, problem, k)  # type: ignore[arg-type]
    except StoreError as exc:
        fail(str(exc))
    if not hits:
        typer.echo(f"{label}: nothing remembered (run `strop memory index -t {tasks}` after a run on it)")
        return
    for h in hits:
        typer.echo(f"{h.score:.3f}  {h.task_id}")
    typer.echo(
        render_memory([{"problem": h.problem, "answer": h.answer, "critique": h.critique} for h in hits])
    )
