"""Exactly-once consumption of training examples, on both backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from strop.memory import InvalidTransitionError, NotFoundError, Store
from strop.memory.records import ExampleKind, JobStatus, Role, RunRecord, TrainingJobRecord
from tests.memory.factories import make_episode

REPO = Path(__file__).resolve().parents[2]


def fill(store: Store, n_episodes: int, examples: int = 1, **kw: object) -> list[str]:
    run = store.create_run(RunRecord(loop="best_of_n"))
    eps = [make_episode(run.id, seed=i, examples=examples, **kw) for i in range(n_episodes)]
    store.write_episodes(eps)
    return [x.id for ep in eps for x in ep.examples]


def job(store: Store, algorithm: str = "sft") -> str:
    return store.start_job(TrainingJobRecord(algorithm=algorithm, model_in="m0")).id


def test_claim_finish_consumes_exactly_once(store: Store) -> None:
    ids = fill(store, 10)
    j1 = job(store)
    first = store.claim_examples(j1, role="policy", kind="sft", limit=4)
    assert [x.id for x in first] == ids[:4]  # oldest first
    j2 = job(store)
    # held by the running j1: another job gets the rest, never the same rows
    second = store.claim_examples(j2, role=Role.POLICY, kind=ExampleKind.SFT)
    assert {x.id for x in second} == set(ids[4:])
    store.finish_job(j1, model_out="m1", metrics={"loss": 0.5})
    store.finish_job(j2)
    j3 = job(store)
    assert store.claim_examples(j3, role="policy", kind="sft") == []
    assert store.count_examples("policy", "sft", unconsumed_by="policy:sft") == 0
    # another consumer (DPO-style) still sees every example once
    assert store.count_examples("policy", "sft", unconsumed_by="policy:dpo") == 10
    j4 = job(store, "dpo")
    assert len(store.claim_examples(j4, role="policy", kind="sft")) == 10
    done = store.get_job(j1)
    assert done.status == JobStatus.SUCCEEDED and done.model_out == "m1" and done.metrics == {"loss": 0.5}


def test_failed_job_releases_its_examples(store: Store) -> None:
    ids = fill(store, 6)
    j1 = job(store)
    assert len(store.claim_examples(j1, role="policy", kind="sft")) == 6
    failed = store.fail_job(j1, "CUDA out of memory")
    assert failed.status == JobStatus.FAILED and failed.error == "CUDA out of memory"
    j2 = job(store)
    assert sorted(x.id for x in store.claim_examples(j2, role="policy", kind="sft")) == sorted(ids)


def test_claims_filter_by_role_and_kind(store: Store) -> None:
    fill(store, 3, kind=ExampleKind.PAIR)
    fill(store, 2, role=Role.CRITIC)
    j = job(store)
    assert store.claim_examples(j, role="policy", kind="sft") == []
    assert len(store.claim_examples(j, role="critic", kind="sft")) == 2
    assert len(store.claim_examples(j, role="policy", kind="pair", consumer="policy:dpo")) == 3
    assert store.count_examples(kind="pair") == 3 and store.count_examples(role="critic") == 2


def test_job_state_machine(store: Store) -> None:
    fill(store, 1)
    j = job(store)
    assert store.start_job(TrainingJobRecord(id=j, algorithm="other", model_in="x")).algorithm == "sft"
    store.finish_job(j)
    with pytest.raises(InvalidTransitionError, match="succeeded"):
        store.fail_job(j, "late failure")
    with pytest.raises(InvalidTransitionError):
        store.claim_examples(j, role="policy", kind="sft")
    with pytest.raises(NotFoundError, match="start_job"):
        store.claim_examples("nope", role="policy", kind="sft")


def test_stale_jobs_are_released(store: Store) -> None:
    fill(store, 2)
    j = job(store)
    store.claim_examples(j, role="policy", kind="sft")
    assert store.release_stale_jobs(3600) == []
    assert store.release_stale_jobs(0) == [j]
    assert "abandoned" in store.get_job(j).error
    assert len(store.claim_examples(job(store), role="policy", kind="sft")) == 2


@pytest.mark.slow
def test_two_processes_never_take_the_same_example(store: Store, db_url: str, tmp_path: Path) -> None:
    ids = fill(store, 150, examples=2)
    outs = [tmp_path / f"w{i}.json" for i in range(2)]
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.memory._workers", "claim", db_url, str(out), "7", str(go)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for out in outs
    ]
    # Both start claiming together (imports under load can take longer than a whole run of the other).
    deadline = time.monotonic() + 60
    while not all(Path(f"{out}.ready").exists() for out in outs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a worker did not start"
        time.sleep(0.01)
    go.touch()
    for p in procs:
        assert p.wait(timeout=120) == 0
    got = [json.loads(o.read_text()) for o in outs]
    assert all(got), "both workers should have consumed something (they ran at the same time)"
    assert not set(got[0]) & set(got[1]), "an example was consumed twice"
    assert len(got[0]) + len(got[1]) == len(ids) and set(got[0]) | set(got[1]) == set(ids)
    assert store.count_examples("policy", "sft", unconsumed_by="policy:sft") == 0


def test_a_claim_that_loses_rows_to_a_job_committing_meanwhile_takes_the_next_ones(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL only (SQLite serialises writers): a job that commits while our SELECT runs leaves its rows
    unlocked, yet unclaimed to our statement's snapshot, so we pick them and our inserts conflict. The claim
    used to return nothing then (the other job's rows lost, none taken instead), and a racing trainer failed
    with 'nothing to train' (seen once in a fresh-clone run); it now selects again.

    The race is played out in order: the other job claims and commits, and our first selection returns what
    the stale snapshot would have picked, the other job's rows."""
    from strop.memory.examples import Examples

    store, other = Store(pg_url), Store(pg_url)
    try:
        ids = fill(store, 12)
        theirs = job(other)
        select_now = Examples._claimable
        stale = True

        def claimable(self: Examples, *args: object, **kw: object) -> list[str]:
            nonlocal stale
            if not stale:
                return select_now(self, *args, **kw)  # type: ignore[arg-type]
            stale = False
            return [x.id for x in other.claim_examples(theirs, role="policy", kind="sft", limit=8)]

        monkeypatch.setattr(Examples, "_claimable", claimable)
        mine = store.claim_examples(job(store), role="policy", kind="sft", limit=8)
        assert [x.id for x in mine] == ids[8:]  # the four the other job left, not nothing
    finally:
        store.close()
        other.close()
