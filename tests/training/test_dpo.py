"""The `dpo` trainer kind: settings checked against TRL, and jobs on the real tiny model through the store.

Pairs come from best-of-N episodes of a scripted engine (the point here is the training path, not sampling);
training is a few LoRA steps on the tiny model.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from strop.agents.loops import best_of_n
from strop.agents.loops.base import episode_input
from strop.critics import VerifierCritic
from strop.memory import Store
from strop.memory.records import (
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
from strop.training.dpo import DPO_LOSS_TYPES, DPOSettings, balanced
from strop.training.jobs import NothingToTrainError, settle_orphan_job, train_candidate
from strop.training.settings import LoraSettings
from strop.training.trainers import get_trainer
from tests.agents.loops.fakes import ScriptedEngine, _sum_of

REPO = Path(__file__).resolve().parents[2]
TS = ArithmeticTaskSet()
FAST = DPOSettings(batch_size=4, learning_rate=1e-3, lora=LoraSettings(r=4, alpha=8), logging_steps=1)


def _answer(prompt: str, i: int) -> str:  # two right, two wrong: 4 pairs per task
    s = _sum_of(prompt)
    return [f"#### {s}", f"so #### {s}", f"#### {s + 1}", f"#### {s - 1}"][i]


async def fill_pairs(store: Store, tasks: int, run_id: str = "collect", first: int = 0) -> list[str]:
    """A best-of-N run with emit_pairs over `tasks` train tasks; returns the run's pair ids."""
    store.create_run(RunRecord(id=run_id, loop="best_of_n"))
    graph = best_of_n.build_graph(
        ScriptedEngine(answer=_answer), VerifierCritic(TS), best_of_n.BestOfNConfig(n=4, emit_pairs=True)
    ).compile()
    for task in TS.tasks(Split.TRAIN, first + tasks)[first:]:
        out = await graph.ainvoke(episode_input(task, run_id))
        store.write_episode(EpisodeRecord.model_validate(out["episode"]))
    return [x.id for x in store.list_examples(kind=ExampleKind.PAIR, run_id=run_id)]


def base_model(store: Store, path: Path) -> ModelVersionRecord:
    return store.register_model(
        ModelVersionRecord(name="tiny", lineage="tiny", path=str(path), status=ModelStatus.BASE)
    )


def consumed_by_job(store: Store) -> dict[str, set[str]]:
    from strop.memory.schema import Consumption

    with store.db.read() as conn:
        rows = conn.execute(select(Consumption.job_id, Consumption.example_id, Consumption.state)).all()
    out: dict[str, set[str]] = {}
    for job_id, example_id, state in rows:
        assert state == "consumed", (job_id, example_id, state)
        out.setdefault(job_id, set()).add(example_id)
    return out


# --- settings ---------------------------------------------------------------------------------------------------


def test_loss_types_are_the_ones_trl_implements() -> None:
    import trl.trainer.dpo_trainer as src

    implemented = set(re.findall(r'loss_type == "(\w+)"', Path(src.__file__).read_text()))
    assert implemented == set(DPO_LOSS_TYPES)


def test_settings_are_documented_and_checked() -> None:
    assert all(f.description for f in DPOSettings.model_fields.values())
    assert DPOSettings().losses == ["sigmoid"] and DPOSettings(loss_type=["sigmoid", "sft"]).losses == [
        "sigmoid",
        "sft",
    ]
    with pytest.raises(ValidationError, match="unknown DPO loss_type"):
        DPOSettings(loss_type="kto")
    with pytest.raises(ValidationError, match="label_smoothing > 0"):
        DPOSettings(loss_type="exo_pair")
    assert DPOSettings(loss_type="exo_pair", label_smoothing=1e-3).label_smoothing == 1e-3
    with pytest.raises(ValidationError, match=r"< 0\.5"):
        DPOSettings(loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValidationError):
        DPOSettings(betta=0.2)  # a typo is refused, not ignored
    kind = get_trainer("dpo")
    assert kind.example_kinds == (ExampleKind.PAIR,) and kind.settings is DPOSettings and not kind.online
    assert kind.parse_settings({"beta": 0.3}).beta == 0.3


def test_balance_by_subsamples_the_larger_groups_to_the_smallest() -> None:
    def pair(i: int, target: str | None) -> ExampleRecord:
        meta = {} if target is None else {"target": target}
        return ExampleRecord(
            id=f"p{i}",
            kind=ExampleKind.PAIR,
            role=Role.CRITIC,
            split="train",
            payload={
                "prompt": [{"role": "user", "content": f"step {i}?"}],
                "chosen": [{"role": "assistant", "content": "Yes"}],
                "rejected": [{"role": "assistant", "content": "No"}],
                "metadata": meta,
            },
        )

    pairs = [pair(i, "correct") for i in range(10)] + [pair(10 + i, "sneaky") for i in range(4)]
    kept = balanced(pairs, "target", seed=0)
    by = [p.payload["metadata"]["target"] for p in kept]
    assert by.count("correct") == by.count("sneaky") == 4
    assert [p.id for p in kept] == sorted((p.id for p in kept), key=lambda x: int(x[1:]))  # claim order kept
    assert kept == balanced(pairs, "target", seed=0) and {p.id for p in kept} != {
        p.id for p in balanced(pairs, "target", seed=1)
    }
    # One value only, or no such key: nothing to balance, nothing dropped.
    assert balanced(pairs[:10], "target") == pairs[:10]
    assert len(balanced([*pairs[:3], pair(99, None)], "target")) == 2  # a missing key is a group of its own
    # The trainer kind applies it when building the dataset.
    assert len(get_trainer("dpo").build_dataset(pairs, DPOSettings(balance_by="target"))) == 8
    assert len(get_trainer("dpo").build_dataset(pairs, DPOSettings())) == 14


# --- jobs on the tiny model ---------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_dpo_job_registers_a_candidate_and_consumes_each_pair_once(
    store: Store, tiny_model_path: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    pairs = await fill_pairs(store, tasks=3)
    assert len(pairs) == 12
    sft_before = store.count_examples(kind="sft", unconsumed_by="policy:sft")
    parent = base_model(store, tiny_model_path)

    res = train_candidate(store, parent, kind="dpo", settings=FAST, output_dir=tmp_path / "c1")
    cand = res.candidate
    assert cand.parent_id == parent.id and cand.lineage == "tiny" and cand.status == ModelStatus.CANDIDATE
    assert cand.path == str(tiny_model_path) and cand.adapter_path == str(tmp_path / "c1")
    assert (tmp_path / "c1" / "adapter_config.json").is_file()
    job = store.get_job(cand.job_id)
    assert job.status == JobStatus.SUCCEEDED and job.algorithm == "dpo" and job.model_out == cand.id
    assert res.examples == 12 and job.metrics["steps"] == 3 and job.metrics["settings"]["beta"] == 0.1
    # The balance report, with the model's own token counts.
    tok = AutoTokenizer.from_pretrained(str(tiny_model_path))
    chosen = [x.payload["chosen"][0]["content"] for x in store.list_examples(kind="pair")]
    balance = job.metrics["balance"]
    assert balance["pairs"] == 12 and balance["tasks"] == 3
    assert balance["pairs_per_task"] == {"min": 4, "median": 4.0, "max": 4}
    assert balance["chosen_tokens"] == pytest.approx(
        sum(len(tok(c, add_special_tokens=False)["input_ids"]) for c in chosen) / 12, abs=0.01
    )
    assert "length_bias" in balance
    # The reference is the parent: before the first update, policy and reference agree exactly.
    assert job.metrics["reward_margin_first"] == pytest.approx(0.0, abs=1e-6)
    assert {"reward_margin", "reward_accuracy", "reward_chosen", "reward_rejected"} <= set(job.metrics)

    # Every pair consumed once, by this job; SFT examples are another consumer's and stay untouched.
    assert consumed_by_job(store) == {job.id: set(pairs)}
    assert store.count_examples(kind="pair", unconsumed_by="policy:dpo") == 0
    assert store.count_examples(kind="sft", unconsumed_by="policy:sft") == sft_before
    with pytest.raises(NothingToTrainError):
        train_candidate(store, parent, kind="dpo", settings=FAST, output_dir=tmp_path / "again")
    assert store.list_jobs(JobStatus.FAILED)[0].algorithm == "dpo"

    # A second round from the candidate continues its adapter, against the candidate as the reference.
    new = await fill_pairs(store, tasks=2, run_id="collect-2", first=3)
    second = train_candidate(
        store, cand, kind="dpo", settings=FAST, output_dir=tmp_path / "c2", run_ids=["collect-2"]
    )
    assert second.candidate.parent_id == cand.id and second.candidate.path == str(tiny_model_path)
    assert second.examples == len(new) == 8
    assert second.job.metrics["reward_margin_first"] == pytest.approx(0.0, abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "c2").iterdir() if p.is_dir()) == [
        "trainer"
    ]  # no 'ref' adapter


# A DPO job in its own process, as on another host: `train_candidate` with fixed job and model ids. With a
# `go` file, it signals `ready` once imported and waits for `go`, so two of them claim at the same moment.
_JOB = """
import sys, time
from pathlib import Path
from strop.memory import Store
from strop.training.dpo import DPOSettings
from strop.training.jobs import train_candidate
from strop.training.settings import LoraSettings

from transformers import TrainerCallback
from strop.training.tracking import TrainHooks

class Logged(TrainerCallback):  # strop prints no metric dicts: print each logged step, the test waits for one
    def on_log(self, args, state, control, logs=None, **kwargs):
        print("logged", logs, flush=True)

hooks = TrainHooks(progress=False, callbacks=[Logged()])
db, parent_id, job_id, model_id, out, epochs, limit, go = sys.argv[1:]
settings = DPOSettings(batch_size=2, epochs=float(epochs), learning_rate=1e-3, lora=LoraSettings(r=4, alpha=8),
                       logging_steps=1)
store = Store(db)
import transformers, trl  # loaded before the race, not inside it
if go:
    Path(go + "." + job_id).touch()
    while not Path(go).exists():
        time.sleep(0.01)
train_candidate(store, store.get_model(parent_id), kind="dpo", settings=settings, output_dir=out, job_id=job_id,
                model_id=model_id, limit=int(limit) if limit else None, hooks=hooks)
"""


def _job(
    db_url: str,
    parent_id: str,
    job_id: str,
    model_id: str,
    out: Path,
    *,
    epochs: float = 1,
    limit: int | None = None,
    go: Path | None = None,
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-u",
            "-c",
            _JOB,
            db_url,
            parent_id,
            job_id,
            model_id,
            str(out),
            str(epochs),
            str(limit or ""),
            str(go or ""),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


# Two processes importing TRL at once cost about a minute: the race runs where row locks decide it
# (PostgreSQL, SKIP LOCKED) and the kill on SQLite; test_trainer_kinds.py races sft and pg on both.
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_two_dpo_jobs_racing_consume_disjoint_pairs(
    store: Store, db_url: str, tiny_model_path: Path, tmp_path: Path
) -> None:
    pairs = await fill_pairs(store, tasks=3)
    parent = base_model(store, tiny_model_path)
    go = tmp_path / "go"
    procs = [
        _job(db_url, parent.id, f"job-{i}", f"model-{i}", tmp_path / f"c{i}", limit=8, go=go)
        for i in range(2)
    ]
    deadline = time.monotonic() + 150
    while not all(Path(f"{go}.job-{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [
            p.communicate()[0] for p in procs
        ]
        time.sleep(0.05)
    go.touch()  # both are loaded: they claim at the same moment
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    by_job = consumed_by_job(store)
    assert set(by_job) == {"job-0", "job-1"}
    a, b = by_job.values()
    assert not a & b and a | b == set(pairs) and sorted(map(len, (a, b))) == [4, 8]
    assert sorted(m.id for m in store.list_models(lineage="tiny") if m.status == ModelStatus.CANDIDATE) == [
        "model-0",
        "model-1",
    ]


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_sigkill_mid_training_then_rerun_leaves_a_consistent_store(
    store: Store, db_url: str, tiny_model_path: Path, tmp_path: Path
) -> None:
    pairs = await fill_pairs(store, tasks=3)
    parent = base_model(store, tiny_model_path)
    job_id, model_id, out = "dpo-job-1", "dpo-model-1", tmp_path / "cand"
    proc = _job(db_url, parent.id, job_id, model_id, out, epochs=50)  # long enough to be killed mid-way
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:  # the job prints each logged step: the first one means training is under way
        seen.append(line)
        if "'loss'" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)

    # Killed mid-training: the job still holds its claims, no model was registered.
    assert store.get_job(job_id).status == JobStatus.RUNNING
    assert store.get_model(model_id) is None
    assert store.count_examples(kind="pair", unconsumed_by="policy:dpo") == 0  # held by the dead job

    # The rerun settles the dead job (its claims go back to the pool) and trains again into the same id.
    assert settle_orphan_job(store, job_id, model_id) is False
    dead = store.get_job(job_id)
    assert dead.status == JobStatus.FAILED and "interrupted" in dead.error
    assert store.count_examples(kind="pair", unconsumed_by="policy:dpo") == len(pairs)
    res = train_candidate(
        store, parent, kind="dpo", settings=FAST, output_dir=out, job_id="dpo-job-2", model_id=model_id
    )
    assert res.candidate.id == model_id and res.candidate.job_id == "dpo-job-2" and res.examples == len(pairs)
    assert sorted(m.status for m in store.list_models(lineage="tiny")) == [
        ModelStatus.BASE,
        ModelStatus.CANDIDATE,
    ]
    assert consumed_by_job(store) == {"dpo-job-2": set(pairs)}
    probe = store.start_job(TrainingJobRecord(algorithm="dpo", role=Role.POLICY, model_in=model_id))
    assert store.claim_examples(probe.id, role=Role.POLICY, kind=ExampleKind.PAIR) == []
    assert (out / "adapter_config.json").is_file()


@pytest.mark.slow
async def test_cli_train_dpo_derives_pairs_prints_the_balance_and_trains(
    store: Store, db_url: str, tiny_model_path: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from strop.cli.commands.train import train_app

    # A best-of-N run recorded without emit_pairs: `--derive-from` builds its pairs first.
    store.create_run(RunRecord(id="old", loop="best_of_n"))
    graph = best_of_n.build_graph(
        ScriptedEngine(answer=_answer), VerifierCritic(TS), best_of_n.BestOfNConfig(n=4)
    ).compile()
    for task in TS.tasks(Split.TRAIN, 2):
        store.write_episode(
            EpisodeRecord.model_validate((await graph.ainvoke(episode_input(task, "old")))["episode"])
        )
    assert store.count_examples(kind="pair") == 0
    base_model(store, tiny_model_path)
    args = [
        "dpo",
        "--model",
        "tiny",
        "--db",
        db_url,
        "--lora-r",
        "4",
        "--lr",
        "1e-3",
        "--batch-size",
        "4",
        "--beta",
        "0.2",
        "--derive-from",
        "old",
        "--name",
        "tiny-dpo-1",
        "--output-dir",
        str(tmp_path / "c"),
    ]
    result = CliRunner().invoke(train_app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "derived 8 pairs from 2 of 2 episodes (8 new)" in result.output
    assert (
        "pairs: 8 pairs over 2 tasks (per task min 4, median 4, max 4); mean tokens chosen" in result.output
    )
    assert "candidate tiny-dpo-1" in result.output and "reward margin" in result.output
    cand = store.get_model("tiny-dpo-1")
    assert store.get_job(cand.job_id).metrics["settings"]["beta"] == 0.2

    again = CliRunner().invoke(train_app, [*args[:-4], "--name", "tiny-dpo-2"], terminal_width=200)
    assert again.exit_code == 1 and "derived 8 pairs from 2 of 2 episodes (0 new)" in again.output
    assert "nothing to train" in again.output and "emit_pairs=true" in again.output
    bad = CliRunner().invoke(train_app, ["dpo", "--model", "tiny", "--db", db_url, "--loss-type", "kto"])
    assert bad.exit_code == 1 and "unknown DPO loss_type" in bad.output
