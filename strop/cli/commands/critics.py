"""`strop eval-critic`: the critic benchmark (ProcessBench-style error identification, RealCritic-style
correction) on labelled held-out solutions or on a ProcessBench file. Heavy imports stay inside the command."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from strop.cli.commands.loops import DbOpt, OptionOpt, _fail, _task_set, _version


def eval_critic_cmd(
    critic: Annotated[str, typer.Option("--critic", "-c", help="The critic model: registry name/id, cache name or folder.")],
    tasks: Annotated[str, typer.Option(
        "--tasks", "-t", help="A task set name (labelled solutions are built from its held-out tasks: references, and "
        "references corrupted in known ways), or a ProcessBench file (.json list or .jsonl of {id, generator, "
        "problem, steps, final_answer_correct, label}).")] = "arithmetic",
    option: OptionOpt = None,
    n_items: Annotated[int, typer.Option(help="Labelled solutions to build (half right, half with one wrong step).")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the labelled set; the same seed builds the same items.")] = 0,
    kinds: Annotated[str, typer.Option(help="Corruptions, comma-separated: calculation, operand, copy, drop.")] =
        "calculation,operand,copy,drop",
    from_run: Annotated[list[str] | None, typer.Option(
        help="Also label the policy's own answers from this stored best-of-N run (held-out tasks, steps checked "
        "one by one); repeatable.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens per critique (greedy).")] = 160,
    shots: Annotated[int, typer.Option(help="Worked critiques shown first, as earlier chat turns (0-3).")] = 1,
    db: DbOpt = None,
) -> None:
    """Score a step-wise critic: does it find the first wrong step (F1), and does its correction come out right?

    Every critique is stored (an ordinary run: interrupted, it resumes), and the scores are recorded on the
    critic's model version under '<set>/critic/...'.
    """
    from strop.agents.critic_eval import CriticEvalConfig, evaluate_critic, labelled_set
    from strop.agents.evaluation import task_set_label
    from strop.agents.runner import load_version_engine
    from strop.cli.commands._options import parse_options
    from strop.critics.benchmark import (
        LabelledSetError,
        LabelledSolutionSet,
        labels_from_store,
        load_processbench,
    )
    from strop.memory import Store

    store = Store(db)
    version = _version(store, critic, "--critic")
    path = Path(tasks).expanduser()
    cfg = CriticEvalConfig(n_items=n_items, seed=seed, max_tokens=max_tokens, shots=shots,
                           kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()))
    try:
        if path.suffix in (".json", ".jsonl") or path.is_file():
            if not path.is_file():
                _fail(f"--tasks {tasks}: no such file; give a ProcessBench .json/.jsonl file or a task set name")
            items = LabelledSolutionSet(load_processbench(path)[:n_items], name=f"processbench:{path.stem}")
            label = items.name
        else:
            task_set = _task_set(tasks, option)
            label = task_set_label(tasks, parse_options(option or []))
            extra = labels_from_store(store, from_run, task_set) if from_run else []
            items = labelled_set(task_set, cfg, label, extra=extra)
    except LabelledSetError as e:
        _fail(str(e))

    async def go() -> Any:
        engine = load_version_engine(version)
        try:
            return await evaluate_critic(engine, items, store=store, model_id=version.id, label=label, config=cfg)
        finally:
            await engine.close()

    res = asyncio.run(go())
    _report(version.name, label, res)


def _report(name: str, label: str, res: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    s = res.scores

    def pct(key: str) -> str:
        v = s.get(key)
        return "-" if v is None else f"{100 * v:.1f}%"

    table = Table(title=f"{name} as a critic on {label} ({res.n_items} labelled solutions)")
    for col in ("F1", "first wrong step found", "right accepted", "correction", "wrong fixed", "right kept", "unparsed"):
        table.add_column(col)
    table.add_row(pct("f1"), f"{pct('acc_erroneous')} of {s.get('n_erroneous')}",
                  f"{pct('acc_correct')} of {s.get('n_correct')}", pct("correction_acc"), pct("fixed"), pct("kept"),
                  str(s.get("unparsed")))
    Console().print(table)
    typer.echo(f"recorded on {res.model_id} under {label}/critic/ (run {res.run_id})")


def register(app: typer.Typer) -> None:
    app.command("eval-critic", no_args_is_help=True)(eval_critic_cmd)
