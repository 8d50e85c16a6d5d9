"""Final-answer extraction from messy model output: '#### N', '\\boxed{N}', or the last number."""

from __future__ import annotations

import re

_HASH = re.compile(r"####\s*([^\n]+)")
_BOXED = re.compile(r"\\boxed\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _clean_number(s: str) -> str | None:
    m = _NUMBER.findall(s.replace("$", ""))
    if not m:
        return None
    return m[-1].replace(",", "").rstrip(".")


def extract_answer(text: str) -> str | None:
    """The final answer as a plain string, or None when the output holds none."""
    if m := _HASH.findall(text):
        return _clean_number(m[-1]) or m[-1].strip() or None
    if m := _BOXED.findall(text):
        return _clean_number(m[-1]) or m[-1].strip() or None
    return _clean_number(text)


def numbers_equal(a: str, b: str) -> bool:
    try:
        return abs(float(a) - float(b)) < 1e-6
    except ValueError:
        return a.strip() == b.strip()
