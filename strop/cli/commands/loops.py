"""Top-level `strop` commands for loops: `strop run <loop>` and `strop eval`.

Typer and stdlib only at module level: torch, transformers and sqlalchemy load inside the commands.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

run_app = typer.Typer(no_args_is_help=True, help="Run episodes of a loop and record them in the store.")

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Registry name/id, cache name (tiny, smollm2-135m) or model folder.")]
TasksOpt = Annotated[str, typer.Option("--tasks", "-t", help="Task set name (see `strop tasks list`).")]
DbOpt = Annotated[str | None, typer.Option("--db", help="Store URL or SQLite path (default $STROP_DB or ./strop.db).")]
SystemOpt = Annotated[str | None, typer.Option("--system", help="System message before each task prompt.")]


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _setup(model: str, tasks: str, db: str | None):  # type: ignore[no-untyped-def]
    """Store, task set and model version, with the user's mistakes turned into one-line errors."""
    from strop.agents.models import ModelNotFoundError
    from strop.agents.runner import resolve_version
    from strop.memory import Store
    from strop.sandbox.tasks import load_task_set

    try:
        task_set = load_task_set(tasks)
    except (KeyError, ValueError) as e:
        _fail(str(e.args[0] if e.args else e))
    store = Store(db)
    try:
        version = resolve_version(store, model)
    except ModelNotFoundError as e:
        _fail(str(e))
    return store, task_set, version


@run_app.command("best-of-n")
def best_of_n_cmd(
    model: ModelOpt,
    tasks: TasksOpt = "arithmetic",
    n: Annotated[int, typer.Option(help="Answers sampled per task.")] = 8,
    episodes: Annotated[int, typer.Option(help="Episodes (one per training task).")] = 64,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.8,
    max_tokens: Annotated[int, typer.Option(help="Most new tokens per answer.")] = 64,
    system: SystemOpt = None,
    concurrency: Annotated[int, typer.Option(help="Episodes in flight (the engine batches across them).")] = 64,
    run_id: Annotated[str | None, typer.Option(help="Resume this run id (printed at the start of every run).")] = None,
    db: DbOpt = None,
) -> None:
    """Best-of-N rejection sampling (STaR): sample N answers per task, verify, keep the correct ones as SFT data."""
    from strop.agents.loops import best_of_n
    from strop.agents.runner import Runner, load_version_engine
    from strop.critics.verifier import VerifierCritic
    from strop.memory.records import RunRecord, new_id
    from strop.sandbox.tasks import Split

    store, task_set, version = _setup(model, tasks, db)
    cfg = best_of_n.BestOfNConfig(n=n, temperature=temperature, max_tokens=max_tokens, system_prompt=system)
    run = RunRecord(id=run_id or new_id(), loop=best_of_n.LOOP_NAME, model_ids=[version.id],
                    config={"task_set": task_set.name, "loop": cfg.model_dump(mode="json")})
    typer.echo(f"run {run.id}: best-of-{n} with {version.name} on {episodes} {task_set.name} tasks "
               f"(resume with --run-id {run.id})")

    async def go():  # type: ignore[no-untyped-def]
        engine = load_version_engine(version)
        try:
            graph = best_of_n.build_graph(engine, VerifierCritic(task_set), cfg)
            return await Runner(store, concurrency=concurrency).run(graph, task_set.tasks(Split.TRAIN, episodes), run)
        finally:
            await engine.close()

    res = asyncio.run(go())
    typer.echo(f"{res.episodes} episodes, {res.samples} answers, {res.correct} correct ({res.accuracy:.1%}), "
               f"pass@{n} {res.pass_rate:.1%}, {res.examples} SFT examples; {res.seconds:.0f} s")


def eval_cmd(
    model: ModelOpt,
    tasks: TasksOpt = "arithmetic",
    split: Annotated[str, typer.Option(help="train or heldout.")] = "heldout",
    n_tasks: Annotated[int, typer.Option(help="Tasks to evaluate on.")] = 100,
    k: Annotated[int | None, typer.Option(help="Also measure pass@k with k sampled answers.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most new tokens per answer.")] = 64,
    system: SystemOpt = None,
    db: DbOpt = None,
) -> None:
    """Accuracy on held-out tasks (greedy pass@1, and pass@k when asked), recorded on the model version."""
    from strop.agents.evaluation import EvalConfig, evaluate
    from strop.agents.runner import load_version_engine
    from strop.sandbox.tasks import Split

    if split not in {s.value for s in Split}:
        _fail(f"--split must be one of {', '.join(s.value for s in Split)}, got {split!r}")
    store, task_set, version = _setup(model, tasks, db)
    cfg = EvalConfig(split=Split(split), n_tasks=n_tasks, k=k, max_tokens=max_tokens, system_prompt=system)

    async def go():  # type: ignore[no-untyped-def]
        engine = load_version_engine(version)
        try:
            return await evaluate(engine, task_set, store=store, model_id=version.id, config=cfg)
        finally:
            await engine.close()

    res = asyncio.run(go())
    line = f"{version.name}: {task_set.name}/{split} pass@1 {res.pass_at_1:.1%} on {res.n_tasks} tasks"
    if res.pass_at_k is not None:
        line += f", pass@{k} {res.pass_at_k:.1%}"
    typer.echo(line + f" (recorded on {version.id})")


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the root app."""
    app.add_typer(run_app, name="run", help="Run a loop: `strop run best-of-n --model M --tasks SET`.")
    app.command("eval")(eval_cmd)
