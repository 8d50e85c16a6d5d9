"""`strop eval-search`: greedy, majority vote, PRM reranking and PRM-guided MCTS at equal budgets of generated
tokens, on held-out tasks; a table and a plot of accuracy against budget. Heavy imports stay inside."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from strop.cli import common
from strop.cli.common import DbOpt, OptionOpt, fail, parse_options


def eval_search_cmd(
    model: Annotated[
        str, typer.Option("--model", "-m", help="The policy: registry name/id, cache name or folder.")
    ],
    prm: Annotated[
        str | None,
        typer.Option(
            help="The step scorer (process reward model) for reranking and search; default the policy itself."
        ),
    ] = None,
    tasks: Annotated[
        str, typer.Option("--tasks", "-t", help="Task set name (its held-out tasks are used).")
    ] = "arithmetic",
    option: OptionOpt = None,
    budgets: Annotated[
        str, typer.Option(help="Generated tokens per task, comma-separated.")
    ] = "256,512,1024",
    n_tasks: Annotated[int, typer.Option(help="Held-out tasks (the first n).")] = 50,
    max_tokens: Annotated[int, typer.Option(help="Most tokens per sampled answer.")] = 96,
    plot: Annotated[Path | None, typer.Option(help="Write accuracy against budget to this PNG.")] = None,
    db: DbOpt = None,
) -> None:
    """Compare search with sampling at equal cost: greedy, best-of-N majority, best-of-N reranked by the PRM,
    and MCTS guided by the PRM (no ground truth at test time), at each budget of generated tokens."""
    from strop.agents.evaluation import task_set_label
    from strop.agents.runner import load_version_engine
    from strop.agents.search_eval import METHODS, SearchEvalConfig, evaluate_search
    from strop.critics.scorer import StepScorer
    from strop.memory import Store

    try:
        levels = sorted({int(b) for b in budgets.split(",") if b.strip()})
    except ValueError:
        fail(f"--budgets {budgets}: give token counts separated by commas, e.g. 256,512,1024")
    if not levels or min(levels) < 1:
        fail(f"--budgets {budgets}: give at least one positive token count")
    store = Store(db)
    version = common.version(store, model)
    prm_version = common.version(store, prm, "--prm") if prm is not None else version
    task_set = common.task_set(tasks, option)
    label = task_set_label(tasks, parse_options(option or []))
    cfg = SearchEvalConfig(n_tasks=n_tasks, budgets=levels, max_tokens=max_tokens)

    async def go() -> Any:
        engine = load_version_engine(version)
        prm_engine = load_version_engine(prm_version) if prm_version.id != version.id else engine
        try:
            return await evaluate_search(
                engine,
                StepScorer(prm_engine),
                task_set,
                store=store,
                model_id=version.id,
                label=label,
                config=cfg,
            )
        finally:
            await engine.close()
            if prm_engine is not engine:
                await prm_engine.close()

    res = asyncio.run(go())
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{version.name} on {label}: held-out accuracy at equal generated-token budgets")
    table.add_column("method")
    for b in levels:
        table.add_column(f"{b} tokens")
    for m in METHODS:
        table.add_row(m, *(f"{100 * res.accuracy[m][b]:.1f}% ({res.tokens[m][b]:.0f} tok)" for b in levels))
    Console().print(table)
    typer.echo("(each cell: held-out accuracy, and the mean tokens each task really cost)")
    if plot is not None:
        _plot(res.accuracy, levels, plot, title=f"{version.name} on {label}")
        typer.echo(f"wrote {plot}")


def _plot(res: dict[str, dict[int, float]], levels: list[int], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, per in res.items():
        ax.plot(levels, [100 * per[b] for b in levels], "o-", label=method)
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(b) for b in levels])
    ax.set_xlabel("generated tokens per task")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def register(app: typer.Typer) -> None:
    app.command("eval-search", no_args_is_help=True)(eval_search_cmd)
