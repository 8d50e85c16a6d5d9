"""Finding a move in model text, the way small models actually write it.

Small models wrap a move in many ways: "[4]", "\\boxed{4}", "I choose 4", "**Move:** [bet]", after a
paragraph of reasoning that mentions other moves. The rule everywhere: text inside a closed <think> block is
never a move; explicit markers (\\boxed{...}, then [...]) win over free text; among markers of one kind the
last one wins, because reasoning comes first and the answer last. A game only supplies how to read one
candidate string and how to read free text.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_THINK_CLOSED = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_THINK_OPEN = re.compile(r"<think>.*", re.IGNORECASE | re.DOTALL)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_BRACKET = re.compile(r"\[([^\[\]]*)\]")


def answer_region(text: str) -> str:
    """The text outside reasoning: closed <think> blocks dropped, and an unclosed one (truncated) too."""
    return _THINK_OPEN.sub("", _THINK_CLOSED.sub("", text))


def marked_candidates(text: str) -> list[str]:
    """Contents of \\boxed{...} then of [...] markers, each kind last-first."""
    boxed = [m.group(1) for m in _BOXED.finditer(text)]
    brackets = [m.group(1) for m in _BRACKET.finditer(text)]
    return boxed[::-1] + brackets[::-1]


def find_move(
    text: str,
    read: Callable[[str], str | None],
    read_free: Callable[[str], str | None] | None = None,
) -> str | None:
    """The first candidate `read` accepts (markers, last first), else what `read_free` finds in the text."""
    region = answer_region(text)
    for candidate in marked_candidates(region):
        if (action := read(candidate.strip())) is not None:
            return action
    return read_free(region) if read_free is not None else None


def last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    """The last non-overlapping match of `pattern` in `text`."""
    found = None
    for found in pattern.finditer(text):  # noqa: B007 - we want the last one
        pass
    return found
