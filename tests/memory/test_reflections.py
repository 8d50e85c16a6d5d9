"""Reflection memory on both backends with hand-made vectors: ordering, exclusion of the asking task and of
held-out tasks (guarded in the query itself), idempotent adds, the incrementally refreshed cache."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import delete, insert

from strop.memory import HeldoutLeakError, Store
from strop.memory.records import CritiqueRecord, EpisodeRecord, RunRecord, StepRecord, utcnow
from strop.memory.reflections import ReflectionItem, ReflectionMemory
from strop.memory.schema import Reflection

SCOPE = "arithmetic[word_problems=True]"


def unit(*xs: float) -> np.ndarray:
    v = np.asarray(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def failed_episode(store: Store, run_id: str, task_id: str, *, answers: list[tuple[str, str, bool]]) -> str:
    """An episode of `task_id` whose answers are (text, critique, hinted), every one judged incorrect."""
    eid = f"ep-{task_id}-{run_id}"
    steps = [
        StepRecord(id=f"{eid}-s{i}", index=i, text=t, metadata={"hinted": h})
        for i, (t, _, h) in enumerate(answers)
    ]
    crits = [
        CritiqueRecord(
            id=f"{eid}-c{i}", step_id=f"{eid}-s{i}", critic_version="verifier", verdict="incorrect", text=c
        )
        for i, (_, c, _) in enumerate(answers)
    ]
    store.write_episode(
        EpisodeRecord(
            id=eid, run_id=run_id, task_id=task_id, loop="best_of_n", reward=0.0, steps=steps, critiques=crits
        )
    )
    return eid


def item(eid: str, task_id: str, split: str = "train") -> ReflectionItem:
    return ReflectionItem(
        eid, task_id, f"problem of {task_id}", f"wrong answer to {task_id}", f"critique of {task_id}", split
    )


@pytest.fixture
def run_id(store: Store) -> str:
    return store.create_run(RunRecord(loop="best_of_n")).id


def test_top_k_is_ordered_by_similarity_one_per_task(store: Store, run_id: str) -> None:
    mem = ReflectionMemory(store, model="hand")
    tasks = {"a": unit(1, 0, 0, 0), "b": unit(1, 1, 0, 0), "c": unit(0, 1, 1, 0), "d": unit(0, 0, 0, 1)}
    items = [item(failed_episode(store, run_id, t, answers=[("x", "y", False)]), t) for t in tasks]
    assert mem.add(SCOPE, items, np.stack(list(tasks.values()))) == 4
    # a second failure of task a, from another run: it must not take a second place in the top k
    other = store.create_run(RunRecord(loop="best_of_n")).id
    assert (
        mem.add(
            SCOPE,
            [item(failed_episode(store, other, "a", answers=[("x", "y", False)]), "a")],
            unit(1, 0.05, 0, 0)[None],
        )
        == 1
    )
    hits = mem.search_vector(SCOPE, unit(1, 0.2, 0, 0), k=3)
    assert [h.task_id for h in hits] == ["a", "b", "c"]
    assert hits[0].score > hits[1].score > hits[2].score
    assert hits[1].problem == "problem of b" and hits[1].answer == "wrong answer to b"
    assert hits[1].critique == "critique of b" and hits[1].episode_id == f"ep-b-{run_id}"
    assert [h.task_id for h in mem.search_vector(SCOPE, unit(0, 0, 0, 1), k=1)] == ["d"]
    assert len(mem.search_vector(SCOPE, unit(0, 0, 0, 1), k=10)) == 4  # every task once, however big k
    assert mem.search_vector("arithmetic", unit(1, 0, 0, 0), k=3) == []  # another task-set label: nothing
    assert ReflectionMemory(store, model="other-model").search_vector(SCOPE, unit(1, 0, 0, 0)) == []


def test_retrieval_never_shows_the_asking_task_or_a_heldout_one(store: Store, run_id: str) -> None:
    mem = ReflectionMemory(store, model="hand")
    for t in ("own", "near", "far"):
        failed_episode(store, run_id, t, answers=[("x", "y", False)])
    vectors = np.stack([unit(1, 0, 0), unit(0.9, 0.1, 0), unit(0, 0, 1)])
    mem.add(SCOPE, [item(f"ep-{t}-{run_id}", t) for t in ("own", "near", "far")], vectors)
    # The store refuses a held-out failure outright ...
    held = failed_episode(store, run_id, "held", answers=[("x", "y", False)])
    with pytest.raises(HeldoutLeakError, match="train-split"):
        mem.add(SCOPE, [item(held, "held", split="heldout")], unit(1, 0, 0)[None])
    # ... and one that got in anyway (written around the API) is still never returned: the query filters.
    with store.db.write() as conn:
        conn.execute(
            insert(Reflection),
            [
                {
                    "scope": SCOPE,
                    "model": "hand",
                    "episode_id": held,
                    "task_id": "held",
                    "split": "heldout",
                    "problem": "held-out problem",
                    "answer": "its answer",
                    "critique": "expected 42",
                    "dim": 3,
                    "vector": unit(1, 0, 0).astype("<f4").tobytes(),
                    "created_at": utcnow(),
                }
            ],
        )
    hits = mem.search_vector(SCOPE, unit(1, 0, 0), k=5, exclude_task_ids=["own"])
    assert [h.task_id for h in hits] == ["near", "far"]
    assert mem.count(SCOPE) == 3
    assert all("held" not in h.problem and "expected 42" not in h.critique for h in hits)
    # A cache filled before the asking task was excluded still masks it.
    assert [
        h.task_id for h in mem.search_vector(SCOPE, unit(1, 0, 0), k=1, exclude_task_ids={"own", "near"})
    ] == ["far"]


def test_add_is_idempotent_and_the_cache_follows_the_store(store: Store, run_id: str) -> None:
    mem = ReflectionMemory(store, model="hand")
    first = [item(failed_episode(store, run_id, t, answers=[("x", "y", False)]), t) for t in ("a", "b")]
    vectors = np.stack([unit(1, 0), unit(0, 1)])
    assert mem.add(SCOPE, first, vectors) == 2
    assert mem.add(SCOPE, first, vectors) == 0  # same (scope, model, episode): nothing new
    assert [h.task_id for h in mem.search_vector(SCOPE, unit(1, 0.1), k=1)] == ["a"]
    # Another process adds a closer failure: the next search sees it (incremental refresh).
    writer = ReflectionMemory(store, model="hand")
    assert (
        writer.add(
            SCOPE,
            [item(failed_episode(store, run_id, "c", answers=[("x", "y", False)]), "c")],
            unit(1, 0.1)[None],
        )
        == 1
    )
    assert [h.task_id for h in mem.search_vector(SCOPE, unit(1, 0.1), k=1)] == ["c"]
    # Rows removed (their episode deleted, say): the scope is read again, nothing stale comes back.
    with store.db.write() as conn:
        conn.execute(delete(Reflection).where(Reflection.task_id == "c"))
    assert [h.task_id for h in mem.search_vector(SCOPE, unit(1, 0.1), k=1)] == ["a"]
    assert mem.count(SCOPE) == 2


def test_failures_are_the_first_unhinted_wrong_answer_of_episodes_not_remembered_yet(
    store: Store, run_id: str
) -> None:
    mem = ReflectionMemory(store, model="hand")
    failed_episode(
        store,
        run_id,
        "t1",
        answers=[
            ("hinted wrong", "c0", True),
            ("own wrong", "expected 5, got 6", False),
            ("later wrong", "c2", False),
        ],
    )
    failed_episode(store, run_id, "t2", answers=[("only hinted", "c", True)])
    solved = "ep-solved"
    store.write_episode(
        EpisodeRecord(
            id=solved,
            run_id=run_id,
            task_id="t3",
            loop="best_of_n",
            reward=1.0,
            steps=[StepRecord(id="s-ok", text="#### 5")],
            critiques=[CritiqueRecord(step_id="s-ok", critic_version="verifier", verdict="correct", text="")],
        )
    )
    found = mem.failures(SCOPE, [run_id])
    assert [(f.task_id, f.answer, f.critique) for f in found] == [("t1", "own wrong", "expected 5, got 6")]
    assert mem.failures(SCOPE, []) == []
    mem.add(SCOPE, [item(found[0].episode_id, "t1")], unit(1, 0)[None])
    assert mem.failures(SCOPE, [run_id]) == []  # remembered under this scope and model
    assert len(mem.failures("another-scope", [run_id])) == 1
