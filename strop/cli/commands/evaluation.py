"""`strop eval`: a model version's accuracy on a task set, recorded on the version.

Typer and stdlib only at module level: torch, transformers and sqlalchemy load inside the command.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from strop.cli.common import (
    DbOpt,
    ModelOpt,
    OptionOpt,
    SystemOpt,
    TasksOpt,
    fail,
    parse_options,
    task_set,
    tasks_of,
    version,
)


def eval_cmd(
    model: ModelOpt,
    tasks: TasksOpt = "arithmetic",
    option: OptionOpt = None,
    split: Annotated[str, typer.Option(help="train or heldout.")] = "heldout",
    n_tasks: Annotated[int, typer.Option(help="Tasks to evaluate on.")] = 100,
    k: Annotated[int | None, typer.Option(help="Also measure pass@k with k sampled answers.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most new tokens per answer.")] = 64,
    system: SystemOpt = None,
    memory_k: Annotated[
        int,
        typer.Option(
            "--memory-k",
            min=0,
            max=20,
            help="Reflection memory: show each task its K most similar past failures on this task set's train tasks "
            "(indexed first; see `strop memory index`). Recorded apart, as <set>/<split>/memory<K>/pass@1.",
        ),
    ] = 0,
    db: DbOpt = None,
) -> None:
    """Accuracy on held-out tasks (greedy pass@1, and pass@k when asked), recorded on the model version.

    The scores are recorded under the task set's label with its options (arithmetic[word_problems=True]/...),
    so evaluations of one set under other options never overwrite each other.
    """
    from strop.agents.evaluation import EvalConfig, evaluate, task_set_label
    from strop.agents.runner import load_version_engine
    from strop.memory import Store
    from strop.sandbox.tasks import Split

    if split not in {s.value for s in Split}:
        fail(f"--split must be one of {', '.join(s.value for s in Split)}, got {split!r}")
    chosen_set = task_set(tasks, option)
    tasks_of(chosen_set, Split(split), n_tasks)  # a missing or malformed file fails before a model loads
    store = Store(db)
    chosen = version(store, model)
    label = task_set_label(tasks, parse_options(option))
    cfg = EvalConfig(
        split=Split(split),
        n_tasks=n_tasks,
        k=k,
        max_tokens=max_tokens,
        system_prompt=system,
        memory_k=memory_k,
        memory_scope=label if memory_k else None,
    )

    async def go():  # type: ignore[no-untyped-def]
        engine = load_version_engine(chosen)
        try:
            return await evaluate(
                engine, chosen_set, store=store, model_id=chosen.id, config=cfg, label=label
            )
        finally:
            await engine.close()

    res = asyncio.run(go())
    with_memory = f" with memory k={memory_k}" if memory_k else ""
    line = f"{chosen.name}: {label}/{split}{with_memory} pass@1 {res.pass_at_1:.1%} on {res.n_tasks} tasks"
    if res.pass_at_k is not None:
        line += f", pass@{k} {res.pass_at_k:.1%}"
    typer.echo(line + f" (recorded on {chosen.id})")
    if res.skipped:  # tasks the model could not be asked (too long for its context...): not counted as wrong
        from strop.agents.runner import skipped_line

        typer.echo(f"{skipped_line(res.skipped)} (not scored)")


def register(app: typer.Typer) -> None:
    """Attach `strop eval` to the root app."""
    app.command("eval")(eval_cmd)
