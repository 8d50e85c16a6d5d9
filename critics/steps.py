"""Solutions as numbered steps: the unit every step-wise critic, benchmark label and search node points into.

One convention across strop: a solution is its steps, one per line ('Step 3: 46 * 3 = 138' or a bare line),
then an optional final-answer line '#### 138'. Steps are numbered from 1 in prompts and in
`Critique.first_wrong_step`; ProcessBench's 0-based labels are converted where they are read.
"""

from __future__ import annotations

import re

_STEP_PREFIX = re.compile(r"^\s*(?:step\s*\d+\s*[:.)]\s*|\d+[.)]\s+)", re.IGNORECASE)
_FINAL = re.compile(r"^\s*####\s*(.*)$")


def split_steps(solution: str) -> tuple[list[str], str | None]:
    """The steps of a solution (numbering prefixes removed, blank lines dropped) and its '####' answer.

    Model output is untrusted: anything splits, nothing raises. Text after a '####' line is ignored, as the
    verifiers ignore it.
    """
    steps: list[str] = []
    final: str | None = None
    for line in (solution or "").splitlines():
        if m := _FINAL.match(line):
            final = m.group(1).strip() or None
            break
        text = _STEP_PREFIX.sub("", line, count=1).strip()
        if text:
            steps.append(text)
    return steps, final


def render_steps(steps: list[str]) -> str:
    """Numbered steps, one per line: what a critic is shown and points into."""
    return "\n".join(f"Step {i}: {s}" for i, s in enumerate(steps, 1))


def render_solution(steps: list[str], answer: str | None) -> str:
    """A full solution in strop's convention: numbered steps, then '#### answer' when there is one."""
    body = render_steps(steps)
    if answer is None:
        return body
    return f"{body}\n#### {answer}" if body else f"#### {answer}"
