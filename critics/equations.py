"""Equations in step text: reading 'expression = number' exactly, and writing numbers back as a step would.

Both the labelling of policy solutions and the corruption of references rest on one reading of a step: which
equations it states, with the exact value (a `Fraction`) and character span of every number, so that a
label can be recomputed and a number replaced in place. Reading never guesses: an expression interrupted by
prose or one that does not parse is left out rather than read one way or another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from strop.sandbox.tasks.base import Task

TOLERANCE = Fraction(1, 10**6)

# 'x' is multiplication only when it is not part of a word ('5 x 3', '5x3'; not 'box').
# An en dash is a minus in many written solutions ('$2,430 – $2,100'); '.85' is a number.
_TOKEN = re.compile(
    r"(?P<num>\$?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\d.])\.\d+))"
    r"|(?P<op>[-+*/×÷\u2212\u2013]|(?<![A-Za-z])[xX](?![A-Za-z]))"
    r"|(?P<lp>\()|(?P<rp>\))|(?P<eq>=)|(?P<ws>\s+)|(?P<other>.)",
    re.DOTALL,
)
_MINUS = ("-", "\u2212", "\u2013")


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Number:
    """A number written in a step: where it is and its exact value."""

    start: int
    end: int
    value: Fraction
    text: str


@dataclass(frozen=True)
class Equation:
    """'lhs = result' in a step; `result` is None when the right-hand side is itself an expression."""

    start: int
    end: int
    lhs: Fraction
    rhs: Fraction
    operands: tuple[Number, ...]
    result: Number | None

    @property
    def holds(self) -> bool:
        """True within 1e-6, or when the result is the left side rounded to the decimals it is written with."""
        slack = TOLERANCE
        if self.result is not None and "." in self.result.text:
            decimals = len(self.result.text.rsplit(".", 1)[1])
            slack = max(slack, Fraction(1, 2 * 10**decimals))
        return abs(self.lhs - self.rhs) <= slack


def parse_number(text: str) -> Fraction:
    """The exact value of a number as written ('$1,200.50' -> 1200.5)."""
    return Fraction(text.replace("$", "").replace(",", ""))


def _tokens(text: str) -> list[_Tok]:
    return [_Tok(m.lastgroup or "other", m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def _number(t: _Tok, sign: _Tok | None = None) -> Number:
    """The number a token writes; its span leaves out a '$' so that a replacement keeps the unit."""
    start = t.start + t.text.startswith("$")
    value = parse_number(t.text)
    if sign is not None:
        return Number(sign.start, t.end, -value, sign.text + t.text)
    return Number(start, t.end, value, t.text)


class _Parser:
    """Recursive descent over number/operator/parenthesis tokens; fails (None) rather than guessing."""

    def __init__(self, toks: list[_Tok]) -> None:
        self.toks, self.i, self.binary = toks, 0, 0
        self.numbers: list[Number] = []

    def parse(self) -> Fraction | None:
        try:
            value = self._expr()
        except (IndexError, ValueError, ZeroDivisionError):
            return None
        return value if self.i == len(self.toks) else None

    def _peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def _expr(self) -> Fraction:
        value = self._term()
        while (t := self._peek()) and t.kind == "op" and t.text in ("+", *_MINUS):
            self.i, self.binary = self.i + 1, self.binary + 1
            right = self._term()
            value = value + right if t.text == "+" else value - right
        return value

    def _term(self) -> Fraction:
        value = self._unary()
        while (t := self._peek()) and ((t.kind == "op" and t.text not in ("+", *_MINUS)) or t.kind == "lp"):
            self.binary += 1
            if t.kind == "op":
                self.i += 1
            right = self._unary()  # '35(2/5)': a parenthesis right after a factor multiplies
            value = value / right if t.text in ("/", "÷") else value * right
        return value

    def _unary(self) -> Fraction:
        t = self.toks[self.i]
        if t.kind == "op" and t.text in _MINUS:
            self.i += 1
            nxt = self.toks[self.i]
            if nxt.kind == "num":  # '-22' is one number, so it can be replaced as one
                self.i += 1
                self.numbers.append(_number(nxt, sign=t))
                return -parse_number(nxt.text)
            return -self._unary()
        return self._primary()

    def _primary(self) -> Fraction:
        t = self.toks[self.i]
        self.i += 1
        if t.kind == "num":
            self.numbers.append(_number(t))
            return parse_number(t.text)
        if t.kind == "lp":
            value = self._expr()
            if self.toks[self.i].kind != "rp":
                raise ValueError("unbalanced")
            self.i += 1
            return value
        raise ValueError(f"unexpected {t.text!r}")


def _parse(toks: list[_Tok]) -> tuple[Fraction, list[Number], int] | None:
    p = _Parser(toks)
    value = p.parse()
    return None if value is None else (value, p.numbers, p.binary)


_EXPR_KINDS = ("num", "op", "lp", "rp")


def _cut(toks: list[_Tok], start: int) -> bool:
    """The run before '=' starts with an operator whose left operand is in prose ('243 cm * 2/3'), or is glued
    to a word or sign: its left side cannot be known, so the equation is not read (a '-' written against its
    number is a sign, not a cut)."""
    t = toks[start]
    if start and toks[start - 1].end == t.start and toks[start - 1].kind == "other":
        return True  # glued to text: '6:00+48' is a time, not 00 + 48
    if t.kind != "op":
        return False
    signed = t.text in _MINUS and start + 1 < len(toks) and toks[start + 1].start == t.end
    return not (signed and toks[start + 1].kind == "num")


def equations(text: str) -> list[Equation]:
    """Every 'expression = number' in a step, in order ('a + b = c * d = e' gives two).

    The left side is the longest run of numbers and operators before '=' that parses with at least one
    operator; prose before it ('Natalia sold 48/2 = 24 clips') is left out, and an expression interrupted by
    prose ('243 cm * 2/3 = 162') is not read at all. It is never shortened to make the equation hold:
    '-1 + 6 = 7' is false, not '1 + 6 = 7'. The right side may be a running total
    ('5 + 3 = 8 * 2 = 16', whose first right side is 8, not 8 * 2): there the reading that holds is taken.
    """
    toks = [t for t in _tokens(text) if t.kind != "ws"]
    out: list[Equation] = []
    for e, tok in enumerate(toks):
        if tok.kind != "eq":
            continue
        end, start = e + 1, e
        while end < len(toks) and toks[end].kind in _EXPR_KINDS:
            end += 1
        while start > 0 and toks[start - 1].kind in _EXPR_KINDS:
            start -= 1
        if _cut(toks, start):
            continue
        rights = [(k, r) for k in range(end, e + 1, -1) if (r := _parse(toks[e + 1 : k]))]
        left = next(((s, p) for s in range(start, e) if (p := _parse(toks[s:e])) and p[2] > 0), None)
        if left is None or not rights:
            continue
        s, (lhs, nums, _) = left
        readings = [
            Equation(
                toks[s].start,
                toks[k - 1].end,
                lhs,
                rhs,
                tuple(nums),
                rnums[0] if rops == 0 and len(rnums) == 1 else None,
            )
            for k, (rhs, rnums, rops) in rights
        ]
        chosen = next((r for r in readings if r.holds), readings[-1])  # else: the first number on the right
        after = rights[-1][0]
        # A false reading counts only when nothing else could be meant: not when the left side had to be cut
        # out of a longer run ('$100 000 x 10/100'), nor for a division by a fraction written without
        # parentheses ('28 / 1/5' meaning 28 / (1/5)), nor when more digits follow the result ('= 18 000').
        divisions = sum(t.text in ("/", "÷") for t in toks[s:e])
        if not chosen.holds and (
            s > start or divisions > 1 or (after < len(toks) and toks[after].kind == "num")
        ):
            continue
        out.append(chosen)
    return out


def numbers(text: str) -> list[Number]:
    """Every number written in `text`, in order, with its span (a '$' or a leading '-' is left out)."""
    return [_number(t) for t in _tokens(text) if t.kind == "num"]


def numbers_in(text: str) -> set[Fraction]:
    """The values of the numbers written in `text`."""
    return {n.value for n in numbers(text)}


def is_chain(parsed: list[list[Equation]]) -> bool:
    """An arithmetic chain: one 'a op b = c' per step, each starting from the previous step's result."""
    for i, eqs in enumerate(parsed):
        if len(eqs) != 1 or len(eqs[0].operands) != 2 or eqs[0].result is None or not eqs[0].holds:
            return False
        if i and eqs[0].operands[0].value != parsed[i - 1][0].rhs:
            return False
    return bool(parsed)


def problem_operands(task: Task) -> set[Fraction] | None:
    """The numbers an arithmetic problem states, or None where they are not known (word problems in prose)."""
    expression = task.metadata.get("expression")
    if isinstance(expression, str):
        return numbers_in(expression)
    parsed = [equations(s) for s in task.reference_steps]
    if not is_chain(parsed):
        return None
    return {parsed[0][0].operands[0].value} | {eqs[0].operands[1].value for eqs in parsed}


def display(value: Fraction) -> str:
    """A value as a step would write it: an integer, an exact short decimal, or two decimals."""
    if value.denominator == 1:
        return str(value.numerator)
    short = f"{float(value):.4f}".rstrip("0").rstrip(".")
    return short if Fraction(short) == value else f"{float(value):.2f}"
