"""`strop loops list|show`: the loops `strop run` can run, their config fields and the roles a config needs.

Every loop comes from the loop registry (`strop.agents.loops.registry`), built in or added by another package
through the `strop.loops` entry-point group. Typer and stdlib only at module level.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from strop.cli.common import complete_loop, default_text, fail, loop_config, loop_spec, one_line, type_name

loops_app = typer.Typer(no_args_is_help=True)

_BY_CONFIG = "depends on config"


def _evaluators(spec: Any) -> str:
    """The loop's evaluator, and the ones that replace it for a trained role (the critic benchmark...)."""
    by_role = "".join(f", {ev} when training {role}" for role, ev in spec.role_evaluators.items())
    return f"{spec.evaluator}{by_role}"


def _roles(spec: Any, cfg: Any = None) -> str:
    """The roles `cfg` (default: the default config) needs, marked when they change with the config."""
    from pydantic import ValidationError

    try:
        roles = spec.needed_roles(cfg)
    except ValidationError:  # a plugin's config without defaults: the roles it declares
        roles = spec.roles
    text = ", ".join(str(r) for r in roles) or "none"
    return f"{text} ({_BY_CONFIG})" if spec.roles_for is not None else text


@loops_app.command("list")
def list_cmd() -> None:
    """The registered loops: built in, and added by installed packages (entry-point group strop.loops).

    Roles are those the loop's default config needs; a loop whose roles change with its config (MCTS with a
    step scorer, self-correction with critic feedback) says so: `strop loops show LOOP --set FIELD=VALUE`
    gives the roles of that config.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from strop.agents.loops.registry import list_loops

    table = Table(
        "name", "roles", "example kinds", "evaluator", "description", title="loops (strop run LOOP)"
    )
    for spec in list_loops():
        table.add_row(
            escape(spec.name),
            escape(_roles(spec)),
            ", ".join(str(k) for k in spec.example_kinds) or "-",
            escape(_evaluators(spec)),
            escape(spec.description),
        )
    Console().print(table)


@loops_app.command("show")
def show_cmd(
    name: Annotated[
        str, typer.Argument(help="Loop name (best-of-n or best_of_n).", autocompletion=complete_loop)
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            metavar="FIELD=VALUE",
            help="A config field as `strop run LOOP --set` takes it, repeatable: the roles shown are the ones "
            "that config needs (e.g. --set feedback=critic).",
        ),
    ] = None,
) -> None:
    """A loop's config fields (set them with `strop run LOOP --set FIELD=VALUE`), its roles and example kinds."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    spec = loop_spec(name)
    cfg = None
    if set_:
        try:
            cfg = loop_config(spec, set_)
        except ValueError as exc:
            fail(one_line(exc))
    console = Console()
    console.print(f"[bold]{escape(spec.name)}[/bold]: {escape(spec.description)}")
    kinds = ", ".join(f"{k} (trains {spec.role_of(k)})" for k in spec.example_kinds) or "none"
    which = "this config" if set_ else "the default config"
    console.print(f"roles ({which}): {escape(_roles(spec, cfg))}; emits: {kinds}")
    console.print(
        f"evaluated by (a recipe stage's default `[stages.eval] target`): {escape(_evaluators(spec))}"
    )
    table = Table(
        "field",
        "type",
        "default",
        "description",
        title=f"config ({spec.config.__name__}): strop run {spec.name} --set FIELD=VALUE",
    )
    for field_name, info in spec.config.model_fields.items():
        table.add_row(
            field_name, escape(type_name(info)), escape(default_text(info)), escape(info.description or "")
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Attach `strop loops` to the root app."""
    app.add_typer(
        loops_app, name="loops", help="The loops `strop run` can run: list them, show a loop's config."
    )
