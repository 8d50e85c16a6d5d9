"""`Store.add_examples`: examples added to an episode already stored, idempotently, on both backends."""

from __future__ import annotations

import pytest

from strop.memory import HeldoutLeakError, NotFoundError, Store
from strop.memory.records import ExampleKind, ExampleRecord, RunRecord, TrainingJobRecord
from tests.memory.factories import make_episode, pair_payload


def _pairs(n: int, start: int = 0, split: str = "train") -> list[ExampleRecord]:
    return [
        ExampleRecord(
            id=f"pair-{i}", kind=ExampleKind.PAIR, payload=pair_payload("q", f"good {i}", "bad"), split=split
        )
        for i in range(start, start + n)
    ]


def test_add_examples_is_idempotent_and_feeds_claims(store: Store) -> None:
    run = store.create_run(RunRecord(loop="best_of_n"))
    ep = make_episode(run.id, task_id="t-7", examples=1)
    store.write_episode(ep)
    assert store.add_examples(ep.id, _pairs(3)) == 3
    assert store.add_examples(ep.id, _pairs(4)) == 1  # three already stored: only pair-3 is new
    assert store.add_examples(ep.id, _pairs(2) + _pairs(2)) == 0
    assert store.add_examples(ep.id, []) == 0
    stored = store.list_examples(kind="pair")
    assert [x.id for x in stored] == [f"pair-{i}" for i in range(4)]  # oldest first, in the order added
    assert all(x.episode_id == ep.id and x.task_id == "t-7" for x in stored)  # the episode's task by default
    assert [x.id for x in store.get_episode(ep.id).examples if x.kind == "pair"] == [
        f"pair-{i}" for i in range(4)
    ]
    # The run filter of claims sees them as the run's output; each is claimed once.
    job = store.start_job(TrainingJobRecord(algorithm="dpo", model_in="m0"))
    got = store.claim_examples(job.id, role="policy", kind="pair", run_ids=[run.id])
    assert len(got) == 4
    store.finish_job(job.id)
    assert store.add_examples(ep.id, _pairs(4)) == 0  # re-adding consumed examples changes nothing
    again = store.start_job(TrainingJobRecord(algorithm="dpo", model_in="m0"))
    assert store.claim_examples(again.id, role="policy", kind="pair") == []


def test_add_examples_refuses_heldout_and_unknown_episodes(store: Store) -> None:
    run = store.create_run(RunRecord(loop="best_of_n"))
    ep = make_episode(run.id, examples=0)
    store.write_episode(ep)
    with pytest.raises(HeldoutLeakError):
        store.add_examples(ep.id, _pairs(1, split="heldout"))
    with pytest.raises(NotFoundError, match="write_episode"):
        store.add_examples("no-such-episode", _pairs(1))
    assert store.count_examples(kind="pair") == 0
