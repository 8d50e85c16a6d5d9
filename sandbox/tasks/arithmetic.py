"""Synthetic arithmetic: the embedded default task set, deterministic by seed.

The split of a problem is a hash of its canonical expression, so a held-out problem can never be generated
into the training split, whatever the seed, the phrasing or the number of tasks drawn.
The defaults (two-digit addition, 'What is 98 + 69?') are what the embedded `tiny` model is pre-trained on:
changing them changes what every test and demo measures.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from strop.sandbox.tasks.base import Split, Task, TaskSetError, Verdict
from strop.sandbox.tasks.extract import answer_verdict

OPS = ("+", "-", "*")

# Word-problem templates per operation: {a} is the running total, {b} the operand. Each keeps the quantity
# in one noun so that a chain of steps reads as one story.
_OPENERS = (
    "{name} has {a} {item}.",
    "A shop starts the day with {a} {item}.",
    "There are {a} {item} in a box.",
)
_STEPS = {
    "+": ("Then {b} more {item} arrive.", "{name} gets {b} more {item}."),
    "-": ("Then {b} {item} are given away.", "{name} loses {b} {item}."),
    "*": ("Then the number of {item} is multiplied by {b}.", "Each {item} is replaced by {b} {item}."),
}
_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Femi")
_ITEMS = ("apples", "marbles", "stickers", "coins", "books", "shells")


@dataclass(frozen=True)
class ArithmeticTaskSet:
    """Two-digit addition by default; the knobs make harder variants."""

    digits: int = field(default=2, metadata={"help": "Digits of every operand (1..9)."})
    ops: tuple[str, ...] = field(default=("+",), metadata={"help": "Operations drawn from: '+', '-', '*'."})
    steps: int = field(default=1, metadata={"help": "Operations per problem; each is one reference step."})
    seed: int = field(default=0, metadata={"help": "Seed of the generator; splits do not depend on it."})
    heldout_fraction: float = field(default=0.1, metadata={"help": "Share of expressions kept held out."})
    word_problems: bool = field(default=False, metadata={"help": "Phrase problems as short stories."})
    name: str = field(default="arithmetic", metadata={"help": "Task-set name, the prefix of task ids."})

    def __post_init__(self) -> None:
        if isinstance(self.ops, str):  # `ops="+-"` from a CLI option or a recipe
            object.__setattr__(self, "ops", tuple(self.ops))
        bad = [op for op in self.ops if op not in OPS]
        if bad or not self.ops:
            raise TaskSetError(f"arithmetic ops must be drawn from {OPS}; got {self.ops!r}")
        if not 1 <= self.digits <= 9:
            raise TaskSetError(f"arithmetic digits must be 1..9; got {self.digits}")
        if self.steps < 1:
            raise TaskSetError(f"arithmetic steps must be at least 1; got {self.steps}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise TaskSetError(f"heldout_fraction must be in [0, 1); got {self.heldout_fraction}")

    def _split_of(self, text: str) -> Split:
        h = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return Split.HELDOUT if h < self.heldout_fraction else Split.TRAIN

    def _problem(self, rng: random.Random) -> tuple[str, list[str], int, list[tuple[str, int]]]:
        lo, hi = 10 ** (self.digits - 1), 10**self.digits - 1
        if self.digits == 1:
            lo = 1
        value = rng.randint(lo, hi)
        expr = str(value)
        steps: list[str] = []
        chain: list[tuple[str, int]] = []
        for _ in range(self.steps):
            op = rng.choice(self.ops)
            b = rng.randint(lo, hi)
            if self.word_problems and op == "-" and b > value:
                op = "+"  # a story cannot give away more than there is
            new = value + b if op == "+" else value - b if op == "-" else value * b
            steps.append(f"{value} {op} {b} = {new}")
            chain.append((op, b))
            expr = f"{expr} {op} {b}" if not steps[:-1] else f"({expr}) {op} {b}"
            value = new
        return expr, steps, value, chain

    def _story(self, start: int, chain: list[tuple[str, int]], key: str) -> str:
        """A word problem for the chain; the choice of words is a hash of the expression, so it is stable."""
        h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
        name, item = _NAMES[h % len(_NAMES)], _ITEMS[(h // 7) % len(_ITEMS)]
        parts = [_OPENERS[(h // 49) % len(_OPENERS)].format(name=name, a=start, item=item)]
        for i, (op, b) in enumerate(chain):
            options = _STEPS[op]
            parts.append(options[(h >> i) % len(options)].format(name=name, b=b, item=item))
        parts.append(f"How many {item} are there now?")
        return " ".join(parts)

    def _space(self) -> int:
        """How many distinct expressions exist, so an oversized request fails fast instead of spinning."""
        width = 10**self.digits - max(1, 10 ** (self.digits - 1))
        return width ** (self.steps + 1) * len(self.ops) ** self.steps

    def tasks(self, split: Split | str, n: int | None = None) -> list[Task]:
        """The first `n` problems of a split (1000 when n is None, or fewer where fewer exist)."""
        split = Split(split)
        want = n if n is not None else 1000
        rng = random.Random(f"{self.name}:{self.seed}:{self.digits}:{self.ops}:{self.steps}:{split}")
        out: list[Task] = []
        seen: set[str] = set()
        attempts = 0
        while len(out) < want:
            attempts += 1
            if attempts > min(200 * want, 20 * self._space()) + 1000:
                if n is None:
                    break
                raise TaskSetError(
                    f"only {len(out)} distinct {split} problems exist for digits={self.digits}, "
                    f"ops={self.ops}, steps={self.steps}; asked for {n}. Ask for fewer or raise `digits`."
                )
            expr, steps, value, chain = self._problem(rng)
            if expr in seen or self._split_of(expr) != split:
                continue
            seen.add(expr)
            start = int(steps[0].split(" ", 1)[0])
            prompt = self._story(start, chain, expr) if self.word_problems else f"What is {expr}?"
            out.append(
                Task(
                    id=f"{self.name}/{split}/{hashlib.sha256(expr.encode()).hexdigest()[:12]}",
                    set_name=self.name,
                    split=split,
                    prompt=prompt,
                    answer=str(value),
                    reference_steps=steps,
                    metadata={"expression": expr, "answer_type": "number"},
                )
            )
        return out

    def verify(self, task: Task, output: str) -> Verdict:
        return answer_verdict(output, task.answer)
