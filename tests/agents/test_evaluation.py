"""Held-out evaluation on the real tiny model, and the `strop run / train / eval / models` path end to end."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from strop.agents.evaluation import EvalConfig, evaluate
from strop.agents.runner import load_version_engine, resolve_version
from strop.cli import app
from strop.memory.records import ModelStatus
from strop.sandbox.tasks import ArithmeticTaskSet

cli = CliRunner()


@pytest.mark.slow
async def test_pass_at_1_and_pass_at_k_are_recorded_on_the_model_version(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    from strop.memory import Store

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    version = resolve_version(store, "tiny")
    assert version.status == ModelStatus.BASE and version.lineage == "tiny"
    engine = load_version_engine(version)
    ts = ArithmeticTaskSet()
    res = await evaluate(
        engine, ts, store=store, model_id=version.id, config=EvalConfig(n_tasks=16, k=4, max_tokens=24)
    )
    assert 0.0 < res.pass_at_1 < 1.0, "the tiny model is ~40% accurate"
    assert res.pass_at_k >= res.pass_at_1 - 0.2  # sampled, so not strictly above greedy, but close or better
    m = store.get_model(version.id).metrics
    assert m["arithmetic/heldout/pass@1"] == res.pass_at_1 == m["heldout_accuracy"]
    assert m["arithmetic/heldout/pass@4"] == res.pass_at_k and m["arithmetic/heldout/n_tasks"] == 16
    # Held-out episodes are recorded but yield no training data.
    assert store.counts()["episodes"] == 32 and store.counts()["examples"] == 0
    # Greedy is deterministic, and an evaluation already in the store is not redone.
    again = await evaluate(
        engine, ts, store=store, model_id=version.id, config=EvalConfig(n_tasks=16, max_tokens=24)
    )
    assert again.pass_at_1 == res.pass_at_1 and store.counts()["episodes"] == 32
    await engine.close()
    store.close()


@pytest.mark.slow
def test_cli_run_train_eval_promote_rollback(tiny_model_path: Path, tmp_path: Path) -> None:
    db = ["--db", f"sqlite:///{tmp_path / 's.db'}"]

    def ok(*args: str) -> str:
        res = cli.invoke(app, [*args, *db])
        assert res.exit_code == 0, res.output
        return " ".join(res.output.split())

    out = ok(
        "run",
        "best-of-n",
        "--model",
        "tiny",
        "--tasks",
        "arithmetic",
        "--n",
        "4",
        "--episodes",
        "8",
        "--max-tokens",
        "24",
    )
    assert "8 episodes, 32 answers" in out
    ok("eval", "--model", "tiny", "--n-tasks", "8", "--max-tokens", "24")
    out = ok(
        "train",
        "sft",
        "--model",
        "tiny",
        "--epochs",
        "1",
        "--lora-r",
        "4",
        "--name",
        "tiny-sft1",
        "--output-dir",
        str(tmp_path / "sft1"),
    )
    assert "candidate tiny-sft1" in out
    res = cli.invoke(app, ["train", "sft", "--model", "tiny", *db])
    assert res.exit_code == 1 and "nothing to train" in res.output  # examples are consumed once
    res = cli.invoke(app, ["models", "promote", "tiny-sft1", *db])
    assert res.exit_code == 1 and "strop eval" in " ".join(
        res.output.split()
    )  # not evaluated: the gate refuses
    ok("eval", "--model", "tiny-sft1", "--n-tasks", "8", "--max-tokens", "24")
    out = ok("models", "promote", "tiny-sft1", "--margin", "0", "--force")
    assert "promoted tiny-sft1" in out
    out = ok("models", "list", "--no-cache")
    assert "tiny-sft1 *" in out and "└" in out  # lineage: the candidate under its parent, marked current
    out = ok("models", "rollback", "tiny")
    assert "current version of tiny: tiny" in out


def test_cli_errors_name_the_fix(tmp_path: Path) -> None:
    db = ["--db", f"sqlite:///{tmp_path / 's.db'}"]
    res = cli.invoke(app, ["eval", "--model", "tiny", "--tasks", "nope", *db])
    assert res.exit_code == 1 and "nope" in res.output and "arithmetic" in res.output
    res = cli.invoke(app, ["run", "best-of-n", "--model", "no-such-model", *db])
    assert res.exit_code == 1 and "no-such-model" in res.output
    res = cli.invoke(app, ["models", "promote", "nope", *db])
    assert res.exit_code == 1 and "strop models list" in res.output
