"""Solutions whose first wrong step is known for certain: corrupted references and checked policy solutions.

A critic benchmark is only as good as its labels, and two sources give certain labels without a human: a
reference solution corrupted in one known way, with the error carried through every later step so that exactly
the corrupted step is the first wrong one; and a policy's own solution whose steps are equations that can be
recomputed. Everything here is deterministic given its `random.Random`, and messy text never raises: a step
that does not parse makes a solution unlabellable (None), never a guess.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

from pydantic import BaseModel, Field, model_validator

from strop.critics.steps import render_solution, split_steps
from strop.sandbox.tasks.base import Task
from strop.sandbox.tasks.extract import extract_answer, numbers_equal

CORRUPTION_KINDS = ("calculation", "operand", "copy", "drop")
TOLERANCE = Fraction(1, 10**6)


class LabelledSolution(BaseModel):
    """A solution to a problem with its first wrong step known (None: no step is wrong)."""

    id: str = Field(description="Stable id: the problem's task id, the source and a hash of the solution.")
    task: Task = Field(description="The problem; `task.answer` is '' when unknown (ProcessBench).")
    steps: list[str] = Field(description="Step texts, without 'Step i:' prefixes.")
    answer: str | None = Field(
        None, description="The solution's final answer ('#### ...'), if it states one."
    )
    first_wrong_step: int | None = Field(None, ge=1, description="1-based; None when no step is wrong.")
    source: str = Field(description="'reference', 'corrupt:<kind>', 'policy', 'processbench', ...")
    final_answer_correct: bool | None = Field(
        None, description="Whether the final answer is right; None if unknown."
    )

    @model_validator(mode="after")
    def _label_in_range(self) -> LabelledSolution:
        if self.first_wrong_step is not None and self.first_wrong_step > len(self.steps):
            raise ValueError(
                f"first_wrong_step {self.first_wrong_step} is past the last of {len(self.steps)} steps"
            )
        return self

    @property
    def solution(self) -> str:
        """The solution as a critic sees it: numbered steps, then '#### answer'."""
        return render_solution(self.steps, self.answer)

    @property
    def erroneous(self) -> bool:
        return self.first_wrong_step is not None


def item_id(task_id: str, source: str, steps: list[str], answer: str | None) -> str:
    """An id from the content, so the same solution gets the same id whatever seed or order produced it."""
    digest = hashlib.sha256(json.dumps([steps, answer]).encode()).hexdigest()[:10]
    return f"{task_id}#{source}#{digest}"


# --- equations in step text -----------------------------------------------------------------------------------

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


def _value(text: str) -> Fraction:
    return Fraction(text.replace("$", "").replace(",", ""))


def _tokens(text: str) -> list[_Tok]:
    return [_Tok(m.lastgroup or "other", m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def _number(t: _Tok, sign: _Tok | None = None) -> Number:
    """The number a token writes; its span leaves out a '$' so that a replacement keeps the unit."""
    start = t.start + t.text.startswith("$")
    value = _value(t.text)
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
                return -_value(nxt.text)
            return -self._unary()
        return self._primary()

    def _primary(self) -> Fraction:
        t = self.toks[self.i]
        self.i += 1
        if t.kind == "num":
            self.numbers.append(_number(t))
            return _value(t.text)
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


def _numbers_in(text: str) -> set[Fraction]:
    return {_value(t.text) for t in _tokens(text) if t.kind == "num"}


def _is_chain(parsed: list[list[Equation]]) -> bool:
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
        return _numbers_in(expression)
    parsed = [equations(s) for s in task.reference_steps]
    if not _is_chain(parsed):
        return None
    return {parsed[0][0].operands[0].value} | {eqs[0].operands[1].value for eqs in parsed}


# --- labelling the policy's own solutions ---------------------------------------------------------------------


def _known(value: Fraction, known: list[Fraction]) -> bool:
    return any(abs(value - k) <= TOLERANCE for k in known)


def label_solution(task: Task, text: str, source: str = "policy") -> LabelledSolution | None:
    """The solution with its first wrong step found by recomputation, or None when that cannot be certain.

    A step is wrong if one of its equations is false, or (arithmetic problems, whose operands are known) if it
    uses a number that is neither in the problem nor a result of an earlier step. Every step up to the first
    wrong one must hold an equation (prose cannot be checked); steps after it do not matter to the label. A
    solution whose steps all check is labelled correct only if its final answer is right; otherwise the error
    is in something unchecked, and the solution is unlabellable.
    """
    steps, final = split_steps(text)
    if not steps or not task.answer:
        return None
    operands = problem_operands(task)
    known: list[Fraction] = sorted(operands) if operands is not None else []
    first_wrong: int | None = None
    for i, step in enumerate(steps, 1):
        eqs = equations(step)
        if not eqs:
            return None
        for eq in eqs:
            uses_unknown = operands is not None and any(not _known(n.value, known) for n in eq.operands)
            if not eq.holds or uses_unknown:
                first_wrong = i
                break
            known.append(eq.rhs)  # a result may be used by a later equation of the same step
        if first_wrong is not None:
            break
    got = extract_answer(text)
    answer_right = got is not None and numbers_equal(got, task.answer)
    if first_wrong is None and not answer_right:
        return None
    return LabelledSolution(
        id=item_id(task.id, source, steps, final),
        task=task,
        steps=steps,
        answer=final,
        first_wrong_step=first_wrong,
        source=source,
        final_answer_correct=answer_right,
    )


# --- corrupting reference solutions ---------------------------------------------------------------------------


def display(value: Fraction) -> str:
    """A value as a step would write it: an integer, an exact short decimal, or two decimals."""
    if value.denominator == 1:
        return str(value.numerator)
    short = f"{float(value):.4f}".rstrip("0").rstrip(".")
    return short if Fraction(short) == value else f"{float(value):.2f}"


def _replace(text: str, spans: list[tuple[int, int, str]]) -> str:
    for start, end, new in sorted(spans, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _propagate(
    steps: list[str], changed: dict[Fraction, Fraction], start: int, after: int, chain: bool
) -> bool:
    """Carry wrong values into every later equation, recomputing each result; False if one cannot be redone.

    Works in place from character `after` of step `start`. A chain carries its quantity only into the first
    operand of each step (in '3 + 5 = 8', '8 * 8 = 64' only the first 8 is the carried one); prose references
    (GSM8K) carry it wherever the number appears, the best that text without structure allows.
    """
    for i in range(start, len(steps)):
        pos = after if i == start else 0
        count = len(equations(steps[i]))
        for j in range(sum(eq.end <= pos for eq in equations(steps[i])), count):
            current = equations(steps[i])
            if len(current) != count:  # a rewritten number changed how the step reads
                return False
            eq = current[j]
            targets = eq.operands[:1] if chain else eq.operands
            text = _replace(
                steps[i], [(n.start, n.end, display(changed[n.value])) for n in targets if n.value in changed]
            )
            redone = equations(text)
            if len(redone) != count:
                return False
            steps[i] = text
            if redone[j].holds:  # uses nothing that changed
                continue
            res = redone[j].result
            if res is None:
                return False
            value = Fraction(display(redone[j].lhs))
            steps[i] = _replace(text, [(res.start, res.end, display(value))])
            changed[eq.rhs] = value
        if not chain:  # the same quantity named in prose ('... 72 clips altogether')
            spans = [(e.start, e.end) for e in equations(steps[i])]
            prose = [
                (n.start, n.end, display(changed[n.value]))
                for n in (_number(t) for t in _tokens(steps[i]) if t.kind == "num")
                if n.start >= pos and n.value in changed and not any(s <= n.start < e for s, e in spans)
            ]
            steps[i] = _replace(steps[i], prose)
    return True


@dataclass(frozen=True)
class _Ref:
    steps: list[str]
    parsed: list[list[Equation]]
    chain: bool
    problem: set[Fraction]  # numbers the problem states
    results: list[set[Fraction]]  # results of each step

    def earlier(self, i: int) -> set[Fraction]:
        return set().union(*self.results[:i])

    @property
    def known(self) -> set[Fraction]:
        return self.problem | self.earlier(len(self.steps))


def _wrong_values(
    value: Fraction, avoid: set[Fraction], rng: random.Random, swaps: bool = False
) -> list[Fraction]:
    """Plausible wrong values for `value`, shuffled: digit swaps (a copying slip) or a small nonzero delta."""
    swapped: list[Fraction] = []
    if swaps and value.denominator == 1 and abs(value) >= 10:
        digits = str(abs(value.numerator))
        for k in range(len(digits) - 1):
            new = digits[:k] + digits[k + 1] + digits[k] + digits[k + 2 :]
            if new[0] != "0":
                swapped.append(Fraction(int(new)) * (1 if value > 0 else -1))
    deltas = [value + d for d in ([1, 2, 3] if 0 < value <= 3 else [1, 2, 3, -1, -2, -3])]
    for candidates in (swapped, deltas):  # a slip that lands on a number the problem uses would not be one
        out = [v for v in dict.fromkeys(candidates) if v not in avoid and v != value]
        if out:
            rng.shuffle(out)
            return out
    return []


_Candidates = Iterator[tuple[list[str], int]]  # corrupted steps, 0-based index of the first wrong one


def _rewrite_operand(ref: _Ref, i: int, j: int, k: int, wrong: Fraction) -> tuple[list[str], int] | None:
    """Step i's operand k of equation j replaced by `wrong`, its result recomputed, later steps carried."""
    steps = list(ref.steps)
    eq = ref.parsed[i][j]
    n = eq.operands[k]
    text = _replace(steps[i], [(n.start, n.end, display(wrong))])
    redone = equations(text)
    if len(redone) != len(ref.parsed[i]) or redone[j].result is None:
        return None
    res = redone[j].result
    assert res is not None
    new = Fraction(display(redone[j].lhs))
    if new == eq.rhs:
        return None
    steps[i] = _replace(text, [(res.start, res.end, display(new))])
    changed = {eq.rhs: new}
    after = res.start + len(display(new))
    return (steps, i) if _propagate(steps, changed, i, after, ref.chain) else None


def _calculation(ref: _Ref, rng: random.Random) -> _Candidates:
    slots = [(i, j) for i, eqs in enumerate(ref.parsed) for j, eq in enumerate(eqs) if eq.result is not None]
    rng.shuffle(slots)
    for i, j in slots:
        eq = ref.parsed[i][j]
        res = eq.result
        assert res is not None
        for wrong in _wrong_values(eq.rhs, ref.known, rng):
            steps = list(ref.steps)
            steps[i] = _replace(steps[i], [(res.start, res.end, display(wrong))])
            changed = {eq.rhs: wrong}
            if _propagate(steps, changed, i, res.start + len(display(wrong)), ref.chain):
                yield steps, i


def _operand_slots(ref: _Ref, copied: bool) -> list[tuple[int, int, int]]:
    """Operands stated by the problem (copied=False), or carried from an earlier step's result (copied=True)."""
    out = []
    for i, eqs in enumerate(ref.parsed):
        for j, eq in enumerate(eqs):
            for k, n in enumerate(eq.operands):
                if ref.chain:
                    carried = i > 0 and k == 0
                else:
                    carried = n.value in ref.earlier(i) and n.value not in ref.problem
                    if not copied and n.value not in ref.problem:
                        continue
                if eq.result is not None and carried == copied:
                    out.append((i, j, k))
    return out


def _operand(ref: _Ref, rng: random.Random, copied: bool = False) -> _Candidates:
    slots = _operand_slots(ref, copied)
    rng.shuffle(slots)
    for i, j, k in slots:
        n = ref.parsed[i][j].operands[k]
        for wrong in _wrong_values(n.value, ref.known, rng, swaps=copied):
            if wrong <= 0 < n.value:
                continue
            if done := _rewrite_operand(ref, i, j, k, wrong):
                yield done


def _start_quantity(ref: _Ref, i: int) -> Fraction:
    """The quantity step i works on: a chain's first operand; in prose, a carried result if it uses one, else
    its largest operand ('3 * 18' works on 18, '48/2' on 48)."""
    operands = ref.parsed[i][0].operands
    if ref.chain:
        return operands[0].value
    carried = [n.value for n in operands if n.value in ref.earlier(i)]
    return carried[0] if carried else max((n.value for n in operands), key=abs)


def _drop(ref: _Ref, rng: random.Random) -> _Candidates:
    slots = [i for i, eqs in enumerate(ref.parsed[:-1]) if eqs and eqs[0].operands]
    rng.shuffle(slots)
    for i in slots:
        steps = ref.steps[:i] + ref.steps[i + 1 :]
        start = _start_quantity(ref, i)  # what the next step now continues from
        changed = {r: start for r in ref.results[i] if r != start}
        if not changed or not _propagate(steps, changed, i, 0, ref.chain):
            continue
        wrong = next((k for k in range(i, len(steps)) if steps[k] != ref.steps[k + 1]), None)
        if wrong is not None:
            yield steps, wrong


_KINDS: dict[str, Callable[[_Ref, random.Random], _Candidates]] = {
    "calculation": _calculation,
    "operand": _operand,
    "copy": lambda ref, rng: _operand(ref, rng, copied=True),
    "drop": _drop,
}


def reference(task: Task) -> LabelledSolution:
    """The task's own reference solution, labelled correct."""
    steps = list(task.reference_steps)
    return LabelledSolution(
        id=item_id(task.id, "reference", steps, task.answer),
        task=task,
        steps=steps,
        answer=task.answer,
        first_wrong_step=None,
        source="reference",
        final_answer_correct=True,
    )


def corrupt(task: Task, kind: str, rng: random.Random) -> LabelledSolution | None:
    """The reference with one error of `kind`, carried through later steps; None where the kind does not apply.

    calculation: a step's result off by a small delta. operand: a step uses a number the problem does not state
    (its result computed correctly from it). copy: a step starts from a quantity copied wrong from an earlier
    result. drop: a non-last step is removed, so the next step continues from the quantity before it.
    Every later step is recomputed from the wrong value, so the corrupted step is exactly the first wrong one
    and the final answer is wrong; a corruption that would leave the final answer right is not used.
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown corruption kind {kind!r}; choose from {', '.join(CORRUPTION_KINDS)}")
    parsed = [equations(s) for s in task.reference_steps]
    try:
        answer = _value(task.answer)
    except (ValueError, ZeroDivisionError):
        return None
    # A reference with a step that does not check (or none to check) cannot be corrupted with certainty.
    if not parsed or any(not eqs or not all(e.holds for e in eqs) for eqs in parsed):
        return None
    chain = _is_chain(parsed)
    problem = problem_operands(task) if chain else None
    ref = _Ref(
        steps=list(task.reference_steps),
        parsed=parsed,
        chain=chain,
        problem=problem if problem is not None else _numbers_in(task.prompt),
        results=[{eq.rhs for eq in eqs} for eqs in parsed],
    )
    if ref.parsed[-1][-1].rhs != answer:  # the answer is not the last result: a change could not be followed
        return None
    for steps, index in _KINDS[kind](ref, rng):
        # Every step after the corrupted one must check, and the error must reach the final answer.
        later = steps[index + 1 :] if kind == "calculation" else steps[index:]
        final = equations(steps[-1])
        if not final or any(not all(e.holds for e in equations(s)) for s in later) or final[-1].rhs == answer:
            continue
        new_answer = display(final[-1].rhs)
        source = f"corrupt:{kind}"
        return LabelledSolution(
            id=item_id(task.id, source, steps, new_answer),
            task=task,
            steps=steps,
            answer=new_answer,
            first_wrong_step=index + 1,
            source=source,
            final_answer_correct=False,
        )
    return None
