"""GSM8K-format word problems from any JSONL file with `question` and `answer` ending in '#### N'.

References keep GSM8K's reasoning lines as numbered steps with the `<<48/2=24>>` calculator annotations
removed (they are tool-call residue, not reasoning a model should imitate). Answers are compared with
math-verify, so '1,000', '1000.0' and '\\frac{2000}{2}' all match 1000.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

from strop.sandbox.tasks.base import Split, Task, Verdict
from strop.sandbox.tasks.extract import answer_verdict, numbers_equal
from strop.sandbox.tasks.guard import split_of

_CALC = re.compile(r"<<[^<>]*>>")


class TaskFileError(ValueError):
    """A task file is missing or malformed; the message names the file and line."""


def strip_calculator(text: str) -> str:
    """Remove GSM8K's `<<a*b=c>>` calculator annotations."""
    return _CALC.sub("", text)


def parse_gsm8k_answer(answer: str) -> tuple[list[str], str]:
    """Split a GSM8K answer into its reasoning steps and the final answer after '####'."""
    if "####" not in answer:
        raise ValueError("a GSM8K answer must end with '#### N'")
    body, final = answer.rsplit("####", 1)
    steps = [line.strip() for line in strip_calculator(body).splitlines() if line.strip()]
    return steps, final.strip().replace(",", "")


def math_equal(predicted: str, gold: str) -> bool:
    """Equality by math-verify, falling back to numeric comparison when it cannot parse either side."""
    from math_verify import parse, verify  # sympy-heavy: imported on first use, not at `strop --help`

    # math-verify's timeouts use SIGALRM, which only works on the main thread; loops verify in workers.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold_p = parse(gold, parsing_timeout=timeout)
    pred_p = parse(predicted, parsing_timeout=timeout)
    if gold_p and pred_p and verify(gold_p, pred_p, timeout_seconds=timeout):
        return True
    return numbers_equal(predicted, gold)


def read_jsonl(path: Path) -> list[dict[str, object]]:
    if not path.is_file():
        raise TaskFileError(f"task file {path} does not exist")
    rows: list[dict[str, object]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskFileError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise TaskFileError(f"{path}:{lineno}: each line must be a JSON object")
            rows.append(row)
    return rows


@dataclass(frozen=True)
class GSM8KTaskSet:
    """Any GSM8K-format JSONL file; the split of a problem is a hash of its question text."""

    path: Path = field(metadata={"help": "The JSONL file (`question`, `answer` ending in '#### N')."})
    seed: int = field(
        default=0, metadata={"help": "Order in which tasks are drawn; splits do not depend on it."}
    )
    heldout_fraction: float = field(default=0.1, metadata={"help": "Share of problems kept held out."})
    assign: Literal["hash", "train", "heldout"] = field(
        default="hash",
        metadata={
            "help": "'hash' splits the file; 'heldout' makes it all held out (e.g. GSM8K's test file)."
        },
    )
    name: str = field(default="gsm8k", metadata={"help": "Task-set name, the prefix of task ids."})

    @classmethod
    def from_options(cls, path: str | Path | None = None, **options: object) -> GSM8KTaskSet:
        """Resolve the file from `path` or $STROP_GSM8K, failing with what to pass when neither is set."""
        raw = path or os.environ.get("STROP_GSM8K")
        if not raw:
            raise TaskFileError(
                "the gsm8k task set needs a file: pass path=... (CLI: --option path=FILE) or set STROP_GSM8K"
            )
        return cls(path=Path(str(raw)).expanduser(), **options)  # type: ignore[arg-type]

    @cached_property
    def _all(self) -> list[Task]:
        out: list[Task] = []
        for lineno, row in enumerate(read_jsonl(self.path), 1):
            question, answer = row.get("question"), row.get("answer")
            if not isinstance(question, str) or not isinstance(answer, str):
                raise TaskFileError(f"{self.path}:{lineno}: needs string fields 'question' and 'answer'")
            try:
                steps, final = parse_gsm8k_answer(answer)
            except ValueError as exc:
                raise TaskFileError(f"{self.path}:{lineno}: {exc}") from exc
            key = hashlib.sha256(question.strip().encode()).hexdigest()
            split = split_of(key, self.heldout_fraction) if self.assign == "hash" else Split(self.assign)
            out.append(
                Task(
                    id=f"{self.name}/{split}/{key[:12]}",
                    set_name=self.name,
                    split=split,
                    prompt=question.strip(),
                    answer=final,
                    reference_steps=steps,
                    metadata={"answer_type": "number", "line": lineno},
                )
            )
        return out

    def tasks(self, split: Split | str, n: int | None = None) -> list[Task]:
        split = Split(split)
        chosen = [t for t in self._all if t.split == split]
        random.Random(self.seed).shuffle(chosen)
        return chosen if n is None else chosen[:n]

    def verify(self, task: Task, output: str) -> Verdict:
        return answer_verdict(output, task.answer, math_equal)
