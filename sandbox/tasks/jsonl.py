"""A user's own JSONL task file with a declared answer type: number, exact string, or multiple choice.

Each line: `prompt` (or `question`), `answer`; optional `id`, `steps` (list or newline-separated string),
`choices` (list, for answer_type='choice'), and `split` ('train'/'heldout') to pin a task's split.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

from strop.sandbox.tasks.base import Split, Task, Verdict
from strop.sandbox.tasks.extract import extract_answer, extract_marked
from strop.sandbox.tasks.gsm8k import TaskFileError, math_equal, read_jsonl
from strop.sandbox.tasks.guard import split_of

AnswerType = Literal["number", "exact", "choice"]
_LETTERS = "ABCDEFGHIJ"


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().strip(".!\"'`").strip().casefold()


@dataclass(frozen=True)
class JsonlTaskSet:
    """Tasks from a JSONL file, checked by the declared answer type."""

    path: Path = field(metadata={"help": "The JSONL file: one task per line."})
    answer_type: AnswerType = field(default="number", metadata={"help": "number | exact | choice."})
    seed: int = field(
        default=0, metadata={"help": "Order in which tasks are drawn; splits do not depend on it."}
    )
    heldout_fraction: float = field(
        default=0.1, metadata={"help": "Share held out when a line has no 'split'."}
    )
    name: str = field(default="jsonl", metadata={"help": "Task-set name, the prefix of task ids."})

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).expanduser())
        if self.answer_type not in ("number", "exact", "choice"):
            raise ValueError(f"answer_type must be number, exact or choice; got {self.answer_type!r}")

    @cached_property
    def _all(self) -> list[Task]:
        out: list[Task] = []
        seen: set[str] = set()
        for lineno, row in enumerate(read_jsonl(self.path), 1):
            where = f"{self.path}:{lineno}"
            prompt = row.get("prompt", row.get("question"))
            answer = row.get("answer")
            if not isinstance(prompt, str) or answer is None:
                raise TaskFileError(f"{where}: needs 'prompt' (or 'question') and 'answer'")
            key = str(row.get("id") or hashlib.sha256(prompt.strip().encode()).hexdigest()[:12])
            if key in seen:
                raise TaskFileError(f"{where}: duplicate task id {key!r}")
            seen.add(key)
            steps = row.get("steps") or []
            steps = (
                [s for s in steps.splitlines() if s.strip()]
                if isinstance(steps, str)
                else [str(s) for s in steps]
            )
            metadata: dict[str, object] = {"answer_type": self.answer_type, "line": lineno}
            answer_s = str(answer)
            if self.answer_type == "choice":
                choices = row.get("choices")
                if not isinstance(choices, list) or len(choices) < 2 or len(choices) > len(_LETTERS):
                    raise TaskFileError(
                        f"{where}: answer_type 'choice' needs a 'choices' list of 2-10 options"
                    )
                letters = _LETTERS[: len(choices)]
                if answer_s.strip().upper() in letters:
                    answer_s = answer_s.strip().upper()
                elif hit := [i for i, c in enumerate(choices) if _norm(str(c)) == _norm(answer_s)]:
                    answer_s = letters[hit[0]]
                else:
                    raise TaskFileError(
                        f"{where}: answer {answer!r} is neither a letter nor one of the choices"
                    )
                metadata["choices"] = [str(c) for c in choices]
                prompt = (
                    prompt.rstrip() + "\n" + "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(choices))
                )
            raw_split = row.get("split")
            split = (
                Split(str(raw_split)) if raw_split else split_of(f"{self.name}:{key}", self.heldout_fraction)
            )
            out.append(
                Task(
                    id=f"{self.name}/{split}/{key}",
                    set_name=self.name,
                    split=split,
                    prompt=prompt,
                    answer=answer_s,
                    reference_steps=steps,
                    metadata=metadata,
                )
            )
        return out

    def tasks(self, split: Split | str, n: int | None = None) -> list[Task]:
        split = Split(split)
        chosen = [t for t in self._all if t.split == split]
        random.Random(self.seed).shuffle(chosen)
        return chosen if n is None else chosen[:n]

    def _extract(self, task: Task, output: str) -> str | None:
        if self.answer_type == "number":
            return extract_answer(output)
        marked = extract_marked(output)
        if self.answer_type == "exact":
            if marked is not None:
                return marked
            lines = [line for line in output.splitlines() if line.strip()]
            return lines[-1].strip() if lines else None
        choices = [str(c) for c in task.metadata.get("choices", [])]  # type: ignore[union-attr]
        letters = _LETTERS[: len(choices)]
        text = marked if marked is not None else output
        if m := re.findall(rf"(?<![A-Za-z])\(?([{letters}])\)?(?![A-Za-z])", text):
            return m[-1] if marked is None else m[0]
        for i, c in enumerate(choices):
            if _norm(c) and _norm(c) in _norm(text):
                return letters[i]
        return None

    def verify(self, task: Task, output: str) -> Verdict:
        got = self._extract(task, output)
        if got is None:
            return Verdict(reward=0.0, correct=False, extracted=None, reason="no answer found")
        if self.answer_type == "number":
            ok = math_equal(got, task.answer)
        elif self.answer_type == "exact":
            ok = _norm(got) == _norm(task.answer)
        else:
            ok = got == task.answer
        return Verdict(
            reward=1.0 if ok else 0.0,
            correct=ok,
            extracted=got,
            reason="correct" if ok else f"expected {task.answer}, got {got}",
        )
