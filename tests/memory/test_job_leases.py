"""Leases of training jobs, on SQLite and PostgreSQL: a job whose lease lapsed, or whose process died on this
machine, gives its claims back at the next claim by any process; a job that heartbeats keeps them."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from strop.memory import Store
from strop.memory.job_leases import job_lease_name
from strop.memory.leases import LeaseKeeper, LeaseLostError, new_holder
from strop.memory.records import JobStatus, ModelStatus, ModelVersionRecord, RunRecord, TrainingJobRecord
from tests.memory.factories import make_episode

OTHER_HOST = "otherhost:4242:0000ffff.abcdef01"  # never judged dead from here: only its TTL frees it


def fill(store: Store, n: int) -> list[str]:
    run = store.create_run(RunRecord(loop="best_of_n"))
    eps = [make_episode(run.id, seed=i, examples=1) for i in range(n)]
    store.write_episodes(eps)
    return [x.id for ep in eps for x in ep.examples]


def leased_job(store: Store, holder: str, ttl: float, job_id: str) -> str:
    """A job as train_candidate starts one: its lease first, then its row."""
    store.acquire_lease(job_lease_name(job_id), holder, ttl)
    return store.start_job(TrainingJobRecord(id=job_id, algorithm="sft", model_in="m0")).id


def plain_job(store: Store) -> str:
    return store.start_job(TrainingJobRecord(algorithm="sft", model_in="m0")).id


def claim(store: Store, job_id: str, holder: str | None = None) -> set[str]:
    return {x.id for x in store.claim_examples(job_id, role="policy", kind="sft", holder=holder)}


def child_holder() -> tuple[subprocess.Popen[bytes], str]:
    """A running process of this machine and its holder string: it holds a job until the test kills it."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host, _, rest = new_holder().partition(":")
    return child, f"{host}:{child.pid}:{rest.partition(':')[2]}"


def kill(child: subprocess.Popen[bytes]) -> None:
    child.kill()
    child.wait()


def test_a_lapsed_lease_returns_the_claims_at_the_next_claim_of_another_process(db_url: str) -> None:
    a, b = Store(db_url), Store(db_url)  # two stores: two processes' connections
    try:
        ids = fill(a, 3)
        j1 = leased_job(a, OTHER_HOST, ttl=0.5, job_id="job-1")
        assert claim(a, j1, OTHER_HOST) == set(ids)
        j2 = plain_job(b)
        assert claim(b, j2) == set()  # held: the lease has not lapsed yet
        time.sleep(0.7)
        assert claim(b, j2) == set(ids)  # lapsed: this claim settled job-1 first
        dead = b.get_job(j1)
        assert dead.status == JobStatus.FAILED and dead.error.startswith("abandoned: its lease lapsed")
        assert OTHER_HOST in dead.error and "3 claim(s) returned to the pool" in dead.error
        assert dead.metrics["abandoned"]["released_claims"] == 3
        assert a.get_lease(job_lease_name(j1)) is None
        # The old holder, back from its stall, may no longer finish, fail or claim for the job.
        with pytest.raises(LeaseLostError, match="released"):
            a.claim_examples(j1, role="policy", kind="sft", holder=OTHER_HOST)
        b.finish_job(j2)
        assert b.job_lease_report().released_claims == 3
        assert {j.status for j in b.list_jobs()} == {JobStatus.FAILED, JobStatus.SUCCEEDED}
    finally:
        a.close()
        b.close()


def test_a_dead_lease_holder_on_this_machine_is_released_at_once(store: Store) -> None:
    ids = fill(store, 2)
    child, holder = child_holder()
    j1 = leased_job(store, holder, ttl=3600, job_id="job-dead")
    assert claim(store, j1, holder) == set(ids)
    probe = plain_job(store)
    assert claim(store, probe) == set()  # alive: held
    kill(child)
    report = store.job_lease_report()
    states = {r.job_id: (r.lease, r.claims) for r in report.running}
    assert states == {"job-dead": ("dead", 2), probe: ("no lease", 0)}
    assert report.stuck_claims == 2 and report.released_jobs == 0
    assert claim(store, probe) == set(ids)  # no TTL to wait for
    dead = store.get_job(j1)
    assert dead.status == JobStatus.FAILED and "its process is gone" in dead.error
    assert dead.metrics["abandoned"]["reason"] == "dead"


def test_a_job_whose_lease_heartbeats_is_never_released(store: Store) -> None:
    ids = fill(store, 2)
    holder = new_holder()
    store.acquire_lease(job_lease_name("job-live"), holder, 0.6)
    lease = store.get_lease(job_lease_name("job-live"))
    keeper = LeaseKeeper(store, lease, 0.6)  # renews every 0.2 s
    try:
        job = store.start_job(TrainingJobRecord(id="job-live", algorithm="sft", model_in="m0")).id
        assert claim(store, job, holder) == set(ids)
        time.sleep(1.0)  # longer than the TTL: only the heartbeat keeps it
        assert store.release_abandoned_jobs() == []
        assert claim(store, plain_job(store)) == set()
        assert [r.lease for r in store.job_lease_report().running if r.job_id == job] == ["live"]
    finally:
        keeper.stop()
    store.finish_job(job, holder=holder)
    assert store.get_lease(job_lease_name(job)) is None  # the lease ends with the job
    assert store.get_job(job).status == JobStatus.SUCCEEDED


def test_a_rerun_that_takes_a_lapsed_lease_over_keeps_the_job_and_its_claims(store: Store) -> None:
    ids = fill(store, 2)
    j = leased_job(store, OTHER_HOST, ttl=0.3, job_id="job-rerun")
    claim(store, j, OTHER_HOST)
    time.sleep(0.4)
    rerun = new_holder()
    assert store.acquire_lease(job_lease_name(j), rerun, 30).previous.holder == OTHER_HOST
    assert store.release_abandoned_jobs() == []  # live again, under the rerun
    assert {x.id for x in store.job_claims(j)} == set(ids)
    for late in (
        lambda: store.finish_job(j, holder=OTHER_HOST),
        lambda: store.fail_job(j, "late", holder=OTHER_HOST),
    ):
        with pytest.raises(LeaseLostError, match=f"taken over by {rerun}"):
            late()
    store.finish_job(j, holder=rerun)
    assert store.count_examples("policy", "sft", unconsumed_by="policy:sft") == 0


def test_a_stale_job_whose_model_was_registered_finishes_with_it(store: Store) -> None:
    ids = fill(store, 2)
    child, holder = child_holder()
    j = leased_job(store, holder, ttl=3600, job_id="job-registered")
    claim(store, j, holder)
    store.register_model(
        ModelVersionRecord(
            id="cand",
            name="cand",
            lineage="x",
            path="/p",
            status=ModelStatus.CANDIDATE,
            job_id=j,
            metrics={"train_loss": 0.5},
        )
    )
    kill(child)  # between registering its model and finishing the job
    [got] = store.release_abandoned_jobs()
    assert got.model_out == "cand" and got.released_claims == 0
    done = store.get_job(j)
    assert (
        done.status == JobStatus.SUCCEEDED and done.model_out == "cand" and done.metrics["train_loss"] == 0.5
    )
    assert claim(store, plain_job(store)) == set()  # trained on once: consumed, not released
    assert store.count_examples("policy", "sft", unconsumed_by="policy:sft") == 0 and len(ids) == 2


def test_a_stale_job_without_a_lease_waits_for_the_grace_period(store: Store) -> None:
    fill(store, 2)
    j = plain_job(store)  # as a strop without job leases started it
    claim(store, j)
    assert store.release_abandoned_jobs() == []  # may be starting or running: a day's grace
    assert store.job_lease_report().stuck_claims == 0
    [got] = store.release_abandoned_jobs(leaseless_after_s=0)
    assert got.reason == "no lease" and got.released_claims == 2
    assert store.get_job(j).error.startswith("abandoned: no lease")


def test_a_lapsed_lease_of_a_job_never_recorded_is_cleaned_up(store: Store) -> None:
    store.acquire_lease(job_lease_name("never-started"), OTHER_HOST, 0.2)  # killed before start_job
    store.acquire_lease(job_lease_name("starting"), new_holder(), 30)  # about to record its job
    store.acquire_lease("evolve:r", OTHER_HOST, 0.2)  # not a job's: left alone
    time.sleep(0.3)
    assert store.release_abandoned_jobs() == []
    assert [x.name for x in store.list_leases()] == ["evolve:r", job_lease_name("starting")]
