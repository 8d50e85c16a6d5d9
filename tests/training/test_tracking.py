"""`report_to` and the training log: trackers checked when settings are read, TRL's losses and strop's own
metrics in TensorBoard's event files, a progress bar instead of printed metric dicts, and the per-step
history kept on the job for reports. Real SFT runs of the tiny model (a few seconds each)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from strop.training import tracking
from strop.training.dpo import DPOSettings
from strop.training.grpo_config import GRPOSettings
from strop.training.pg import PGSettings
from strop.training.settings import LoraSettings
from strop.training.sft import SFTSettings, run_sft
from strop.training.tracking import TrainHooks
from tests.training.test_sft import _dataset


def _cfg(**kw: Any) -> SFTSettings:
    return SFTSettings(
        epochs=1, batch_size=4, learning_rate=1e-3, lora=LoraSettings(r=4, alpha=8), logging_steps=1, **kw
    )


@pytest.mark.parametrize("settings", [SFTSettings, DPOSettings, GRPOSettings, PGSettings])
def test_report_to_is_one_field_checked_when_settings_are_read(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings().report_to == [] and settings(report_to="none").report_to == []
    monkeypatch.setattr(tracking, "installed", lambda name: name == "tensorboard")
    assert settings(report_to="tensorboard").report_to == ["tensorboard"]
    assert settings(report_to=["tensorboard", "tensorboard"]).report_to == ["tensorboard"]
    assert settings(report_to="all").report_to == ["tensorboard"]
    with pytest.raises(ValidationError, match=r"mlflow is not installed \(pip install mlflow\)"):
        settings(report_to=["tensorboard", "mlflow"])
    with pytest.raises(ValidationError, match="unknown tracker 'tensorbored'"):
        settings(report_to="tensorbored")


def test_compact_history_keeps_numbers_and_thins_long_runs() -> None:
    history = [{"loss": 1.0 / (i + 1), "step": i + 1, "note": "x", "flag": True} for i in range(1000)]
    rows = tracking.compact_history(history, limit=50)
    assert len(rows) == 50 and rows[0] == {"loss": 1.0, "step": 1.0} and rows[-1]["step"] == 1000.0
    assert tracking.compact_history([{"step": 3}]) == []  # nothing but the step: nothing to draw


class _Recorder:
    """A stand-in tracker: a TRL callback that keeps what it is sent."""

    def __init__(self) -> None:
        self.logs: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:  # every other TrainerCallback event: nothing to do
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        self.logs.append(dict(logs or {}))


@pytest.mark.slow
def test_callbacks_get_losses_and_strops_metrics_and_nothing_is_printed(
    tiny_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recorder = _Recorder()
    hooks = TrainHooks(
        progress=False,
        metrics={"collect/accuracy": 0.25, "cycle": 1, "missing": float("nan")},
        callbacks=[recorder],
    )
    out = run_sft(
        _dataset(8), model_path=tiny_model_path, output_dir=tmp_path / "a", settings=_cfg(), hooks=hooks
    )
    losses = [log["loss"] for log in recorder.logs if "loss" in log]
    assert len(losses) == out.steps == 2
    assert recorder.logs[-1] == {"strop/collect/accuracy": 0.25, "strop/cycle": 1.0, "epoch": 1.0}
    assert [h["loss"] for h in out.log_history if "loss" in h] == pytest.approx(losses)
    printed = capsys.readouterr()
    assert "{'loss'" not in printed.out + printed.err and "'grad_norm'" not in printed.out + printed.err


@pytest.mark.slow
def test_progress_bar_shows_steps_and_loss(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from strop.training import callbacks

    screen = io.StringIO()
    bar = callbacks.RichProgress
    monkeypatch.setattr(
        callbacks,
        "RichProgress",
        lambda label: bar(
            label, console=Console(file=screen, force_terminal=True, color_system=None, width=120)
        ),
    )
    run_sft(
        _dataset(8),
        model_path=tiny_model_path,
        output_dir=tmp_path / "a",
        settings=_cfg(),
        hooks=TrainHooks(progress=True, label="cycle 1 star: sft"),
    )
    text = screen.getvalue()
    assert "cycle 1 star: sft" in text and "2/2 steps" in text and "loss " in text and "ETA" in text


@pytest.mark.slow
def test_tensorboard_gets_trl_losses_and_strops_metrics(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not tracking.installed("tensorboard"):
        pytest.skip(
            "tensorboard is not installed (pip install 'strop[tensorboard]'); the fake tracker test covers "
            "the callback path"
        )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    run_sft(
        _dataset(8),
        model_path=tiny_model_path,
        output_dir=tmp_path / "a",
        settings=_cfg(report_to="tensorboard"),
        hooks=TrainHooks(progress=False, metrics={"collect/accuracy": 0.25}),
    )
    tracking.send_metrics(
        ["tensorboard"], tmp_path / "evolve", {"strop/arithmetic/heldout/pass@1": 0.5}, step=1
    )

    def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
        out: dict[str, list[tuple[int, float]]] = {}
        for run in sorted({events.parent for events in folder.rglob("events.out.tfevents.*")}):
            acc = EventAccumulator(str(run))
            acc.Reload()
            for tag in acc.Tags()["scalars"]:
                out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        return out

    trained = scalars(tmp_path / "a" / "trainer")
    assert [step for step, _ in trained["train/loss"]] == [1, 2]
    assert trained["train/strop/collect/accuracy"] == [(2, 0.25)]
    assert scalars(tmp_path / "evolve")["eval/strop/arithmetic/heldout/pass@1"] == [(1, 0.5)]
