"""The composition root: `strop ...`.

Only typer and the light command modules are imported here; every command imports torch, transformers,
trl or sqlalchemy inside its own body, so `strop --help` stays instant.
"""

from __future__ import annotations

import typer

from strop.cli.commands import (
    critics,
    data,
    db,
    evaluation,
    evolve,
    games,
    loops,
    memory,
    models,
    registry,
    report,
    run,
    schedule,
    search,
    serve,
    show,
    train,
    worker,
)
from strop.cli.common import UserErrorGroup

app = typer.Typer(
    name="strop",
    help=(
        "strop: language models that improve themselves.\n\n"
        "Actors answer tasks, critics judge them, every trajectory lands in a SQL store, and the store feeds "
        "TRL fine-tuning of the same models. Start with `strop models import smollm2`, then "
        "`strop evolve --recipe recipes/star-arithmetic.toml`."
    ),
    no_args_is_help=True,
    cls=UserErrorGroup,  # user errors from any command: one line naming the fix, no traceback (cli/common.py)
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)

app.add_typer(models.app, name="models", help="Build, import, list, promote and roll back models.")
registry.register(models.app)
app.add_typer(db.app, name="db", help="The trajectory store: migrations, stats, exports.")
app.add_typer(data.tasks_app, name="tasks", help="Task sets with verifiable answers.")
app.add_typer(data.jail_app, name="jail", help="Run untrusted code in the code jail.")
app.add_typer(
    memory.app, name="memory", help="Reflection memory: index past failures, see what a problem recalls."
)
app.add_typer(
    schedule.app,
    name="schedule",
    help="Run recipes' cycles on a schedule (cron or interval), on any number of hosts.",
)
serve.register(app)
run.register(app)
loops.register(app)
evaluation.register(app)
train.register(app)
evolve.register(app)
critics.register(app)
show.register(app)
search.register(app)
games.register(app)
report.register(app)
worker.register(app)


def main() -> None:
    from strop._env import set_process_defaults

    set_process_defaults()  # the CLI owns its process: offline hub, passive OpenMP waits (strop/_env.py)
    app()


if __name__ == "__main__":
    main()
