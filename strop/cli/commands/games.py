"""`strop eval-game`: models against fixed opponents (per seat, illegal-move rate) and an Elo table over them
and the models against each other. Typer and stdlib only at module level; the rest loads inside."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from strop.cli import common
from strop.cli.common import DbOpt, fail, one_line, parse_options


def eval_game_cmd(
    model: Annotated[
        list[str],
        typer.Option(
            "--model",
            "-m",
            help="A model (registry name/id, cache name or folder); repeat for several checkpoints.",
        ),
    ],
    game: Annotated[
        str, typer.Option("--game", "-g", help="tictactoe, kuhn_poker or simple_negotiation.")
    ] = "tictactoe",
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-o",
            metavar="KEY=VALUE",
            help="Game option, repeatable (e.g. -o rounds=5 for kuhn_poker).",
        ),
    ] = None,
    n_tasks: Annotated[
        int, typer.Option(min=1, help="Held-out seeds; each is played from both seats against each opponent.")
    ] = 50,
    opponents: Annotated[
        str, typer.Option(help="Fixed opponents, comma-separated: random, heuristic.")
    ] = "random,heuristic",
    max_tokens: Annotated[int, typer.Option(min=1, help="Most new tokens per move (greedy).")] = 64,
    elo_games: Annotated[
        int,
        typer.Option(
            min=0,
            help="Games per pair between models, and between the fixed "
            "opponents, for the Elo table (0: fixed opponents only).",
        ),
    ] = 20,
    db: DbOpt = None,
) -> None:
    """Play each model greedily against fixed opponents on held-out seeds, from both seats; then fit Elo ratings.

    Per model: win/draw/loss by seat against each opponent and the illegal-move rate, recorded on the model
    version as [bold]{game}/vs_{opponent}/...[/bold]; the games are stored (interrupted, it resumes). The Elo
    table rates the models, 'random' (anchored at 1000) and 'heuristic' from every series played; each model's
    rating is recorded as [bold]{game}/elo[/bold] (`strop report` draws it).
    """
    from strop.agents.game_eval import (
        EngineOpponent,
        GameEvalConfig,
        evaluate_games,
        play_match,
    )
    from strop.agents.runner import load_version_engine
    from strop.memory import Store
    from strop.sandbox.games import HeuristicOpponent, RandomOpponent
    from strop.sandbox.tasks.games import GameTaskSet

    try:
        options = parse_options(option, flag="--option", example="rounds=5")
        task_set = GameTaskSet(games=(game,), game_options={game: options} if options else {})
        fixed = [o.strip() for o in opponents.split(",") if o.strip()]
        cfg = GameEvalConfig(n_tasks=n_tasks, opponents=fixed, max_tokens=max_tokens)
    except (ValueError, typer.BadParameter) as exc:
        fail(one_line(str(exc)))
    if bad := [o for o in fixed if o not in ("random", "heuristic")]:
        fail(f"--opponents: unknown {', '.join(bad)}; use random, heuristic")
    store = Store(db)
    versions = list({v.id: v for v in (common.version(store, m) for m in model)}.values())

    async def go() -> tuple[dict[str, Any], dict[tuple[str, str], Any]]:
        engines = {v.id: load_version_engine(v) for v in versions}
        try:
            results = {}
            for v in versions:
                results[v.name] = await evaluate_games(
                    engines[v.id], task_set, store=store, model_id=v.id, config=cfg
                )
            series = {(v.name, o): results[v.name].series(o) for v in versions for o in fixed}
            if elo_games:
                if {"random", "heuristic"} <= set(fixed):
                    series[("heuristic", "random")] = await play_match(
                        game, HeuristicOpponent(1), RandomOpponent(2), elo_games, **options
                    )
                players = {
                    v.name: EngineOpponent(engines[v.id], v.name, max_tokens=max_tokens) for v in versions
                }
                names = list(players)
                for i, a in enumerate(names):
                    for b in names[i + 1 :]:
                        series[(a, b)] = await play_match(game, players[a], players[b], elo_games, **options)
            return results, series
        finally:
            for engine in engines.values():
                await engine.close()

    try:
        results, series = asyncio.run(go())
    except ValueError as exc:  # a bad game option, named by the game
        fail(one_line(str(exc)))
    ratings = _report(results, series, fixed, task_set)
    # Each model's Elo goes on its version beside its win rates, for `strop report`'s games panel.
    label = next(iter(results.values())).label if results else game
    for v in versions:
        if v.name in ratings:
            store.update_model_metrics(v.id, {f"{label}/elo": ratings[v.name]})


def _report(
    results: dict[str, Any], series: dict[tuple[str, str], Any], fixed: list[str], task_set: Any
) -> dict[str, float]:
    from rich.console import Console
    from rich.table import Table

    from strop.agents.game_eval import elo_ratings, eval_label

    label = eval_label(task_set)
    console = Console()
    for name, res in results.items():
        sc = res.scores()
        table = Table(title=f"{name} at {label}: {res.n_tasks} held-out seeds, each from both seats (greedy)")
        for col in ("opponent", "seat 0 W/D/L", "seat 1 W/D/L", "win rate", "score"):
            table.add_column(col)
        for o in fixed:
            wdl = [
                " / ".join(
                    f"{100 * sc[f'vs_{o}/seat{s}/{k}']:.0f}%" for k in ("win_rate", "draw_rate", "loss_rate")
                )
                for s in (0, 1)
            ]
            table.add_row(
                o, *wdl, f"{100 * sc[f'vs_{o}/win_rate']:.1f}%", f"{100 * sc[f'vs_{o}/score']:.1f}%"
            )
        console.print(table)
        typer.echo(
            f"illegal or unparseable moves: {100 * sc['illegal_rate']:.1f}%; recorded on {res.model_id} "
            f"under {label}/"
        )
    ratings = elo_ratings(series)
    table = Table(title=f"Elo at {label} (random = 1000; {sum(s.games for s in series.values())} games)")
    for col in ("player", "Elo", "games"):
        table.add_column(col)
    for player, rating in sorted(ratings.items(), key=lambda kv: -kv[1]):
        played = sum(s.games for pair, s in series.items() if player in pair)
        table.add_row(player, f"{rating:.0f}", str(played))
    console.print(table)
    return ratings


def register(app: typer.Typer) -> None:
    app.command("eval-game", no_args_is_help=True)(eval_game_cmd)
