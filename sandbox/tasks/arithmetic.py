"""Synthetic arithmetic: the embedded default task set, deterministic by seed.

The split of a problem is a hash of its canonical text, so a held-out problem can never be generated
into the training split, whatever the seed or the number of tasks drawn.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from sandbox.tasks.base import Split, Task, Verdict
from sandbox.tasks.extract import extract_answer, numbers_equal


@dataclass(frozen=True)
class ArithmeticTaskSet:
    """Two-digit addition by default; the knobs make harder variants."""

    digits: int = 2
    ops: tuple[str, ...] = ("+",)
    steps: int = 1
    seed: int = 0
    heldout_fraction: float = 0.1
    name: str = "arithmetic"

    def _split_of(self, text: str) -> Split:
        h = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return Split.HELDOUT if h < self.heldout_fraction else Split.TRAIN

    def _problem(self, rng: random.Random) -> tuple[str, list[str], int]:
        lo, hi = 10 ** (self.digits - 1), 10**self.digits - 1
        value = rng.randint(lo, hi)
        expr = str(value)
        steps: list[str] = []
        for _ in range(self.steps):
            op = rng.choice(self.ops)
            b = rng.randint(lo, hi)
            new = value + b if op == "+" else value - b if op == "-" else value * b
            steps.append(f"{value} {op} {b} = {new}")
            expr = f"{expr} {op} {b}" if not steps[:-1] else f"({expr}) {op} {b}"
            value = new
        return expr, steps, value

    def tasks(self, split: Split | str, n: int | None = None) -> list[Task]:
        split = Split(split)
        n = n if n is not None else 1000
        rng = random.Random(f"{self.name}:{self.seed}:{self.digits}:{self.ops}:{self.steps}:{split}")
        out: list[Task] = []
        seen: set[str] = set()
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 200 * n + 1000:
                raise ValueError(f"only {len(out)} distinct {split} problems exist for these settings; asked for {n}")
            expr, steps, value = self._problem(rng)
            if expr in seen or self._split_of(expr) != split:
                continue
            seen.add(expr)
            out.append(
                Task(
                    id=f"{self.name}/{split}/{hashlib.sha256(expr.encode()).hexdigest()[:12]}",
                    set_name=self.name,
                    split=split,
                    prompt=f"What is {expr}?",
                    answer=str(value),
                    reference_steps=steps,
                    metadata={"expression": expr},
                )
            )
        return out

    def verify(self, task: Task, output: str) -> Verdict:
        got = extract_answer(output)
        if got is None:
            return Verdict(reward=0.0, correct=False, extracted=None, reason="no answer found")
        ok = numbers_equal(got, task.answer)
        return Verdict(
            reward=1.0 if ok else 0.0, correct=ok, extracted=got,
            reason="correct" if ok else f"expected {task.answer}, got {got}",
        )
