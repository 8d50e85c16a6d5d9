"""Every trainer kind through the shared job path (`training/jobs.py::train_candidate`) when jobs race or die.

- Two jobs of one kind, each with its own Store (as on two hosts), claim from the same pool at the same moment:
  the examples they consume are disjoint and together are every example, once.
- A job in its own process SIGKILLed mid-training (RUNNING, holding its claims), then the rerun `strop evolve`
  does: the dead job is settled (failed, claims released) and a new job trains on the same examples, once.
- grpo makes its own rollouts (no claims): `strop evolve` killed inside its GRPO stage, then run again, finishes
  with one candidate, and each job's rollout episodes are stored once per generation and task.

dpo's race and kill are in test_dpo.py; each kind's training itself is in its own test file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from strop.cli import app
from strop.memory import Store
from strop.memory.records import (
    AdvantagePayload,
    EpisodeRecord,
    ExampleKind,
    ExampleRecord,
    JobStatus,
    ModelStatus,
    ModelVersionRecord,
    Role,
    RunRecord,
    TrainingJobRecord,
)
from strop.sandbox.tasks import ArithmeticTaskSet, Split
from strop.training.jobs import settle_orphan_job, train_candidate

REPO = Path(__file__).resolve().parents[2]
N = 12  # examples in the pool

# A few LoRA steps on the tiny model; `epochs` is raised for the job that is killed mid-way.
SETTINGS: dict[str, dict[str, Any]] = {
    "sft": {
        "epochs": 1,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "max_length": 64,
        "lora": {"r": 4, "alpha": 8},
        "logging_steps": 1,
    },
    "pg": {
        "epochs": 1,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "lora": {"r": 4, "alpha": 8},
        "logging_steps": 1,
    },
}
KIND = {"sft": ExampleKind.SFT, "pg": ExampleKind.ADVANTAGE}


def _examples(kind: str, model_path: Path) -> list[ExampleRecord]:
    tasks = ArithmeticTaskSet().tasks(Split.TRAIN, N)
    if kind == "sft":
        return [
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
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_path))
    out = []
    for i, t in enumerate(tasks):
        prompt = tok.apply_chat_template([{"role": "user", "content": t.prompt}], add_generation_prompt=True)
        completion = tok(t.reference_solution, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        # Sampling log-probs made up (the ratio is clipped, it trains all the same): no model load needed here.
        out.append(
            AdvantagePayload(
                prompt_ids=list(prompt["input_ids"]),
                completion_ids=completion,
                logprobs=[-1.0] * len(completion),
                advantage=1.0 if i % 2 else -1.0,
            ).example()
        )
    return [x.model_copy(update={"task_id": t.id}) for x, t in zip(out, tasks, strict=True)]


def _fill(store: Store, kind: str, model_path: Path) -> list[str]:
    """One episode holding N examples of what `kind` consumes; returns their ids."""
    run = store.create_run(RunRecord(id=f"collect-{kind}", loop="scripted"))
    examples = _examples(kind, model_path)
    assert store.write_episode(
        EpisodeRecord(run_id=run.id, task_id="all", loop="scripted", examples=examples)
    )
    return [x.id for x in examples]


def _parent(store: Store, path: Path) -> ModelVersionRecord:
    return store.register_model(
        ModelVersionRecord(name="tiny", lineage="tiny", path=str(path), status=ModelStatus.BASE)
    )


def _claims(store: Store) -> dict[str, dict[str, str]]:
    """job id -> {example id: state} from the `consumption` table."""
    from strop.memory.schema import Consumption

    with store.db.read() as conn:
        rows = conn.execute(select(Consumption.job_id, Consumption.example_id, Consumption.state)).all()
    out: dict[str, dict[str, str]] = {}
    for job_id, example_id, state in rows:
        out.setdefault(job_id, {})[example_id] = state
    return out


def _consumed(store: Store) -> dict[str, set[str]]:
    """job id -> the examples it consumed; every row must be consumed (none left claimed)."""
    claims = _claims(store)
    assert all(s == "consumed" for rows in claims.values() for s in rows.values()), claims
    return {job: set(rows) for job, rows in claims.items()}


# One job in its own process, as on another host: `train_candidate` with fixed job and model ids.
_JOB = """
import json, sys
from strop.memory import Store
from strop.training.jobs import train_candidate

from transformers import TrainerCallback
from strop.training.tracking import TrainHooks

class Logged(TrainerCallback):  # strop prints no metric dicts: print each logged step, the test waits for one
    def on_log(self, args, state, control, logs=None, **kwargs):
        print("logged", logs, flush=True)

hooks = TrainHooks(progress=False, callbacks=[Logged()])
db, parent_id, kind, settings, job_id, model_id, out = sys.argv[1:]
store = Store(db)
train_candidate(store, store.get_model(parent_id), kind=kind, settings=json.loads(settings), output_dir=out,
                job_id=job_id, model_id=model_id, hooks=hooks)
"""


def _job(
    db_url: str, parent_id: str, kind: str, job_id: str, model_id: str, out: Path, *, settings: dict[str, Any]
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-u",
            "-c",
            _JOB,
            db_url,
            parent_id,
            kind,
            json.dumps(settings),
            job_id,
            model_id,
            str(out),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture
def children() -> Any:
    """The subprocesses a test starts; any still running when it ends (a failed assertion) is killed."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=60)


class _Output:
    """Reads a child's output on a thread, so the test can poll the store while the child runs."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line)

    def text(self) -> str:
        self._thread.join(timeout=30)
        return "".join(self.lines)


# --- the registry ------------------------------------------------------------------------------------------------


def test_first_look_ups_on_two_threads_both_find_the_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry imports its kinds on the first look-up; a second thread looking up meanwhile waits for the
    imports (it used to see the registry marked loaded while still empty: UnknownTrainerError)."""
    import strop.registry
    from strop.registry import Registry
    from strop.training import trainers

    sft = trainers.get_trainer("sft")

    class SlowImports:  # stands in for `importlib` in the registry: importing a kind's module takes a while
        @staticmethod
        def import_module(name: str) -> None:
            time.sleep(0.2)
            trainers.register_trainer(sft, replace=True)

    empty = Registry(
        "trainer kind",
        trainers.TrainerKind,
        builtin_modules=("strop.training.sft",),
        error=trainers.UnknownTrainerError,
    )
    monkeypatch.setattr(trainers, "TRAINERS", empty)
    monkeypatch.setattr(strop.registry, "importlib", SlowImports)
    found: list[Any] = []

    def look_up() -> None:
        try:
            found.append(trainers.get_trainer("sft"))
        except BaseException as e:  # reported by the test thread
            found.append(e)

    threads = [threading.Thread(target=look_up, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.05)  # the second look-up lands while the first is importing
    for t in threads:
        t.join(timeout=10)
    assert found == [sft, sft]


# --- two jobs racing ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["sft", "pg"])
def test_two_jobs_racing_consume_disjoint_examples(
    kind: str,
    store: Store,
    db_url: str,
    tiny_model_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two jobs on two threads, each with its own Store (its own connections, as on two hosts), released together
    so their claims meet in the database. The claims race; the training after them takes turns, because
    transformers cannot load two models at once in one process (its meta-device loading is process-global)."""
    import dataclasses

    import transformers  # noqa: F401  (loaded before the race, not inside it)
    import trl  # noqa: F401

    from strop.training import trainers

    real = trainers.get_trainer(kind)
    one_at_a_time = threading.Lock()

    def train(req: Any) -> Any:
        with one_at_a_time:
            return real.train(req)

    monkeypatch.setattr(trainers, "TRAINERS", trainers.TRAINERS.copy())
    trainers.register_trainer(dataclasses.replace(real, train=train), replace=True)
    examples = _fill(store, kind, tiny_model_path)
    parent = _parent(store, tiny_model_path)
    start = threading.Barrier(2, timeout=60)
    errors: list[BaseException] = []

    def job(i: int) -> None:
        mine = Store(db_url)
        try:
            start.wait()
            train_candidate(
                mine,
                mine.get_model(parent.id),
                kind=kind,
                settings=SETTINGS[kind],
                output_dir=tmp_path / f"c{i}",
                job_id=f"job-{i}",
                model_id=f"model-{i}",
                limit=8,
            )
        except BaseException as e:  # reported by the test thread
            errors.append(e)
        finally:
            mine.close()

    threads = [threading.Thread(target=job, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=200)
    assert not any(t.is_alive() for t in threads) and not errors, errors

    # Disjoint, and together every example exactly once; 8 went to whoever claimed first, the other 4 to the other.
    by_job = _consumed(store)
    assert set(by_job) == {"job-0", "job-1"}
    a, b = by_job.values()
    assert not a & b and a | b == set(examples) and sorted(map(len, (a, b))) == [4, 8]
    for job_id, mine in by_job.items():
        job = store.get_job(job_id)
        assert (
            job.status == JobStatus.SUCCEEDED
            and job.algorithm == kind
            and job.model_out == job_id.replace("job", "model")
        )
        assert job.metrics["examples"] == len(mine)
    assert sorted(m.id for m in store.list_models(lineage="tiny") if m.status == ModelStatus.CANDIDATE) == [
        "model-0",
        "model-1",
    ]
    assert store.count_examples(kind=KIND[kind], unconsumed_by=f"policy:{kind}") == 0


# --- SIGKILL mid-training, then the rerun -------------------------------------------------------------------------


# One backend per kind keeps the subprocess tests short; the shared path (train_candidate, settle_orphan_job,
# fail_job) is the same for every kind, and sft's kill inside `strop evolve` runs on both (test_evolve_kill.py).
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("kind", "db_url"), [("sft", "sqlite"), ("pg", "postgresql")], indirect=["db_url"])
def test_sigkill_mid_training_then_rerun_consumes_each_example_once(
    kind: str, store: Store, db_url: str, tiny_model_path: Path, tmp_path: Path, children: list[Any]
) -> None:
    examples = _fill(store, kind, tiny_model_path)
    parent = _parent(store, tiny_model_path)
    consumer = f"policy:{kind}"
    job_id, model_id, out = f"{kind}-job-1", f"{kind}-model-1", tmp_path / "cand"
    long = {**SETTINGS[kind], "epochs": 200}  # long enough to be killed mid-way
    proc = _job(db_url, parent.id, kind, job_id, model_id, out, settings=long)
    children.append(proc)
    output = _Output(proc)
    deadline = time.monotonic() + 200
    while True:  # RUNNING in the store, and TRL has logged a step: training is under way
        assert proc.poll() is None and time.monotonic() < deadline, output.text()
        job = store.get_job(job_id)
        if (
            job is not None
            and job.status == JobStatus.RUNNING
            and any("'loss'" in x for x in list(output.lines))
        ):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, output.text()

    # Killed mid-training: the job still holds every example (claimed, none consumed), no model registered.
    assert store.get_job(job_id).status == JobStatus.RUNNING and store.get_model(model_id) is None
    assert _claims(store) == {job_id: dict.fromkeys(examples, "claimed")}
    assert store.count_examples(kind=KIND[kind], unconsumed_by=consumer) == 0

    # The rerun settles the dead job (its claims go back to the pool), then trains again with a new job id.
    assert settle_orphan_job(store, job_id, model_id) is False
    dead = store.get_job(job_id)
    assert dead.status == JobStatus.FAILED and "interrupted" in (dead.error or "") and dead.model_out is None
    assert _claims(store) == {} and store.count_examples(kind=KIND[kind], unconsumed_by=consumer) == N
    assert settle_orphan_job(store, job_id, model_id) is False  # settling twice changes nothing
    res = train_candidate(
        store,
        parent,
        kind=kind,
        settings=SETTINGS[kind],
        output_dir=out,
        job_id=f"{kind}-job-2",
        model_id=model_id,
    )
    assert res.candidate.id == model_id and res.candidate.job_id == f"{kind}-job-2" and res.examples == N
    assert res.job.status == JobStatus.SUCCEEDED and res.job.metrics["examples"] == N
    assert (out / "adapter_config.json").is_file()

    # Each example consumed once, by the rerun; nothing left to claim, nothing running, one candidate.
    assert _consumed(store) == {f"{kind}-job-2": set(examples)}
    assert {j.id: j.status for j in store.list_jobs()} == {
        job_id: JobStatus.FAILED,
        f"{kind}-job-2": JobStatus.SUCCEEDED,
    }
    assert sorted(m.status for m in store.list_models(lineage="tiny")) == [
        ModelStatus.BASE,
        ModelStatus.CANDIDATE,
    ]
    probe = store.start_job(TrainingJobRecord(algorithm=kind, role=Role.POLICY, model_in=model_id))
    assert store.claim_examples(probe.id, role=Role.POLICY, kind=KIND[kind]) == []


# --- grpo: SIGKILL inside a GRPO stage of `strop evolve`, then the rerun ---------------------------------------------

GRPO_TASKS, GRPO_STEPS, GROUP = 4, 3, 4


def _grpo_recipe(tmp_path: Path) -> Path:
    """One GRPO stage on the tiny model: 4 one-digit tasks x 4 answers a step, 3 steps, 4 held-out tasks."""
    text = f'''name = "tiny-grpo"
cycles = 1
output_dir = "{tmp_path / "run"}"

[roles]
policy = "tiny"

[engine]
max_batch_size = 64

[[stages]]
name = "grpo"
loop = "best_of_n"
config = {{ n = {GROUP}, temperature = 1.0, max_tokens = 16, seed = 0 }}
tasks = {{ name = "arithmetic", options = {{ digits = 1 }}, train_per_cycle = {GRPO_TASKS}, heldout = 4 }}

[stages.train]
kind = "grpo"
role = "policy"
settings = {{ num_generations = {GROUP}, temperature = 1.0, max_completion_length = 16, batch_size = 8, grad_accum = 2, max_steps = {GRPO_STEPS}, learning_rate = 1e-3, lora = {{ r = 4, alpha = 8 }} }}

[stages.eval]
margin = 0.0
'''
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def _evolve(recipe: Path, db: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "strop", "evolve", "--recipe", str(recipe), "--db", db, "--no-progress"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the default store of `strop evolve`
def test_sigkill_in_a_grpo_stage_then_rerun_finishes_with_one_candidate(
    store: Store, db_url: str, tiny_model_path: Path, tmp_path: Path, children: list[Any]
) -> None:
    from strop.training.evolve import Evolution
    from strop.training.recipe import load_recipe

    path = _grpo_recipe(tmp_path)
    evo = Evolution(
        load_recipe(path), store, progress=False
    )  # the schema and the base exist before the child runs
    run_id, killed_job, next_job = evo.collect_run_id(1, 0), evo.job_id(1, 0, 0), evo.job_id(1, 0, 1)

    proc = _evolve(path, db_url)
    children.append(proc)
    output = _Output(proc)
    deadline = time.monotonic() + 300
    while True:  # the GRPO job is running and its first generation is stored: training is under way
        assert proc.poll() is None and time.monotonic() < deadline, output.text()
        job = store.get_job(killed_job)
        if (
            job is not None
            and job.status == JobStatus.RUNNING
            and len(store.episode_ids(run_id)) >= GRPO_TASKS
        ):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, output.text()
    assert store.get_job(killed_job).status == JobStatus.RUNNING
    assert store.get_model(evo.candidate_id(1, 0)) is None, "killed too late to test it"

    # The rerun resumes from the store alone, so it runs in this process (the killed run above had to be a
    # process of its own): no second interpreter importing torch and transformers.
    res = CliRunner().invoke(
        app, ["evolve", "--recipe", str(path), "--db", db_url, "--no-progress"], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"

    # One candidate, trained by the rerun's job; the killed job failed; nothing left running.
    cand = store.get_model(evo.candidate_id(1, 0))
    assert cand is not None and cand.job_id == next_job
    assert cand.status in (ModelStatus.PROMOTED, ModelStatus.REJECTED) and evo.metric(0) in cand.metrics
    assert [m.id for m in store.list_models(lineage="tiny") if m.status != ModelStatus.BASE] == [cand.id]
    dead = store.get_job(killed_job)
    assert dead.status == JobStatus.FAILED and "interrupted" in (dead.error or "")
    assert store.get_job(next_job).status == JobStatus.SUCCEEDED and not store.list_jobs(JobStatus.RUNNING)
    assert (
        store.get_run(run_id).status == "finished"
        and store.get_run(evo.stage_run_id(1, 0)).status == "finished"
    )

    # Rollouts: each job's episodes once per (generation, task), every generation a whole batch of tasks. The
    # rerun redid the steps the killed job had sampled under new ids; the killed job's stay, labelled with it.
    episodes = store.list_episodes(run_id)
    assert len({e.id for e in episodes}) == len(episodes)
    by_job: dict[str, Counter[tuple[int, str]]] = {}
    for e in episodes:
        grpo = e.outcome["grpo"]
        by_job.setdefault(grpo["job_id"], Counter())[(grpo["generation"], e.task_id)] += 1
    assert set(by_job) <= {killed_job, next_job}
    tasks = {t.id for t in evo._train_tasks(1, 0)}
    for job, seen in by_job.items():
        assert set(seen.values()) == {1}, (job, seen)  # no (generation, task) twice
        gens = {g for g, _ in seen}
        assert gens == set(range(len(gens))) and all({t for g2, t in seen if g2 == g} == tasks for g in gens)
    assert len(by_job[next_job]) == GRPO_STEPS * GRPO_TASKS == cand.metrics["episodes_written"]
    assert (
        cand.metrics["grpo_steps"] == GRPO_STEPS
        and cand.metrics["examples"] == GRPO_STEPS * GRPO_TASKS * GROUP
    )
    assert 1 <= len(by_job.get(killed_job, ())) // GRPO_TASKS <= GRPO_STEPS
