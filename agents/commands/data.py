"""`strop tasks ...` and `strop jail ...` commands."""

from __future__ import annotations

import typer

tasks_app = typer.Typer(no_args_is_help=True)
jail_app = typer.Typer(no_args_is_help=True)
