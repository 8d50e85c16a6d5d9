"""`strop report [TARGET] --out DIR`: an evolution's (or a run's) self-contained HTML report.

Typer and the standard library only at module level: matplotlib and the store load inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from strop.cli.common import DbOpt, fail


def report_cmd(
    target: Annotated[
        str | None,
        typer.Argument(
            help="A recipe TOML file, a recipe name, or a run id (any run of an evolution, or a plain run such as "
            "`strop run`'s). Default: the latest evolution in the store.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Folder for report.html (default: runs/<recipe>, beside `strop evolve`'s table)."
        ),
    ] = None,
    db: DbOpt = None,
) -> None:
    """Write one HTML page about an evolution: held-out metrics per model version (promoted and rejected), data
    per stage by kind, training losses, rewards, and a panel per loop that ran (critic F1 and correction
    accuracy, self-correction Δ, search accuracy against budget, game win rates and Elo).

    The page is self-contained (inline CSS and PNG figures, no scripts, no network): open it in any browser,
    attach it to a CI run or mail it.
    """
    from strop.memory import Store
    from strop.training.recipe import RecipeError, load_recipe
    from strop.training.report import ReportError, write_report

    if db is None and target is not None and target.endswith(".toml") and Path(target).is_file():
        try:
            db = load_recipe(target).db  # the store the recipe evolves in, as `strop evolve` picks it
        except RecipeError as e:
            fail(str(e))
    store = Store(db)
    try:
        page = write_report(store, target, out)
    except (ReportError, RecipeError) as e:
        fail(str(e))
    finally:
        store.close()
    typer.echo(f"wrote {page}")


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
