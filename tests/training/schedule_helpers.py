"""Stand-in cycle functions for the schedule tests, named by dotted path in a schedule like the real one
(`strop.training.cycle_lease:evolve_next_cycle`): they record each call instead of training a model, so the
tests can count how often a cycle body ran and whether two ever overlapped."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

CALLS: list[dict[str, Any]] = []
_lock = threading.Lock()
SECONDS = 0.3
FAIL_FIRST: list[bool] = [False]


def reset(seconds: float = 0.3, fail_first: bool = False) -> None:
    global SECONDS
    with _lock:
        CALLS.clear()
    SECONDS = seconds
    FAIL_FIRST[0] = fail_first


def record_cycle(recipe: Any, store: Any, *, keeper: Any, cycles: int | None = None) -> int:
    """Sleep like a short cycle, holding the lease; record who ran it and when."""
    start = time.monotonic()
    with _lock:
        n = len(CALLS) + 1
        fail = FAIL_FIRST[0] and n == 1
        CALLS.append({"holder": keeper.holder, "recipe": recipe.name, "start": start, "end": None})
    time.sleep(SECONDS)
    with _lock:
        CALLS[n - 1]["end"] = time.monotonic()
    if fail:
        raise RuntimeError("stand-in cycle failed on purpose")
    return n


def overlaps() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs of calls that ran at the same time."""
    with _lock:
        calls = sorted(CALLS, key=lambda c: c["start"])
    return [(a, b) for a, b in itertools.pairwise(calls) if b["start"] < (a["end"] or float("inf"))]
