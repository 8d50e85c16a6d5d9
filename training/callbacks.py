"""The TRL callbacks every trainer kind runs with: a rich progress bar, and strop's own metrics at train end.

With `disable_tqdm=True` (strop's default: tqdm bars make noise in logs) transformers installs its
`PrinterCallback`, which prints every logged dict raw: `{'loss': '2.31', 'grad_norm': ...}` a few hundred times
per evolve. `run_trainer` replaces it with one rich bar per job (steps, the last loss, time left) when progress
is wanted, and with nothing when it is not (`--no-progress`, CI). Imported only inside a training run
(transformers loads here).
"""

from __future__ import annotations

import math
from typing import Any

from transformers import PrinterCallback, ProgressCallback, TrainerCallback
from transformers.integrations import TensorBoardCallback

from strop.training.tracking import TrainHooks

# What the bar shows beside the loss when a trainer logs it (GRPO, pg: the reward; DPO: the reward margin).
_EXTRA_FIGURES = {"reward": "reward", "rewards/margins": "margin"}


class RichProgress(TrainerCallback):
    """One rich progress bar for a training run: steps done of the total, the last logged loss, ETA."""

    def __init__(self, label: str, console: Any = None) -> None:
        self.label, self.console = label, console
        self.bar: Any = None
        self.task: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            TextColumn("{task.fields[figures]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.bar.start()
        self.task = self.bar.add_task(
            self.label, total=state.max_steps or None, completed=state.global_step, figures=""
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if self.bar is None or not logs or "loss" not in logs:
            return
        figures = [f"loss {_fmt(logs['loss'])}"]
        figures += [f"{name} {_fmt(logs[key])}" for key, name in _EXTRA_FIGURES.items() if key in logs]
        self.bar.update(self.task, figures=", ".join(figures))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) and math.isfinite(x) else str(x)


def run_trainer(trainer: Any, hooks: TrainHooks | None) -> Any:
    """`trainer.train()` with strop's callbacks in place of TRL's printing, then strop's metrics logged (under
    `strop/`) to whatever watches the trainer: the `report_to` trackers and the hooks' own callbacks."""
    hooks = hooks or TrainHooks()
    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)
    bar = RichProgress(hooks.label) if hooks.progress else None
    for callback in [*([bar] if bar else []), *hooks.callbacks]:
        trainer.add_callback(callback)
    try:
        result = trainer.train()
    finally:
        if bar is not None:
            bar.close()  # also when training raised: a live bar left running garbles the terminal
    figures = {
        f"strop/{k}": float(v)
        for k, v in hooks.metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    if figures:
        trainer.log(figures)
        for callback in trainer.callback_handler.callbacks:  # TensorBoard re-opened its writer for that log
            if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                callback.tb_writer.close()
                callback.tb_writer = None
    return result
