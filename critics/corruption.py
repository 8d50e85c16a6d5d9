"""Reference solutions corrupted in one known way, so that their first wrong step is known for certain.

A corruption changes one number of one step (a result, an operand the problem does not state, a quantity
copied wrong) or drops a step, then recomputes every later equation from the wrong value, so exactly the
corrupted step is the first wrong one and the final answer is wrong. Deterministic given its
`random.Random`; a kind that does not apply to a reference yields None, never a guess.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

from strop.critics.equations import (
    Equation,
    display,
    equations,
    is_chain,
    numbers,
    numbers_in,
    parse_number,
    problem_operands,
)
from strop.critics.labelling import LabelledSolution, item_id
from strop.sandbox.tasks.base import Task

CORRUPTION_KINDS = ("calculation", "operand", "copy", "drop")


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
                for n in numbers(steps[i])
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
        answer = parse_number(task.answer)
    except (ValueError, ZeroDivisionError):
        return None
    # A reference with a step that does not check (or none to check) cannot be corrupted with certainty.
    if not parsed or any(not eqs or not all(e.holds for e in eqs) for eqs in parsed):
        return None
    chain = is_chain(parsed)
    problem = problem_operands(task) if chain else None
    ref = _Ref(
        steps=list(task.reference_steps),
        parsed=parsed,
        chain=chain,
        problem=problem if problem is not None else numbers_in(task.prompt),
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
