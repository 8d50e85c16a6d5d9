"""The in-memory side of reflection search: one scope's vectors as a growing numpy matrix.

Kept apart from reflections.py (the SQL and the search rules) because it is plain array bookkeeping: rows
arrive in `seq` order and are appended, so a refresh copies only what is new.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np


class Matrix:
    """The cached vectors of one (scope, model): rows in `seq` order, task ids as small integer codes.

    Arrays grow by half their capacity at a time, so an incremental refresh mostly copies only the new rows."""

    def __init__(self) -> None:
        self.count = 0
        self.dim = 0
        self._seqs = np.zeros(0, dtype=np.int64)
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self._tasks = np.zeros(0, dtype=np.int32)
        self.codes: dict[str, int] = {}
        self.counted = time.monotonic()  # when the row count was last known to match the store

    @property
    def seqs(self) -> np.ndarray:
        return self._seqs[: self.count]

    @property
    def vectors(self) -> np.ndarray:
        return self._vectors[: self.count]

    @property
    def tasks(self) -> np.ndarray:
        return self._tasks[: self.count]

    @property
    def max_seq(self) -> int:
        return int(self._seqs[self.count - 1]) if self.count else 0

    def extend(self, rows: Sequence[Any]) -> None:
        if not rows:
            return
        dim = int(rows[0].dim)
        if self.count and dim != self.dim:
            raise ValueError(f"reflection vectors of {dim} dimensions beside cached ones of {self.dim}")
        n, end = len(rows), self.count + len(rows)
        if end > self._seqs.shape[0]:
            cap = max(end + end // 4, self._seqs.shape[0] * 3 // 2, 1024)  # headroom: new rows rarely copy
            self._seqs = np.resize(self._seqs, cap)
            self._tasks = np.resize(self._tasks, cap)
            grown = np.zeros((cap, dim), dtype=np.float32)
            if self.count:
                grown[: self.count] = self._vectors[: self.count]
            self._vectors = grown
        self.dim = dim
        self._vectors[self.count : end] = np.frombuffer(
            b"".join(r.vector for r in rows), dtype="<f4"
        ).reshape(n, dim)
        self._seqs[self.count : end] = np.fromiter((r.seq for r in rows), np.int64, n)
        self._tasks[self.count : end] = np.fromiter(
            (self.codes.setdefault(r.task_id, len(self.codes)) for r in rows), np.int32, n
        )
        self.count = end
