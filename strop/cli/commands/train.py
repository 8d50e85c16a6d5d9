"""`strop train KIND`: one command per registered trainer kind, generated from the trainer registry.

Each kind's settings model is its CLI: every field of a simple type (number, text, flag, list of text) is an
option whose help is the field's description, and any field, nested ones included, can be given with
`--set FIELD=VALUE`. The values are validated as a recipe stage's `[train.settings]` are
(`kind.parse_settings`, errors named per field by `format_validation_error`), so a new kind gets its command,
with the recipe's validation, without a line here. What the CLI adds around the settings depends on what the
kind consumes: stored examples (a role, a limit, the launcher; pairs can be derived from best-of-N runs), or,
for an on-line kind (GRPO), the loop, task set and number of tasks its rollouts run on. The command body is
in `train_run`.

The commands are built when `strop train ...` runs (`TrainGroup` asks the registry then), never at
`strop --help`: loading the registry imports pydantic and the kinds' modules.
"""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import click
import typer
from typer.core import TyperGroup

from strop.cli.common import DbOpt, complete_loop

# Settings fields that also answer to a shorter option (the hand-written commands' names, kept working).
ALIASES: dict[str, tuple[str, ...]] = {"learning_rate": ("--lr",), "max_examples": ("--limit",)}

_SETTINGS_PANEL = "Settings (a recipe stage's train.settings; any field: --set FIELD=VALUE)"
_ROLLOUT_PANEL = "Rollouts (an on-line kind samples its own data)"
_LAUNCH_PANEL = "Launch"
_PAIRS_PANEL = "Pairs from recorded runs"
_SCALARS = (int, float, str)


class TrainGroup(TyperGroup):
    """`strop train`: its subcommands are the registered trainer kinds, looked up only when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from strop.training.trainers import list_trainers

        return [kind.name for kind in list_trainers()]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from strop.training.trainers import UnknownTrainerError, get_trainer

        try:
            return build_command(get_trainer(cmd_name))
        except UnknownTrainerError:
            return None


train_app = typer.Typer(
    cls=TrainGroup,
    no_args_is_help=True,
    help="Fine-tune a model with a registered trainer kind: `strop train sft --model M`.",
)


@train_app.callback()
def _group() -> None:
    """Without a callback typer would not make `train_app` a group of its own (it has no static commands)."""


def option_type(annotation: Any) -> tuple[Any, bool] | None:
    """The type a settings field takes on the command line and whether one value collapses to a scalar
    (`str | list[str]`: `--loss-type ipo` gives 'ipo'); None for a field only `--set` can give (a nested model,
    a list of models)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            return option_type(members[0])
        scalars = [m for m in members if m in _SCALARS]
        lists = [m for m in members if get_origin(m) is list and get_args(m)[:1] == tuple(scalars[:1])]
        if len(members) == 2 and len(scalars) == 1 and len(lists) == 1:
            return list[scalars[0]], True  # type: ignore[valid-type]
        return None
    if annotation is bool or annotation in _SCALARS:
        return annotation, False
    if origin is Literal and all(isinstance(a, str) for a in args):
        return str, False
    if origin is list and len(args) == 1 and args[0] in _SCALARS:
        return annotation, False
    return None


def settings_options(kind: Any, taken: set[str]) -> dict[str, tuple[str, bool]]:
    """Settings field -> (its parameter name, collapse) for each field with an option of its own."""
    out: dict[str, tuple[str, bool]] = {}
    for name, info in kind.settings.model_fields.items():
        typed = option_type(info.annotation)
        if typed is not None and f"--{name.replace('_', '-')}" not in taken:
            out[name] = (f"setting__{name}", typed[1])
    return out


def _param(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _help(text: str) -> str:
    from rich.markup import escape

    return escape(" ".join(text.split()))


def _common_params(kind: Any) -> list[inspect.Parameter]:
    """The options every kind has: the parent model, the candidate's name and folder, progress, the store."""
    model_help = "Model version to train from (registry name/id, cache name or folder)."
    return [
        _param("model", Annotated[str, typer.Option("--model", "-m", help=model_help)]),
        _param("name", Annotated[str | None, typer.Option(help="Name of the candidate version.")], None),
        _param(
            "output_dir",
            Annotated[Path | None, typer.Option(help="Where to save it (default: the model cache).")],
            None,
        ),
        _param(
            "progress",
            Annotated[bool, typer.Option(help="A progress bar per training run (steps, loss, ETA).")],
            True,
        ),
        _param("db", DbOpt, None),
        _param(
            "set_",
            Annotated[
                list[str] | None,
                typer.Option(
                    "--set",
                    "-s",
                    metavar="FIELD=VALUE",
                    rich_help_panel=_SETTINGS_PANEL,
                    help=f"Any {kind.name} settings field, repeatable; values are JSON where they parse, nested "
                    "fields dotted (e.g. --set lora.alpha=8 --set lora=null).",
                ),
            ],
            None,
        ),
    ]


def _stored_params(kind: Any) -> list[inspect.Parameter]:
    """A kind that trains on stored examples: whose examples, and where the TRL job runs."""
    from strop.memory.records import ExampleKind

    role_help = (
        "Whose examples: policy, or critic (e.g. the step-value examples an MCTS run writes with emit_values, "
        "which train a process reward model)."
    )
    params = [
        _param("role", Annotated[str, typer.Option(help=role_help)], "policy"),
        _param(
            "launcher",
            Annotated[
                str,
                typer.Option(
                    rich_help_panel=_LAUNCH_PANEL,
                    help="local: train in this process. accelerate: run the TRL job under `accelerate launch` "
                    "(data parallel; this process still claims the examples and registers the candidate).",
                ),
            ],
            "local",
        ),
        _param(
            "num_processes",
            Annotated[
                int | None,
                typer.Option(
                    rich_help_panel=_LAUNCH_PANEL,
                    help="With --launcher accelerate: processes to launch (GPUs on a GPU host, gloo on CPU).",
                ),
            ],
            None,
        ),
        _param(
            "accelerate_config",
            Annotated[
                Path | None,
                typer.Option(
                    rich_help_panel=_LAUNCH_PANEL,
                    help="With --launcher accelerate: an `accelerate config` YAML file (multi-GPU, "
                    "DeepSpeed ZeRO-1/2, FSDP on one machine).",
                ),
            ],
            None,
        ),
    ]
    if ExampleKind.PAIR in kind.example_kinds:
        params += [
            _param(
                "derive_from",
                Annotated[
                    list[str] | None,
                    typer.Option(
                        "--derive-from",
                        rich_help_panel=_PAIRS_PANEL,
                        help="Run id, repeatable: first derive pairs from these best-of-N runs' answers (for "
                        "runs recorded without emit_pairs), then train on those runs' pairs only.",
                    ),
                ],
                None,
            ),
            _param(
                "max_pairs_per_task",
                Annotated[
                    int,
                    typer.Option(
                        rich_help_panel=_PAIRS_PANEL, help="With --derive-from: most pairs per task."
                    ),
                ],
                4,
            ),
        ]
    return params


def _online_params() -> list[inspect.Parameter]:
    """An on-line kind: what a recipe stage would hand it (its loop, task set and this cycle's tasks)."""
    panel = _ROLLOUT_PANEL
    return [
        _param(
            "loop",
            Annotated[
                str,
                typer.Option(
                    rich_help_panel=panel,
                    autocompletion=complete_loop,
                    help="The loop that samples each task's group (`strop loops list`).",
                ),
            ],
            "best_of_n",
        ),
        _param(
            "loop_config",
            Annotated[
                list[str] | None,
                typer.Option(
                    "--loop-config",
                    metavar="FIELD=VALUE",
                    rich_help_panel=panel,
                    help="Loop config field (a recipe stage's `config`), repeatable; the fields: `strop loops "
                    "show LOOP`. n, temperature and max_tokens come from the settings.",
                ),
            ],
            None,
        ),
        _param(
            "tasks",
            Annotated[
                str,
                typer.Option(
                    "--tasks", "-t", rich_help_panel=panel, help="Task set name (see `strop tasks list`)."
                ),
            ],
            "arithmetic",
        ),
        _param(
            "option",
            Annotated[
                list[str] | None,
                typer.Option(
                    "--option",
                    "-o",
                    metavar="KEY=VALUE",
                    rich_help_panel=panel,
                    help="Task-set option, repeatable (e.g. -o digits=3; see `strop tasks list`).",
                ),
            ],
            None,
        ),
        _param(
            "n_tasks",
            Annotated[
                int,
                typer.Option(
                    min=1,
                    rich_help_panel=panel,
                    help="Training tasks the rollouts sample (a stage's train_per_cycle).",
                ),
            ],
            96,
        ),
        _param(
            "concurrency",
            Annotated[
                int,
                typer.Option(
                    min=1, rich_help_panel=panel, help="Episodes in flight (the engine batches them)."
                ),
            ],
            64,
        ),
    ]


def _settings_params(kind: Any, taken: set[str]) -> list[inspect.Parameter]:
    """One option per settings field of a simple type, default unset (the settings model's default applies)."""
    from strop.cli.common import default_text

    params = []
    fields = kind.settings.model_fields
    for name, (param_name, _) in settings_options(kind, taken).items():
        info = fields[name]
        typed, _collapse = option_type(info.annotation)  # type: ignore[misc]
        text = info.description or ""
        if get_origin(info.annotation) is Literal:
            text += f" One of: {', '.join(get_args(info.annotation))}."
        if typed is not bool and get_origin(typed) is list:
            text += " Repeatable."
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        if default not in (None, []):  # unset means the model's default: say which it is
            text += f" [default: {default_text(info)}]"
        flag = f"--{name.replace('_', '-')}"
        flags = [f"{flag}/--no-{flag[2:]}" if typed is bool else flag, *ALIASES.get(name, ())]
        option = typer.Option(*flags, help=_help(text), show_default=False, rich_help_panel=_SETTINGS_PANEL)
        params.append(_param(param_name, Annotated[typed | None, option], None))
    if "lora" in fields:
        lora = fields["lora"].get_default(call_default_factory=True)
        rank = getattr(lora, "r", 0) if lora is not None else 0
        text = (
            "LoRA rank, alpha 2 x rank; 0 for full fine-tuning (other LoRA fields: --set lora.FIELD=VALUE)."
        )
        option = typer.Option(
            "--lora-r",
            help=_help(f"{text} [default: {rank}]"),
            show_default=False,
            rich_help_panel=_SETTINGS_PANEL,
        )
        params.append(_param("lora_r", Annotated[int | None, option], None))
    return params


def _command_help(kind: Any) -> str:
    from strop.cli.common import type_name

    fields = kind.settings.model_fields
    only_set = [n for n in fields if option_type(fields[n].annotation) is None]
    if kind.online:
        how = (
            "It samples its own data: the loop runs on --n-tasks training tasks of --tasks from the live "
            "weights, its rollouts stored under a new run. The result is registered as a candidate with its "
            "lineage."
        )
    else:
        kinds = "/".join(str(k) for k in kind.example_kinds)
        how = (
            f"It trains on the store's unconsumed {kinds} examples of a role (each example is used once per "
            "trainer) and registers the result as a candidate with its lineage."
        )
    lines = [
        _help(kind.description),
        how,
        "The settings are checked as a recipe stage's [bold]train.settings[/bold] are; "
        "[bold]--set FIELD=VALUE[/bold] gives any of them.",
    ]
    for n in only_set:  # a nested model or a list of them: no option of its own
        of = re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", type_name(fields[n]))  # LoraSettings, not its module path
        lines.append(f"[bold]--set {n}=...[/bold] ({_help(of)}): {_help(fields[n].description or '')}")
    return "\n\n".join(lines)


def build_command(kind: Any) -> click.Command:
    """The `strop train KIND` command of one trainer kind."""
    from strop.cli.commands.train_run import run_training

    params = _common_params(kind) + (_online_params() if kind.online else _stored_params(kind))
    taken = {"--model", "--name", "--output-dir", "--progress", "--db", "--set", "--role", "--lora-r"}
    taken |= {f"--{p.name.replace('_', '-')}" for p in params}
    params += _settings_params(kind, taken)
    options = settings_options(kind, taken)

    def command(**values: Any) -> None:
        run_training(kind, options, values)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = _command_help(kind)
    app = typer.Typer(rich_markup_mode="rich", add_completion=False)
    app.command(kind.name, no_args_is_help=True)(command)
    cmd = typer.main.get_command(app)
    cmd.name = kind.name
    return cmd


def register(app: typer.Typer) -> None:
    """Attach `strop train` to the root app."""
    app.add_typer(
        train_app,
        name="train",
        help="Fine-tune a model with any registered trainer kind (`strop train --help` lists them): "
        "`strop train sft --model M`.",
    )
