"""Critic prompt templates, shipped as package data so users can read, copy and override them.

Templates use `string.Template` ($name) placeholders rather than str.format: math and code are full of braces.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from string import Template
from typing import Any

TEMPLATES = ("stepwise", "contrastive", "pairwise", "step_score")


@cache
def load_template(name: str) -> Template:
    """A shipped template by name (see TEMPLATES)."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown critic template {name!r}; shipped ones: {', '.join(TEMPLATES)}")
    return Template(files(__package__).joinpath(f"{name}.txt").read_text(encoding="utf-8").strip())


def render(template: str | Template, **values: object) -> str:
    """Fill a template; a placeholder left unfilled is an error naming it, not a silent '$name' in a prompt."""
    t = template if isinstance(template, Template) else load_template(template)
    try:
        return t.substitute({k: str(v) for k, v in values.items()})
    except KeyError as exc:
        raise ValueError(f"critic template needs a value for ${exc.args[0]}") from None


@cache
def load_shots() -> tuple[dict[str, Any], ...]:
    """Worked examples (problem, solution, reference, critique) shown as earlier chat turns.

    Small instruct models follow a format they have seen answered far better than one they are told about:
    SmolLM2-135M parsed 0 of 48 critiques with the format only described, 18 of 48 with one worked example.
    """
    shots = json.loads(files(__package__).joinpath("shots.json").read_text(encoding="utf-8"))
    return tuple(shots)
