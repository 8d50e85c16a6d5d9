"""KEY=VALUE pairs on the command line (`--option`, `--set`), shared by every command that takes them.

Typer and the standard library only: this module is imported at `strop --help`.
"""

from __future__ import annotations

import json
from typing import Any

import typer


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
        message = " ".join(str(exc).split())
        given = ", ".join(f"{k}={v!r}" for k, v in options.items())
        if isinstance(exc, TypeError):  # the task set's code tripped over a value of the wrong type
            message = f"task set {name!r} refused its options ({given or 'none'}): {message}"
        elif given and not any(k in message for k in options):
            message += f" (options given: {given})"
        raise ValueError(f"--option: {message} (see `strop tasks list`)") from None
