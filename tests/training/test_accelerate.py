"""Training under `accelerate launch` (training/launch.py): the same bookkeeping as the one-process path.

- SFT on the tiny model in two accelerate processes (gloo on this CPU host): one candidate registered, every
  claimed example consumed once by that job, nothing left to claim afterwards. (dpo and pg run the same way; their
  two-process runs are checked by hand, see docs/scale-training.md, to keep this file under a minute.)
- A launch that fails (a bad accelerate config file) raises a clear error with accelerate's own message, fails
  the job and releases its claim on both stores: a rerun claims the same examples.
- Recipe stages and `LaunchSettings` take launcher/num_processes/accelerate_config and refuse bad values, naming
  the field.

A launch costs ~30-40 s on 2 shared cores (accelerate, then two processes importing TRL), so only one succeeds here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from strop.memory import Store
from strop.memory.records import JobStatus, ModelStatus, Role
from strop.training.jobs import train_candidate
from strop.training.launch import LaunchError, LaunchSettings, accelerate_command, job_folder
from strop.training.recipe import RecipeError, recipe_from_dict
from strop.training.tracking import TrainHooks
from tests.training.test_trainer_kinds import SETTINGS, _claims, _consumed, _fill, _parent

NO_BAR = TrainHooks(progress=False)


@pytest.mark.slow
def test_sft_in_two_accelerate_processes_registers_once_and_consumes_each_example_once(
    sqlite_url: str, tiny_model_path: Path, tmp_path: Path
) -> None:
    store = Store(sqlite_url)
    ids = _fill(store, "sft", tiny_model_path)
    parent = _parent(store, tiny_model_path)
    out = tmp_path / "out"
    res = train_candidate(
        store,
        parent,
        kind="sft",
        settings=SETTINGS["sft"],
        output_dir=out,
        hooks=NO_BAR,
        launch=LaunchSettings(launcher="accelerate", num_processes=2),
    )
    # What the one-process path registers: a candidate of the parent's lineage, the adapter over the same base.
    cand = res.candidate
    assert (cand.status, cand.parent_id, cand.lineage, cand.job_id) == (
        ModelStatus.CANDIDATE,
        parent.id,
        "tiny",
        res.job.id,
    )
    assert cand.name == f"tiny-sft-{res.job.id[:8]}"
    assert (cand.path, cand.adapter_path) == (str(tiny_model_path), str(out))
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert {"train_loss", "examples", "steps", "train_seconds"} <= set(cand.metrics)
    # 12 examples, 4 per device step on 2 processes: 2 steps (the one-process path takes 3).
    assert res.examples == len(ids) and cand.metrics["steps"] == 2 and res.train_loss > 0
    assert cand.metrics["processes"] == 2 and cand.metrics["launch_seconds"] >= cand.metrics["train_seconds"]
    assert [m.id for m in store.list_models() if m.status == ModelStatus.CANDIDATE] == [cand.id]
    assert res.job.status == JobStatus.SUCCEEDED and res.job.model_out == cand.id
    assert _consumed(store) == {res.job.id: set(ids)}
    assert store.count_examples(Role.POLICY, "sft", unconsumed_by="policy:sft") == 0
    assert not job_folder(out).exists()  # the job folder goes once the candidate is registered
    store.close()


@pytest.mark.slow
def test_a_failed_launch_releases_the_claim_for_a_rerun(
    store: Store, tiny_model_path: Path, tmp_path: Path
) -> None:
    ids = _fill(store, "sft", tiny_model_path)
    parent = _parent(store, tiny_model_path)
    bad = tmp_path / "accelerate.yaml"
    bad.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: NO_SUCH_TYPE\nnum_processes: 2\n")
    out = tmp_path / "out"
    with pytest.raises(LaunchError) as err:
        train_candidate(
            store,
            parent,
            kind="sft",
            settings=SETTINGS["sft"],
            output_dir=out,
            hooks=NO_BAR,
            job_id="job-failed",
            launch=LaunchSettings(launcher="accelerate", accelerate_config=str(bad)),
        )
    message = str(err.value)
    assert "accelerate launch failed with exit status" in message and "released for a rerun" in message
    assert "NO_SUCH_TYPE" in message  # accelerate's own complaint, from the tail of its output
    assert str(job_folder(out) / "launch.log") in message and (job_folder(out) / "launch.log").is_file()
    job = store.get_job("job-failed")
    assert job is not None and job.status == JobStatus.FAILED and "LaunchError" in (job.error or "")
    assert _claims(store) == {} and store.list_models(lineage="tiny") == [parent]
    # Nothing was lost: a rerun claims every example again.
    assert store.count_examples(Role.POLICY, "sft", unconsumed_by="policy:sft") == len(ids)
    from strop.memory.records import TrainingJobRecord

    rerun = store.start_job(
        TrainingJobRecord(id="job-rerun", algorithm="sft", role=Role.POLICY, model_in=parent.id)
    )
    assert {x.id for x in store.claim_examples(rerun.id, role=Role.POLICY, kind="sft")} == set(ids)


def test_grpo_is_refused_before_anything_is_claimed(
    sqlite_url: str, tiny_model_path: Path, tmp_path: Path
) -> None:
    store = Store(sqlite_url)
    parent = _parent(store, tiny_model_path)
    with pytest.raises(ValueError, match="launcher = 'local'"):
        train_candidate(
            store,
            parent,
            kind="grpo",
            output_dir=tmp_path / "out",
            launch=LaunchSettings(launcher="accelerate", num_processes=2),
        )
    assert store.list_jobs() == []
    store.close()


STAGE: dict = {
    "name": "x",
    "roles": {"policy": "tiny"},
    "stages": [{"name": "a", "loop": "best_of_n", "train": {"kind": "sft"}, "eval": {"margin": 0.0}}],
}


def _recipe(**train: object) -> dict:
    stage = {**STAGE["stages"][0], "train": {**STAGE["stages"][0]["train"], **train}}
    return {**STAGE, "stages": [stage]}


def test_a_recipe_stage_takes_the_accelerate_launcher_and_refuses_bad_values(tmp_path: Path) -> None:
    config = tmp_path / "accelerate.yaml"
    config.write_text("distributed_type: MULTI_GPU\nnum_processes: 8\n")
    t = recipe_from_dict(_recipe(launcher="accelerate", num_processes=2)).stages[0].train
    assert t is not None and (t.launcher, t.num_processes, t.distributed) == ("accelerate", 2, True)
    t = recipe_from_dict(_recipe(launcher="accelerate", accelerate_config=str(config))).stages[0].train
    assert t is not None and t.accelerate_config == str(config)
    assert recipe_from_dict(_recipe()).stages[0].train.launcher == "local"  # type: ignore[union-attr]

    refused = {
        "stages[0].train.launcher": _recipe(launcher="deepspeed"),
        "stages[0].train.num_processes": _recipe(launcher="accelerate", num_processes=0),
        "stages[0].train.accelerate_config": _recipe(
            launcher="accelerate", accelerate_config=str(tmp_path / "no")
        ),
    }
    for field, data in refused.items():
        with pytest.raises(RecipeError, match=field.replace("[", r"\[").replace("]", r"\]")):
            recipe_from_dict(data)
    with pytest.raises(RecipeError, match="num_processes is only read with launcher = 'accelerate'"):
        recipe_from_dict(_recipe(num_processes=2))
    grpo = _recipe(kind="grpo", launcher="accelerate")
    with pytest.raises(RecipeError, match=r"stages\[0\]\.train\.launcher: trainer kind 'grpo'"):
        recipe_from_dict(grpo)


def test_the_launch_command(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    two = accelerate_command(LaunchSettings(launcher="accelerate", num_processes=2), spec, port=29999)
    # No config file: torchrun's launcher (--multi_gpu), the one that starts every process on a CPU host too.
    assert two[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in two
    assert (
        two[two.index("--num_processes") + 1] == "2" and two[two.index("--main_process_port") + 1] == "29999"
    )
    assert two[-3:] == ["-m", "strop.training.launch_worker", str(spec)]
    config = tmp_path / "c.yaml"
    config.write_text("distributed_type: DEEPSPEED\n")
    cmd = accelerate_command(
        LaunchSettings(launcher="accelerate", accelerate_config=str(config)), spec, port=1
    )
    assert cmd[cmd.index("--config_file") + 1] == str(config) and "--multi_gpu" not in cmd
    assert "--num_processes" not in cmd and "--main_process_port" not in cmd  # the config file's own
    zero3 = tmp_path / "z3.yaml"
    zero3.write_text("distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 3\n")
    from strop.training.launch import check_launchable
    from strop.training.trainers import get_trainer

    with pytest.raises(ValueError, match="ZeRO stage 3"):
        check_launchable(
            get_trainer("sft"), LaunchSettings(launcher="accelerate", accelerate_config=str(zero3))
        )


def test_an_unreadable_accelerate_config_is_left_to_accelerate_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import yaml

    from strop.training.launch import check_launchable
    from strop.training.trainers import get_trainer

    broken = tmp_path / "broken.yaml"
    broken.write_text("deepspeed_config: {zero_stage: 3\n")  # unclosed flow mapping
    with caplog.at_level("WARNING", logger="strop.training.launch"):
        check_launchable(
            get_trainer("sft"), LaunchSettings(launcher="accelerate", accelerate_config=str(broken))
        )
    [record] = [r for r in caplog.records if r.name == "strop.training.launch"]
    assert str(broken) in record.getMessage() and record.exc_info is not None
    assert isinstance(record.exc_info[1], yaml.YAMLError)  # the cause, with its traceback


def test_strop_train_takes_the_launcher_options_and_names_a_bad_one(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from strop.cli import app

    db = f"sqlite:///{tmp_path / 'strop.db'}"
    for argv, fix in (
        (
            ["--num-processes", "2"],
            "--num-processes: num_processes is only read with launcher = 'accelerate'",
        ),
        (["--launcher", "ray"], "--launcher: Input should be 'local' or 'accelerate'"),
        (
            ["--launcher", "accelerate", "--accelerate-config", str(tmp_path / "no.yaml")],
            "--accelerate-config: ",
        ),
    ):
        for kind in ("sft", "dpo"):
            res = CliRunner().invoke(app, ["train", kind, "--model", "tiny", "--db", db, *argv])
            assert res.exit_code == 1 and fix in res.output, (kind, argv, res.output)


def test_a_rank_that_fails_leaves_its_error_for_the_launch_message(tmp_path: Path) -> None:
    """torchrun's summary names a failed rank but not its exception: the worker writes it into the job folder."""
    from strop.memory.records import ExampleKind, ExampleRecord, ModelVersionRecord
    from strop.training import launch_worker
    from strop.training.launch import _rank_errors, write_job
    from strop.training.pg import MalformedExampleError, PGSettings

    parent = ModelVersionRecord(name="tiny", lineage="tiny", path=str(tmp_path / "no-model"))
    bad = ExampleRecord(id="ex-bad", kind=ExampleKind.ADVANTAGE, payload={"prompt_ids": [1]})
    folder = tmp_path / "out.launch"
    spec = write_job(
        folder,
        kind="pg",
        settings=PGSettings(),
        parent=parent,
        examples=[bad],
        output_dir=tmp_path / "out",
        role=Role.POLICY,
        job_id="j",
        hooks=None,
    )
    with pytest.raises(MalformedExampleError):
        launch_worker.main([str(spec)])
    assert _rank_errors(folder).startswith("rank 0: MalformedExampleError: example ex-bad (advantage")
