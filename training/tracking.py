"""Where a training job's figures go besides the store: experiment trackers (`report_to`) and the terminal.

`report_to` is one settings field, shared by every trainer kind, handed to TRL's `TrainingArguments` as it is:
TRL's own integrations (TensorBoard, MLflow, W&B...) then log the losses. A tracker that is not installed is
refused when the settings are read (a recipe fails at load, naming the package), not an hour later when TRL
builds its callbacks. strop's own figures (what collection produced, the parent's and the candidate's held-out
scores) reach the same trackers: at the end of training through the trainer's `log`, so they land beside the
losses in the job's TensorBoard run, and after evaluation through `send_metrics`.

Only the standard library and pydantic at module level: the settings models import this, and a recipe loads
without torch; the callbacks themselves live in `training.callbacks`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

# transformers' reporting integrations (INTEGRATION_TO_CALLBACK) and the module each one needs.
TRACKERS: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "mlflow": ("mlflow",),
    "wandb": ("wandb",),
    "trackio": ("trackio",),
    "comet_ml": ("comet_ml",),
    "neptune": ("neptune",),
    "clearml": ("clearml",),
    "dvclive": ("dvclive",),
    "codecarbon": ("codecarbon",),
    "azure_ml": ("azureml",),
    "dagshub": ("dagshub",),
    "flyte": ("flytekit",),
    "swanlab": ("swanlab",),
    "kubeflow": ("kubeflow",),
}
_EXTRA = {"tensorboard": "pip install 'strop[tensorboard]'"}


def _report_to(value: Any) -> list[str]:
    """'none' / [] -> [], 'all' -> every installed tracker, a name or a list -> the list, each one checked."""
    names = [value] if isinstance(value, str) else list(value or [])
    if any(not isinstance(n, str) for n in names):
        raise ValueError(f"report_to must be a tracker name or a list of them, got {value!r}")
    if names == ["none"]:
        return []
    if names == ["all"]:
        return [n for n in TRACKERS if installed(n)]
    for n in names:
        if n not in TRACKERS:
            raise ValueError(
                f"report_to: unknown tracker {n!r}; known: none, all, {', '.join(sorted(TRACKERS))}"
            )
        if not installed(n):
            raise ValueError(
                f"report_to: {n} is not installed ({_EXTRA.get(n, f'pip install {TRACKERS[n][0]}')})"
            )
    return list(dict.fromkeys(names))


def installed(tracker: str) -> bool:
    return any(importlib.util.find_spec(m) is not None for m in TRACKERS[tracker])


ReportTo = Annotated[
    list[str],
    BeforeValidator(_report_to),
    Field(
        default_factory=list,
        description="Experiment trackers TRL logs to, as in TrainingArguments: 'none' "
        "(default), 'tensorboard', 'mlflow', 'all' or a list; strop's own metrics go to the same ones.",
    ),
]


@dataclass
class TrainHooks:
    """What a training run shows and reports besides its result (handed to a kind with the TrainRequest).

    `progress`: a rich progress bar (steps, loss, ETA) instead of TRL's printed metric dicts; off for logs and
    CI (`--no-progress`). `metrics`: strop's own figures, logged at the end of training under `strop/` to the
    trackers in `report_to` and to any extra `callbacks` (TRL `TrainerCallback`s).
    """

    progress: bool = True
    label: str = "training"
    metrics: dict[str, float] = field(default_factory=dict)
    callbacks: list[Any] = field(default_factory=list)


def compact_history(log_history: list[dict[str, Any]], *, limit: int = 400) -> list[dict[str, float]]:
    """TRL's `state.log_history`, numbers only, at most `limit` entries (evenly thinned, the last kept): what
    a job stores so a report can draw its loss and reward curves."""
    rows = [
        {k: float(v) for k, v in h.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        for h in log_history
    ]
    rows = [r for r in rows if len(r) > 1]
    if len(rows) > limit:
        keep = sorted({round(i * (len(rows) - 1) / (limit - 1)) for i in range(limit)})
        rows = [rows[i] for i in keep]
    return rows


def send_metrics(report_to: list[str], log_dir: str | Path, metrics: dict[str, float], *, step: int) -> None:
    """Log `metrics` at `step` to the trackers in `report_to` with transformers' own integration callbacks
    (the ones TRL used during training), outside a training run: e.g. a candidate's held-out scores after its
    evaluation, one point per cycle. They are evaluation figures, so each key is sent as `eval_<key>` (which
    the integrations file under eval/, not train/). TensorBoard writes into `log_dir`."""
    if not report_to or not metrics:
        return
    from transformers import TrainerControl, TrainerState, TrainingArguments
    from transformers.integrations import get_reporting_integration_callbacks

    args = TrainingArguments(output_dir=str(log_dir), report_to=report_to, use_cpu=True)
    state = TrainerState(global_step=step, is_world_process_zero=True, is_local_process_zero=True)
    control = TrainerControl()
    for cls in get_reporting_integration_callbacks(report_to):
        callback = cls()
        if hasattr(callback, "tb_writer"):
            callback.logging_dir = str(log_dir)  # one TensorBoard run that gets a point per cycle
        callback.on_train_begin(args, state, control)
        callback.on_log(args, state, control, logs={f"eval_{k}": v for k, v in metrics.items()})
        callback.on_train_end(args, state, control)
