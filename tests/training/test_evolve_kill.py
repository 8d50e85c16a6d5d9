"""Kill `strop evolve` with SIGKILL mid-cycle, run it again, and check the store is consistent."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from strop.memory.records import ExampleKind, JobStatus, ModelStatus, Role, TrainingJobRecord
from tests.training.evolve_helpers import tiny_recipe

REPO = Path(__file__).resolve().parents[2]


def _evolve(recipe: Path, db: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "strop", "evolve", "--recipe", str(recipe), "--db", db, "--no-progress"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"},
    )


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("kill_in", ["collect", "train"])
def test_sigkill_mid_cycle_then_rerun_finishes_with_a_consistent_store(kill_in: str, tmp_path: Path,
                                                                      tiny_model_path: Path) -> None:
    from strop.memory import Store
    from strop.training.evolve import Evolution
    from strop.training.recipe import load_recipe

    db = f"sqlite:///{tmp_path / 'strop.db'}"
    heldout, per_cycle = 8, 24
    # One episode in flight at a time, so collection spans many commits and the kill lands inside it.
    recipe = tiny_recipe(tmp_path, train_per_cycle=per_cycle, heldout=heldout,
                         extra="").read_text().replace("concurrency = 16", "concurrency = 1")
    path = tmp_path / "recipe.toml"
    path.write_text(recipe)

    store = Store(db)  # schema created here, before the child starts, so polling never races its creation
    proc = _evolve(path, db)
    deadline = time.monotonic() + 240
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        episodes = store.counts()["episodes"]
        # collect: base evaluation done, collection writing episodes. train: a job holds claimed examples.
        hit = episodes > heldout if kill_in == "collect" else bool(store.list_jobs(JobStatus.RUNNING))
        if hit:
            proc.send_signal(signal.SIGKILL)
            killed_at = episodes
            break
        time.sleep(0.05)
    out = proc.communicate()[0].decode()
    assert killed_at is not None, f"evolve ended before it could be killed:\n{out}"
    assert proc.returncode == -signal.SIGKILL
    if kill_in == "collect":
        assert store.counts()["episodes"] < heldout + per_cycle, "killed after collection: too late to test it"
    else:
        assert store.get_model(Evolution(load_recipe(path), store, progress=False).candidate_id(1)) is None

    proc = _evolve(path, db)
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, out
    assert "cycle 1" in out

    evo = Evolution(load_recipe(path), store, progress=False)
    # No duplicate episodes: one per task per run (base eval, collection, candidate eval).
    assert len(store.episode_ids(evo.collect_run_id(1))) == per_cycle
    assert store.counts()["episodes"] == heldout + per_cycle + heldout
    # Exactly one model version for the finished cycle, evaluated and decided.
    versions = store.list_models(lineage="tiny")
    assert sorted(v.status for v in versions) == sorted([ModelStatus.BASE, store.get_model(evo.candidate_id(1)).status])
    cand = store.get_model(evo.candidate_id(1))
    assert cand.status in (ModelStatus.PROMOTED, ModelStatus.REJECTED) and evo.metric in cand.metrics
    # Each example consumed once: the one successful job trained on all of them, nothing is left to claim.
    jobs = store.list_jobs()
    assert [j.status for j in jobs].count(JobStatus.SUCCEEDED) == 1
    assert all(j.status == JobStatus.FAILED for j in jobs if j.id != cand.job_id)
    assert cand.metrics["examples"] == store.count_examples(role=Role.POLICY, kind=ExampleKind.SFT)
    probe = store.start_job(TrainingJobRecord(algorithm="sft", role=Role.POLICY, model_in=cand.id))
    assert store.claim_examples(probe.id, role=Role.POLICY, kind=ExampleKind.SFT) == []
    assert store.get_run(evo.cycle_run_id(1)).status == "finished"
    store.close()
