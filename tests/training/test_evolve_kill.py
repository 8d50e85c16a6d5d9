"""Kill `strop evolve` with SIGKILL inside each stage of a two-stage recipe, run it again, and check the store
is consistent: every episode once, every example consumed once, one decided candidate per stage."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from strop.cli import app
from strop.memory.records import ExampleKind, JobStatus, ModelStatus, Role, TrainingJobRecord
from tests.training.evolve_helpers import two_stage_recipe

REPO = Path(__file__).resolve().parents[2]
PER_CYCLE = 16


def _evolve(recipe: Path, db: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "strop", "evolve", "--recipe", str(recipe), "--db", db, "--no-progress"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
# Each stage and each phase killed once, across both databases (a run is about a minute on 2 cores).
@pytest.mark.parametrize(
    ("stage", "kill_in", "backend"), [(0, "collect", "sqlite"), (1, "train", "postgresql")]
)
def test_sigkill_in_a_stage_then_rerun_finishes_with_a_consistent_store(
    stage: int,
    kill_in: str,
    backend: str,
    tmp_path: Path,
    tiny_model_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    from strop.memory import Store
    from strop.training.evolve import Evolution
    from strop.training.recipe import load_recipe

    db = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    # One episode in flight at a time, so collection spans many commits and the kill lands inside it.
    path = two_stage_recipe(tmp_path, train_per_cycle=PER_CYCLE, heldout=8, concurrency=1)
    store = Store(db)  # schema created here, before the child starts, so polling never races its creation
    evo = Evolution(load_recipe(path), store, progress=False)

    proc = _evolve(path, db)
    deadline = time.monotonic() + 400
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        if kill_in == "collect":
            hit = len(store.episode_ids(evo.collect_run_id(1, stage))) >= 2
        else:
            job = store.get_job(evo.job_id(1, stage, 0))
            hit = job is not None and job.status == JobStatus.RUNNING
        if hit:
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    out = proc.communicate()[0].decode()
    assert killed, f"evolve ended before it could be killed in stage {stage} {kill_in}:\n{out}"
    assert proc.returncode == -signal.SIGKILL
    if kill_in == "collect":
        assert len(store.episode_ids(evo.collect_run_id(1, stage))) < PER_CYCLE, "killed too late to test it"
    else:
        assert store.get_model(evo.candidate_id(1, stage)) is None

    # The rerun resumes from the store alone, so it runs in this process (the killed run above had to be a
    # process of its own): no second interpreter importing torch and transformers.
    res = CliRunner().invoke(
        app, ["evolve", "--recipe", str(path), "--db", db, "--no-progress"], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"

    jobs = store.list_jobs()
    for s in (0, 1):
        # Every collected task once, in each stage.
        episodes = store.list_episodes(evo.collect_run_id(1, s))
        assert len(episodes) == PER_CYCLE == len({e.task_id for e in episodes})
        assert store.get_run(evo.stage_run_id(1, s)).status == "finished"
        emitted = sum(e.outcome["examples"] for e in episodes)
        cand = store.get_model(evo.candidate_id(1, s))
        if cand is None:  # nothing correct to train on
            assert emitted == 0
            continue
        # One successful job per stage; any other was failed and released its claims.
        mine = [j for j in jobs if j.id in {evo.job_id(1, s, a) for a in range(3)}]
        assert [j.status for j in mine].count(JobStatus.SUCCEEDED) == 1
        assert all(j.status == JobStatus.FAILED for j in mine if j.id != cand.job_id)
        # The candidate trained on exactly its stage's examples, was evaluated and decided.
        assert cand.metrics["examples"] == emitted
        assert cand.status in (ModelStatus.PROMOTED, ModelStatus.REJECTED) and evo.metric(s) in cand.metrics
    assert not store.list_jobs(JobStatus.RUNNING)
    # Nothing the stages trained on can be claimed again by the policy's SFT consumer.
    probe = store.start_job(
        TrainingJobRecord(algorithm="sft", role=Role.POLICY, model_in=evo.bases["policy"].id)
    )
    assert store.claim_examples(probe.id, role=Role.POLICY, kind=ExampleKind.SFT) == []
    store.close()
