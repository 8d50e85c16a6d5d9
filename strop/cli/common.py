"""What every `strop` command shares: option types, one-line errors, KEY=VALUE pairs, the task set, the model
version and the loop config from the command line.

One public module so command modules import from here and never a private name of another command module.
Typer and the standard library only at module level: this module is imported at `strop --help`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", help="Registry name/id, cache name (tiny, smollm2-135m) or model folder."),
]
TasksOpt = Annotated[str, typer.Option("--tasks", "-t", help="Task set name (see `strop tasks list`).")]
DbOpt = Annotated[
    str | None, typer.Option("--db", help="Store URL or SQLite path (default $STROP_DB or ./strop.db).")
]
SystemOpt = Annotated[str | None, typer.Option("--system", help="System message before each task prompt.")]
OptionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--option",
        "-o",
        metavar="KEY=VALUE",
        help="Task-set option, repeatable (e.g. -o digits=3 -o word_problems=true; see `strop tasks list`).",
    ),
]


def fail(message: str) -> NoReturn:
    """Print `error: MESSAGE` in red on stderr and exit with status 1 (bad input, not a crash)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def one_line(text: object) -> str:
    """The text with its whitespace runs (newlines included) collapsed, for a one-line error."""
    return " ".join(str(text).split())


# Errors whose message names what the user got wrong and how to fix it (a model not built, a file that does not
# parse, a prompt too long, a store to upgrade, every episode of a run failing): one line, not a traceback.
# Named by module so that none is imported to check: an error's module is loaded whenever it was raised.
USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("strop.agents.engines.base", "EngineError"),  # PromptTooLongError, a server not answering, ...
    ("strop.agents.runner", "RunFailedError"),
    ("strop.agents.models.cache", "ModelNotFoundError"),
    ("strop.agents.work_spec", "WorkSpecError"),
    ("strop.registry", "UnknownNameError"),
    ("strop.critics.benchmark", "LabelledSetError"),
    ("strop.sandbox.tasks.gsm8k", "TaskFileError"),
    ("strop.sandbox.tasks.base", "TaskSetError"),
    ("strop.sandbox.jail_models", "JailUnavailableError"),
    ("strop.memory.errors", "StoreConnectionError"),
    ("strop.memory.errors", "StoreLockedError"),
    ("strop.memory.errors", "SchemaError"),
    ("strop.training.recipe", "RecipeError"),
)
TRACEBACK_ENV = "STROP_TRACEBACK"  # set to 1 to see the traceback of a user error too


def user_error(exc: BaseException) -> BaseException | None:
    """The user error `exc` is, or the first one in a group made only of user errors; None for anything else
    (a bug, whose traceback is what its reader needs)."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [user_error(e) for e in exc.exceptions]
        return leaves[0] if leaves and all(leaves) else None
    for module, name in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return exc
    return None


class UserErrorGroup(TyperGroup):
    """The root command group: a user error from any command prints `error: MESSAGE` on one line and exits 1,
    as `fail` does; everything else keeps its traceback (a traceback is for bugs). STROP_TRACEBACK=1 shows the
    traceback of user errors as well."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            found = user_error(exc)
            if found is None or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
                raise
            fail(one_line(found) or type(found).__name__)


def parse_options(
    pairs: list[str] | None, *, flag: str = "--option", example: str = "digits=3"
) -> dict[str, Any]:
    """KEY=VALUE pairs; values are JSON where they parse (3, 0.2, true, ["+","-"]), else plain strings (paths).

    A pair without '=' (or with an empty key) raises `typer.BadParameter` naming it and the flag. A key given
    twice keeps its last value, as command lines usually do.
    """
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE (e.g. {flag} {example})", param_hint=flag)
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def raw_values(pairs: list[str] | None) -> dict[str, str]:
    """The unparsed text of each KEY=VALUE pair (for a field that wants the string '3', not the number 3)."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, _, raw = pair.partition("=")
        out[key.strip()] = raw
    return out


def load_task_set_from_options(name: str, options: dict[str, Any]) -> Any:
    """The task set `name` built with `options`; every mistake becomes a `ValueError` with a one-line message.

    Unknown task sets and unknown options are named by the task registry; a value of the wrong type (which the
    task set's own code trips over as a TypeError) is reported with the options that were given.
    """
    from strop.sandbox.tasks import UnknownTaskSetError, load_task_set

    try:
        return load_task_set(name, **options)
    except UnknownTaskSetError as exc:
        raise ValueError(str(exc)) from None
    except (TypeError, ValueError) as exc:
        message = one_line(exc)
        given = ", ".join(f"{k}={v!r}" for k, v in options.items())
        if isinstance(exc, TypeError):  # the task set's code tripped over a value of the wrong type
            message = f"task set {name!r} refused its options ({given or 'none'}): {message}"
        elif given and not any(k in message for k in options):
            message += f" (options given: {given})"
        raise ValueError(f"--option: {message} (see `strop tasks list`)") from None


def task_set(tasks: str, option: list[str] | None) -> Any:
    """The task set with its `--option`s, every mistake a one-line error."""
    try:
        options = parse_options(option, flag="--option", example="digits=3")
    except typer.BadParameter as exc:
        fail(f"--option: {exc.message}")
    try:
        return load_task_set_from_options(tasks, options)
    except ValueError as exc:
        fail(one_line(exc))


def tasks_of(chosen_set: Any, split: Any, n: int) -> list[Any]:
    """The first `n` tasks of a split, read now so a missing or malformed file fails before a model loads."""
    try:
        chosen = chosen_set.tasks(split, n)
    except (ValueError, OSError) as exc:
        fail(one_line(exc))
    if not chosen:
        fail(f"task set {chosen_set.name!r} has no {split} tasks (check its --option values)")
    return chosen


def version(store: Any, model: str, flag: str = "--model") -> Any:
    """The model version `model` names (registry name/id, cache name or folder); exits naming `flag` if none."""
    from strop.agents.models import ModelNotFoundError
    from strop.agents.runner import resolve_version

    try:
        return resolve_version(store, model)
    except ModelNotFoundError as e:
        fail(f"{flag} {model}: {one_line(e)}" if flag != "--model" else one_line(e))


def loop_spec(name: str) -> Any:
    """The registered loop `name` (best-of-n or best_of_n); exits listing the known loops if none."""
    from strop.agents.loops.registry import UnknownLoopError, get_loop

    try:
        return get_loop(name)
    except UnknownLoopError as exc:
        fail(str(exc))


def complete_loop(incomplete: str) -> list[str]:
    """Shell completion of a loop name."""
    from strop.agents.loops.registry import list_loops

    return [s.name for s in list_loops() if s.name.startswith(incomplete.replace("-", "_"))]


def loop_config(
    spec: Any,
    pairs: list[str] | None,
    shortcuts: dict[str, tuple[str, Any]] | None = None,
    *,
    flag: str = "--set",
) -> Any:
    """The loop's config from `FLAG FIELD=VALUE` pairs (and shortcut options), validated by `spec.config`.

    `shortcuts` maps a field to (its option, the value given or None), e.g. {"n": ("--n", 8)}; `flag` is the
    option the pairs came from (`strop run --set`, `strop train grpo --loop-config`).

    Values are JSON where they parse (8, 0.7, true, ["\\n"]); a field that wants text gets the raw text back
    when the JSON reading does not fit it (`--set system_prompt=3`). Raises `ValueError` with a one-line
    message naming the field and pointing to `strop loops show LOOP`.
    """
    from pydantic import ValidationError

    show = f"see `strop loops show {spec.name}`"
    try:
        values = parse_options(pairs, flag=flag, example="n=8")
    except typer.BadParameter as exc:
        raise ValueError(f"{flag}: {exc.message}; {show}") from None
    raws = raw_values(pairs)
    flags: dict[str, str] = {}  # field -> the shortcut option that set it
    for key, (option, value) in (shortcuts or {}).items():
        if value is None:
            continue
        if key in values:
            raise ValueError(f"{option} and {flag} {key}=... both given; keep one")
        values[key], flags[key] = value, option
        raws.pop(key, None)
    fields = spec.config.model_fields
    known = set(fields) | {f.alias for f in fields.values() if f.alias}
    if unknown := sorted(set(values) - known):
        named = ", ".join(f"{k!r} ({flags[k]})" if k in flags else repr(k) for k in unknown)
        raise ValueError(
            f"loop {spec.name!r} has no config field {named}; its fields: {', '.join(fields)} ({show})"
        )
    try:
        return spec.parse_config(values)
    except ValidationError as exc:
        # A field that wants text but got the JSON reading of it (3, true): give it the text as typed.
        wants_text = {str(e["loc"][0]) for e in exc.errors() if e["loc"] and e["type"] == "string_type"}
        retry = wants_text & {k for k in raws if not isinstance(values[k], str)}
        if not retry:
            raise ValueError(_config_error(exc, show, flag)) from None
    try:
        return spec.parse_config({**values, **{k: raws[k] for k in retry}})
    except ValidationError as exc:
        raise ValueError(_config_error(exc, show, flag)) from None


def _config_error(exc: Any, show: str, flag: str) -> str:
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        parts.append(f"{flag} {where}={e.get('input')!r}: {e['msg']}")
    return "; ".join(parts) + f" ({show})"


def type_name(info: Any) -> str:
    """A pydantic field's type for a help table: `int (>= 1, <= 256)`, `list[str]`, `str | None`."""
    ann = info.annotation
    text = ann.__name__ if isinstance(ann, type) and not getattr(ann, "__args__", None) else str(ann)
    text = text.replace("typing.", "")
    bounds = []
    for m in info.metadata:
        for attr, op in (
            ("ge", ">="),
            ("gt", ">"),
            ("le", "<="),
            ("lt", "<"),
            ("min_length", "len >="),
            ("max_length", "len <="),
        ):
            if getattr(m, attr, None) is not None:
                bounds.append(f"{op} {getattr(m, attr)}")
    return f"{text} ({', '.join(bounds)})" if bounds else text


def default_text(info: Any) -> str:
    """A pydantic field's default as JSON (`(required)` for a field without one)."""
    if info.is_required():
        return "(required)"
    value = info.get_default(call_default_factory=True)
    if hasattr(value, "model_dump"):  # a nested settings model (LoRA): its fields
        value = value.model_dump(mode="json")
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)
