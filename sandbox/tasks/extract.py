"""Final-answer extraction from messy model output: '#### N', '\\boxed{N}', 'the answer is N', or the last number.

Model output is untrusted and often sloppy (units, thousands separators, LaTeX, several candidate numbers),
so every function here returns None or False rather than raising.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from strop.sandbox.tasks.base import Verdict

_HASH = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS = re.compile(r"(?:final\s+)?answer\s*(?:is|:|=)\s*:?\s*([^\n]*)", re.IGNORECASE)
# Thousands separators only in groups of three, so "3,4" stays two numbers rather than becoming 34.
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}")


def _boxed(text: str) -> list[str]:
    """Contents of every \\boxed{...}, with nested braces (a regex cannot balance them)."""
    out: list[str] = []
    start = text.find("\\boxed")
    while start != -1:
        i = text.find("{", start)
        if i == -1:
            break
        depth, j = 0, i
        while j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                out.append(text[i + 1 : j])
                break
            j += 1
        start = text.find("\\boxed", j)
    return out


def _normalise(s: str) -> str:
    return s.replace("\u2212", "-").replace("$", "").replace("\\!", "").replace("\\,", "").replace("{,}", ",")


def _clean_number(s: str) -> str | None:
    """The last number in `s` without separators, or a simple LaTeX fraction as 'a/b'."""
    s = _normalise(s)
    if m := _LATEX_FRAC.findall(s):
        num, den = m[-1]
        return f"{num}/{den}"
    found = _NUMBER.findall(s)
    if not found:
        return None
    value = found[-1].replace(",", "")
    return value.rstrip("0").rstrip(".") if "." in value else value


def extract_marked(text: str) -> str | None:
    """The raw text after the last answer marker ('####', \\boxed{}, 'answer is'), for non-numeric answers."""
    if not text:
        return None
    for marked in (_HASH.findall(text), _boxed(text), _ANSWER_IS.findall(text)):
        if marked:
            return marked[-1].strip().rstrip(".").strip() or None
    return None


def extract_answer(text: str) -> str | None:
    """The final answer as a plain string, or None when the output holds none.

    Priority: the last '#### ...' line, the last \\boxed{}, the last 'answer is ...', then the last number.
    A marker with no number after it yields its text (a word answer), or None when empty.
    """
    if not text:
        return None
    for marked in (_HASH.findall(text), _boxed(text)):
        if marked:
            last = marked[-1].strip()
            return _clean_number(last) or (last.rstrip(".").strip() or None)
    if said := _ANSWER_IS.findall(text):
        # 'The answer is 7. I am 90% sure': the sentence after the marker, not the rest of the line.
        sentence = re.split(r"\.\s|\.$", said[-1].strip(), maxsplit=1)[0]
        return _clean_number(sentence) or (sentence.strip() or None)
    return _clean_number(text)


def _as_float(s: str) -> float | None:
    s = _normalise(s).replace(",", "").strip().rstrip("%").strip()
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            return float(num) / float(den)
        return float(s)
    except (ValueError, ZeroDivisionError):
        return None


def numbers_equal(a: str, b: str) -> bool:
    """Numeric equality within 1e-6 ('1,000' == '1000.0' == '2000/2'); exact text otherwise."""
    fa, fb = _as_float(a), _as_float(b)
    if fa is not None and fb is not None:
        return abs(fa - fb) < 1e-6
    return a.strip() == b.strip()


def answer_verdict(output: str, answer: str, equal: Callable[[str, str], bool] | None = None) -> Verdict:
    """The verdict every final-answer task set gives: extract the answer, compare it with `equal`."""
    got = extract_answer(output)
    if got is None:
        return Verdict(reward=0.0, correct=False, extracted=None, reason="no answer found")
    ok = (equal or numbers_equal)(got, answer)
    return Verdict(
        reward=1.0 if ok else 0.0,
        correct=ok,
        extracted=got,
        reason="correct" if ok else f"expected {answer}, got {got}",
    )
