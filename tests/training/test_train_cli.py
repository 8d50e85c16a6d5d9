"""`strop train KIND`: one command per registered trainer kind, generated from the registry.

Each kind's settings fields are its options (their descriptions the help), validated as a recipe stage's
settings are; grpo, an on-line kind, runs its own rollouts from the command line on the tiny model.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field
from typer.testing import CliRunner

from strop.cli import app
from strop.training import trainers


def _invoke(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return res.exit_code, res.output


def test_every_registered_kind_has_a_command_with_its_settings_in_the_help() -> None:
    code, out = _invoke("train", "--help")
    assert code == 0
    for kind in trainers.list_trainers():
        assert re.search(rf"│ {kind.name}\s", out), kind.name
    code, out = _invoke("train", "pg", "--help")
    assert code == 0, out
    for text in (
        "--iterations",
        "--epsilon-high",
        "--loss-type",
        "One of: dapo, grpo, bnpo",
        "--lora-r",
        "--role",
    ):
        assert text in out, text
    assert "Passes over the training data" in out  # a field's description is its option's help
    code, out = _invoke("train", "grpo", "--help")
    assert code == 0, out
    for text in ("--num-generations", "Samples per task (the GRPO group)", "--revive-all-negative", "--loop"):
        assert text in out, text
    assert "--loop-config" in out and "--n-tasks" in out and "--set rewards=..." in out
    assert "--role" not in out and "--launcher" not in out  # grpo samples its own data in this process


def test_the_settings_are_checked_as_a_recipe_stage_checks_them(tmp_path: Path) -> None:
    db = ["--db", f"sqlite:///{tmp_path / 's.db'}"]
    for kind, args, expected in [
        ("sft", ["--epochs", "0"], "epochs: Input should be greater than 0"),
        ("pg", ["--loss-type", "sigmoid"], "loss_type: Input should be 'dapo', 'grpo' or 'bnpo'"),
        ("grpo", ["--set", "rewards=[]"], "rewards: List should have at least 1 item"),
        ("dpo", ["--set", "lora.rank=4"], "lora.rank: unknown field"),
        ("sft", ["--lora-r", "0", "--set", "lora.alpha=4"], "--lora-r and --set lora.alpha=... both given"),
        ("sft", ["--epochs", "1", "--set", "epochs=2"], "--epochs and --set epochs=... both given"),
        ("sft", ["--set", "epochs"], "'epochs' is not KEY=VALUE"),
        ("grpo", ["--loop", "nope"], "unknown loop 'nope'"),
        ("grpo", ["--loop-config", "nn=3"], "no config field 'nn'"),
    ]:
        code, out = _invoke("train", kind, "--model", "tiny", *args, *db)
        assert code == 1 and expected in out, (kind, args, out)
    assert not (tmp_path / "s.db").exists()  # refused before the store was opened


class _ToySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(3, ge=1, description="How many rounds the toy trainer plays.")


@pytest.fixture
def toy_kind() -> Iterator[trainers.TrainerKind]:
    kind = trainers.TrainerKind(
        name="toy",
        settings=_ToySettings,
        example_kinds=(),
        train=lambda req: trainers.TrainOutcome(path="", train_loss=0.0, steps=0, examples=0, seconds=0.0),
        description="A toy kind registered by a test.",
    )
    trainers.register_trainer(kind)
    try:
        yield kind
    finally:
        trainers.TRAINERS.unregister("toy")


def test_a_new_kind_gets_its_command_without_a_new_command(toy_kind: trainers.TrainerKind) -> None:
    code, out = _invoke("train", "--help")
    assert code == 0 and "A toy kind registered by a test." in out
    code, out = _invoke("train", "toy", "--help")
    assert code == 0 and "--rounds" in out and "How many rounds the toy trainer plays." in out
    code, out = _invoke("train", "toy", "--model", "tiny", "--rounds", "0")
    assert code == 1 and "rounds: Input should be greater than or equal to 1" in out


@pytest.mark.slow
def test_strop_train_grpo_runs_its_rollouts_and_trains_the_tiny_model(
    tiny_model_path: Path, sqlite_url: str, tmp_path: Path
) -> None:
    from strop.memory import Store
    from strop.memory.records import ModelStatus

    db = ["--db", sqlite_url]
    small = [
        "--num-generations",
        "4",
        "--batch-size",
        "8",
        "--grad-accum",
        "2",
        "--max-completion-length",
        "12",
    ]
    # GRPO samples with its own group size: a loop config that says otherwise is refused, naming both.
    code, out = _invoke("train", "grpo", "-m", "tiny", *small, "--loop-config", "n=3", "--n-tasks", "4", *db)
    assert code == 1 and "sets n = 3" in out and "num_generations = 4" in out, out
    code, out = _invoke(
        "train",
        "grpo",
        "-m",
        "tiny",
        *small,
        "--max-steps",
        "1",
        "--lr",
        "1e-3",
        "--lora-r",
        "4",
        "--n-tasks",
        "4",
        "-o",
        "digits=1",
        "--loop-config",
        "seed=0",
        "--no-progress",
        "--name",
        "tiny-grpo-1",
        "--output-dir",
        str(tmp_path / "grpo"),
        *db,
    )
    assert code == 0, out
    run_id = re.search(r"rollouts: best_of_n on 4 arithmetic\[digits=1\] tasks, stored under run (\w+)", out)
    assert run_id is not None, out
    assert "candidate tiny-grpo-1" in out and "16 samples" in out and "strop eval --model tiny-grpo-1" in out
    store = Store(sqlite_url)
    try:
        cand = store.get_model("tiny-grpo-1")
        assert cand is not None and cand.status == ModelStatus.CANDIDATE
        assert (
            cand.adapter_path == str(tmp_path / "grpo")
            and (tmp_path / "grpo" / "adapter_config.json").is_file()
        )
        job = store.get_job(cand.job_id)
        assert job.algorithm == "grpo" and job.metrics["settings"]["lora"]["r"] == 4
        assert job.metrics["grpo_steps"] == 1 and job.metrics["groups"] == 4
        assert store.get_run(run_id.group(1)).status == "finished"
        assert len(store.list_episodes(run_id.group(1))) == 4  # one group per task, stored as an episode
    finally:
        store.close()
