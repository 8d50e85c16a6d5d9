"""Recipe errors as 'field: message' lines, each at the full path of the field it is about
(`stages[0].config.temprature: unknown field`), for pydantic's own errors and the recipe's cross-field checks
alike."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from strop.agents.evaluators.base import FieldCheckError


class FieldError(FieldCheckError):
    """Errors at field paths, relative to where pydantic raised them (turned into the same 'field: message'
    lines as pydantic's, prefixed with that location)."""

    @classmethod
    def of(cls, e: ValidationError) -> FieldError:
        first, *rest = _error_items(e)
        return cls(*first, *rest)


def format_validation_error(e: ValidationError, prefix: str = "") -> str:
    return "\n".join(f"  {field}: {msg}" for field, msg in _error_items(e, prefix))


def _error_items(e: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """(field path, message) per error; a `FieldError` raised inside a nested model keeps its own paths."""
    items = []
    for err in e.errors():
        loc = _path(err["loc"])
        if err["type"] == "value_error" and isinstance(
            found := err.get("ctx", {}).get("error"), FieldCheckError
        ):
            at = prefix + loc
            items += [(f"{at}.{f}" if at and loc else f, m) for f, m in found.items]
            continue
        field = prefix + loc if loc else (prefix.rstrip(".") or "(top level)")
        msg = (
            "unknown field (check the spelling; see recipes/star-arithmetic.toml)"
            if err["type"] == "extra_forbidden"
            else err["msg"].removeprefix("Value error, ")
        )
        got = "" if err["type"] in ("extra_forbidden", "missing") else f" (got {err.get('input')!r})"
        items.append((field, f"{msg}{got}"))
    return items


def _path(loc: tuple[Any, ...]) -> str:
    return ".".join(f"[{x}]" if isinstance(x, int) else str(x) for x in loc).replace(".[", "[")
