"""Training jobs hold a lease while they train: a killed job's claims return to the pool, a rerun of the same
`strop train` continues the same job, and `strop db stats` shows what is stuck and what was released."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from strop.cli import app
from strop.memory import Store
from strop.memory.job_leases import job_lease_name
from strop.memory.leases import new_holder
from strop.memory.records import (
    EpisodeRecord,
    ExampleKind,
    ExampleRecord,
    JobStatus,
    ModelStatus,
    ModelVersionRecord,
    RunRecord,
    TrainingJobRecord,
)
from strop.sandbox.tasks import ArithmeticTaskSet, Split
from strop.training import trainers
from strop.training.jobs import JobRunningError, job_id_for, train_candidate

REPO = Path(__file__).resolve().parents[2]
N = 8


def _fill(store: Store, n: int = N) -> list[str]:
    """n SFT examples of the tiny model's arithmetic tasks, in one episode."""
    tasks = ArithmeticTaskSet().tasks(Split.TRAIN, n)
    examples = [
        ExampleRecord(
            kind=ExampleKind.SFT,
            task_id=t.id,
            payload={
                "prompt": [{"role": "user", "content": t.prompt}],
                "completion": [{"role": "assistant", "content": t.reference_solution}],
            },
        )
        for t in tasks
    ]
    run = store.create_run(RunRecord(loop="scripted"))
    store.write_episode(EpisodeRecord(run_id=run.id, task_id="all", loop="scripted", examples=examples))
    return [x.id for x in examples]


class _Toy(BaseModel):
    pause: float = 0.0


@pytest.fixture
def toy() -> Iterator[dict[str, Any]]:
    """A registered trainer kind on SFT examples that records what it was handed, and can take its time."""
    seen: dict[str, Any] = {}

    def train(req: trainers.TrainRequest) -> trainers.TrainOutcome:
        seen["job"], seen["examples"] = req.job_id, [x.id for x in req.examples]
        seen["lease"] = req.store.get_lease(job_lease_name(req.job_id))
        if "during" in seen:
            seen["during"](req)
        time.sleep(req.settings.pause)
        return trainers.TrainOutcome(
            path="/toy", train_loss=0.1, steps=1, examples=len(req.examples), seconds=0
        )

    trainers.register_trainer(
        trainers.TrainerKind(name="toy-lease", settings=_Toy, example_kinds=(ExampleKind.SFT,), train=train)
    )
    try:
        yield seen
    finally:
        trainers.TRAINERS.unregister("toy-lease")


def _parent(store: Store) -> ModelVersionRecord:
    return store.register_model(ModelVersionRecord(name="p", lineage="p", path="/p", status=ModelStatus.BASE))


def test_a_training_job_holds_a_lease_that_keeps_its_claims_while_it_runs(
    db_url: str, store: Store, toy: dict[str, Any], tmp_path: Path
) -> None:
    ids = _fill(store)
    other = Store(db_url)  # another process's claim while the job trains, past the lease's TTL

    def during(req: trainers.TrainRequest) -> None:
        time.sleep(0.8)
        probe = other.start_job(TrainingJobRecord(algorithm="toy-lease", model_in="p")).id
        toy["probe"] = other.claim_examples(probe, role="policy", kind="sft")
        other.fail_job(probe, "probe")

    toy["during"] = during
    try:
        res = train_candidate(
            store, _parent(store), kind="toy-lease", output_dir=tmp_path / "c", lease_ttl=0.5, job_id="job-a"
        )
    finally:
        other.close()
    assert toy["lease"].holder.split(":")[1] == str(os.getpid())
    assert toy["probe"] == []  # the heartbeat kept the lease live: nothing was released
    assert res.job.status == JobStatus.SUCCEEDED and set(toy["examples"]) == set(ids)
    assert store.get_lease(job_lease_name("job-a")) is None  # the lease ends with the job
    assert store.count_examples("policy", "sft", unconsumed_by="policy:toy-lease") == 0


def test_a_rerun_takes_over_a_stale_job_and_trains_on_its_claims(
    store: Store, toy: dict[str, Any], tmp_path: Path
) -> None:
    ids = _fill(store)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host, _, rest = new_holder().partition(":")
    holder = f"{host}:{child.pid}:{rest.partition(':')[2]}"
    # What a killed `train_candidate` leaves: its lease, its running job, half the examples claimed.
    store.acquire_lease(job_lease_name("job-k"), holder, 3600)
    store.start_job(TrainingJobRecord(id="job-k", algorithm="toy-lease", model_in="p"))
    held = store.claim_examples("job-k", role="policy", kind="sft", limit=N // 2, holder=holder)
    parent = _parent(store)
    try:
        with pytest.raises(JobRunningError, match=f"job-k is running in {holder}"):
            train_candidate(store, parent, kind="toy-lease", output_dir=tmp_path / "c", job_id="job-k")
    finally:
        child.kill()
        child.wait()
    res = train_candidate(store, parent, kind="toy-lease", output_dir=tmp_path / "c", job_id="job-k")
    assert toy["job"] == "job-k" and {x.id for x in held} <= set(toy["examples"])
    assert toy["examples"] == sorted(ids)  # its own claims and the rest of the pool, in id order
    assert res.job.id == "job-k" and res.job.status == JobStatus.SUCCEEDED
    assert [j.id for j in store.list_jobs()] == ["job-k"] and store.job_claims("job-k") == []
    assert store.count_examples("policy", "sft", unconsumed_by="policy:toy-lease") == 0


def test_a_hand_run_job_id_is_stable_until_the_job_ends_lease(store: Store) -> None:
    spec = {"kind": "sft", "parent": "p", "settings": {"epochs": 1}}
    first = job_id_for(store, spec)
    assert job_id_for(store, spec) == first and job_id_for(store, {**spec, "parent": "q"}) != first
    store.start_job(TrainingJobRecord(id=first, algorithm="sft", model_in="p"))
    assert job_id_for(store, spec) == first  # running (killed or not): the rerun names the same job
    store.fail_job(first, "boom")
    second = job_id_for(store, spec)
    assert second != first  # ended: a new attempt
    store.start_job(TrainingJobRecord(id=second, algorithm="sft", model_in="p"))
    store.finish_job(second)
    assert job_id_for(store, spec) not in (first, second)


def test_db_stats_shows_stuck_and_released_lease_claims(store: Store, db_url: str) -> None:
    _fill(store, 4)
    lapsed = "otherhost:1:0000ffff.aa"
    store.acquire_lease(job_lease_name("job-gone"), lapsed, 0.2)
    store.start_job(TrainingJobRecord(id="job-gone", algorithm="sft", model_in="p"))
    store.claim_examples("job-gone", role="policy", kind="sft", limit=3, holder=lapsed)
    live = new_holder()
    store.acquire_lease(job_lease_name("job-live"), live, 3600)
    store.start_job(TrainingJobRecord(id="job-live", algorithm="sft", model_in="p"))
    store.claim_examples("job-live", role="policy", kind="sft", holder=live)
    time.sleep(0.3)

    def stats() -> str:
        res = CliRunner().invoke(app, ["db", "stats", "--db", db_url], env={"COLUMNS": "250"})
        assert res.exit_code == 0, res.output
        return res.output

    out = stats()
    assert "Running training jobs" in out and "job-gone" in out and "lapsed" in out and "live" in out
    assert "training claims: 3 stuck in abandoned jobs" in out and "0 released from 0 abandoned" in out
    store.release_abandoned_jobs()  # what the next claim does
    out = stats()
    assert "0 stuck" in out and "3 released from 1 abandoned jobs" in out and "job-gone" not in out
    store.fail_job("job-live", "done", holder=live)


# --- a real `strop train sft` on the tiny model, SIGKILLed mid-training, then run again -------------------------

STROP = str(Path(sys.executable).with_name("strop"))
# 60 epochs of 2 steps: a few seconds of training to be killed in. TensorBoard's event file appears when TRL
# starts training (strop prints nothing per step without a terminal): the sign that training is under way.
_ARGS = [
    "--epochs",
    "60",
    "--batch-size",
    "4",
    "--lora-r",
    "4",
    "--max-length",
    "64",
    "--report-to",
    "tensorboard",
]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_sigkilled_strop_train_rerun_continues_its_lease_job(
    db_url: str, store: Store, tiny_model_path: Path, tmp_path: Path
) -> None:
    ids = _fill(store)
    out = tmp_path / "c"
    cmd = [
        STROP,
        "train",
        "sft",
        "-m",
        "tiny",
        "--no-progress",
        "--db",
        db_url,
        "--output-dir",
        str(out),
        *_ARGS,
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 200
    try:
        while not any(out.rglob("events.out.tfevents.*")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    [job] = store.list_jobs()  # killed mid-training: running, every example claimed, no candidate
    assert job.status == JobStatus.RUNNING and {x.id for x in store.job_claims(job.id)} == set(ids)
    assert not (out / "adapter_config.json").exists()

    # The same command again (in this process: one start-up less): it takes the dead job's lease over and
    # continues that job on its claims.
    rerun = CliRunner().invoke(app, cmd[1:])
    assert rerun.exit_code == 0, rerun.output
    assert f"continuing training job {job.id}" in rerun.output and f"the {N} examples" in rerun.output
    [done] = store.list_jobs()
    assert done.id == job.id and done.status == JobStatus.SUCCEEDED and done.metrics["examples"] == N
    assert store.count_examples("policy", "sft", unconsumed_by="policy:sft") == 0  # each consumed once
    assert store.job_claims(job.id) == [] and store.get_lease(job_lease_name(job.id)) is None
    [cand] = [m for m in store.list_models() if m.status == ModelStatus.CANDIDATE]
    assert cand.job_id == job.id and (out / "adapter_config.json").is_file()
