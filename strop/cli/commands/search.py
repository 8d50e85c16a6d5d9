"""`strop eval-search`: greedy, majority vote, PRM reranking and PRM-guided MCTS at equal budgets of generated
tokens, on held-out tasks; a table and a plot of accuracy against budget. With `--temperatures`, each sampled
method's temperature is chosen first on training tasks. Heavy imports stay inside."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from strop.cli import common
from strop.cli.common import DbOpt, OptionOpt, fail, parse_options

if TYPE_CHECKING:
    from strop.agents.search_eval import SearchEvalResult


def _numbers(flag: str, text: str, kind: type, example: str) -> list[Any]:
    try:
        values = sorted({kind(v) for v in text.split(",") if v.strip()})
    except ValueError:
        fail(f"{flag} {text}: give numbers separated by commas, e.g. {example}")
    if not values or min(values) <= 0:
        fail(f"{flag} {text}: give at least one positive number, e.g. {example}")
    return values


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
    temperature: Annotated[
        float,
        typer.Option(
            help="Sampling temperature of every sampled method when no --temperatures sweep is asked."
        ),
    ] = 0.8,
    temperatures: Annotated[
        str | None,
        typer.Option(
            help="Sweep these sampling temperatures (comma-separated, e.g. 0.2,0.4,0.6,0.8) on TRAINING problems "
            "only: a seeded sample of --sweep-tasks training problems, every sampled method at every budget and "
            "temperature. Each method then runs once on the held-out problems at the temperature it did best "
            "with on training (ties: the lowest). The held-out problems are not read until the choice is made."
        ),
    ] = None,
    sweep_tasks: Annotated[
        int, typer.Option(min=1, help="Training problems in the sweep's sample (with --temperatures).")
    ] = 16,
    sweep_seed: Annotated[int, typer.Option(help="Seed of the sweep's sample of training problems.")] = 0,
    plot: Annotated[Path | None, typer.Option(help="Write accuracy against budget to this PNG.")] = None,
    db: DbOpt = None,
) -> None:
    """Compare search with sampling at equal cost: greedy, best-of-N majority, best-of-N reranked by the PRM,
    and MCTS guided by the PRM (no ground truth at test time), at each budget of generated tokens, on held-out
    problems. With --temperatures, the sampling temperature of each method is first chosen on training
    problems only (a sweep), then applied once to the held-out problems and compared with greedy."""
    from strop.agents.evaluation import task_set_label
    from strop.agents.runner import load_version_engine
    from strop.agents.search_eval import SearchEvalConfig, evaluate_search
    from strop.critics.scorer import StepScorer
    from strop.memory import Store

    levels = _numbers("--budgets", budgets, int, "256,512,1024")
    sweep = _numbers("--temperatures", temperatures, float, "0.2,0.4,0.6,0.8") if temperatures else None
    if temperature <= 0:
        fail(f"--temperature {temperature}: give a sampling temperature above 0 (greedy is always compared)")
    store = Store(db)
    version = common.version(store, model)
    prm_version = common.version(store, prm, "--prm") if prm is not None else version
    task_set = common.task_set(tasks, option)
    label = task_set_label(tasks, parse_options(option or []))
    cfg = SearchEvalConfig(
        n_tasks=n_tasks,
        budgets=levels,
        max_tokens=max_tokens,
        temperature=temperature,
        temperatures=sweep,
        sweep_tasks=sweep_tasks,
        sweep_seed=sweep_seed,
    )

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
    _print(res, levels, title=f"{version.name} on {label}")
    if plot is not None:
        _plot(res.accuracy, levels, plot, title=f"{version.name} on {label}")
        typer.echo(f"wrote {plot}")


def _print(res: SearchEvalResult, levels: list[int], *, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from strop.agents.search_eval import METHODS, SAMPLED

    console = Console()
    if res.sweep is not None:
        sw = res.sweep
        temps = sorted({t for per in sw.accuracy.values() for by_t in per.values() for t in by_t})
        table = Table(
            title=f"{title}: temperature sweep on {sw.n_tasks} training problems (greedy {100 * sw.greedy:.1f}%)"
        )
        for col in ("method", "budget", *(f"T {t:g}" for t in temps), "chosen T"):
            table.add_column(col)
        for m in SAMPLED:
            for b in levels:
                cells = [f"{100 * sw.accuracy[m][b][t]:.1f}%" for t in temps]
                table.add_row(m, str(b), *cells, f"{sw.chosen[m][b]:g}")
        console.print(table)
        chosen = "; ".join(f"{m} {', '.join(f'{sw.chosen[m][b]:g} @{b}' for b in levels)}" for m in SAMPLED)
        typer.echo(f"temperatures chosen on {sw.n_tasks} training problems only (ties: the lowest): {chosen}")
        typer.echo(
            "(cells: training-split accuracy; the held-out problems below were run once, at the chosen T)"
        )
    table = Table(title=f"{title}: held-out accuracy at equal generated-token budgets")
    table.add_column("method")
    for b in levels:
        table.add_column(f"{b} tokens")

    def cell(m: str, b: int) -> str:
        text = f"{100 * res.accuracy[m][b]:.1f}% ({res.tokens[m][b]:.0f} tok"
        if res.sweep is not None and m in SAMPLED:
            diff = 100 * (res.accuracy[m][b] - res.accuracy["greedy"][b])
            text += f", T {res.temperature[m][b]:g}, {diff:+.1f} vs greedy"
        return text + ")"

    for m in METHODS:
        table.add_row(m, *(cell(m, b) for b in levels))
    console.print(table)
    typer.echo("(each cell: held-out accuracy, and the mean tokens each task really cost)")


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
