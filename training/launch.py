"""Training beyond one process: a trainer kind's TRL job run under `accelerate launch`.

The strop process that asked for the job keeps all the bookkeeping (`training.jobs.train_candidate`): it starts
the job, claims the examples, and only after the launch succeeded registers the candidate and marks the examples
consumed; a failed launch fails the job, which releases the claim. The launched processes never touch the store:
they read a job folder (the job spec, the claimed examples as JSON lines), train with the same trainer kind as
the one-process path, and rank 0 saves the model and writes the outcome back to the folder. So exactly-once
consumption is the one-process path's, unchanged, whatever the child processes do: a child that crashes, hangs
up or is killed leaves no candidate, and the claim is released for the rerun.

On a host without a config file, `num_processes > 1` launches with accelerate's `--multi_gpu` launcher (torchrun):
one process per GPU on a GPU host, and on a CPU-only host processes that TRL's `use_cpu=True` (set by every
kind when CUDA is absent) joins over gloo. accelerate's plain launcher would start only one process on a CPU.
A config file (`accelerate config`) chooses everything else: mixed precision, DeepSpeed ZeRO-1/2, FSDP. strop
starts the launch on its own host only; several machines are not automated (docs/scale-training.md).

Only the standard library and pydantic at module level: recipe validation imports `LaunchSettings`.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from strop.memory.records import ExampleRecord, ModelVersionRecord, Role
    from strop.training.tracking import TrainHooks
    from strop.training.trainers import TrainerKind, TrainOutcome

log = logging.getLogger(__name__)

WORKER_MODULE = "strop.training.launch_worker"
SPEC_FILE, EXAMPLES_FILE, OUTCOME_FILE, LOG_FILE = "spec.json", "examples.jsonl", "outcome.json", "launch.log"
_TAIL_LINES = 40


class LaunchError(RuntimeError):
    """The launched training processes failed; the message carries the command, the exit status and the tail of
    their output, and names the log file kept in the job folder."""


class LaunchSettings(BaseModel):
    """Where a training job runs: in this process, or in `accelerate launch` processes (data parallel)."""

    model_config = ConfigDict(extra="forbid")

    launcher: Literal["local", "accelerate"] = Field(
        "local",
        description="'local': train in this process. 'accelerate': run the TRL job under `accelerate "
        "launch` (data parallel over `num_processes` processes: GPUs on a GPU host, gloo on a CPU-only one; "
        "DeepSpeed or FSDP when `accelerate_config` says so). This process still claims the examples and "
        "registers the candidate, so consumption stays exactly once.",
    )
    num_processes: int | None = Field(
        None,
        ge=1,
        description="Processes to launch (accelerate's --num_processes); default: the config file's, "
        "else accelerate's own default (one per GPU). Only with launcher = 'accelerate'.",
    )
    accelerate_config: str | None = Field(
        None,
        description="An `accelerate config` YAML file (accelerate's --config_file): multi-GPU, DeepSpeed "
        "ZeRO-1/2, FSDP (one machine). Only with launcher = 'accelerate'.",
    )

    @field_validator("accelerate_config")
    @classmethod
    def _config_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).expanduser().is_file():
            raise ValueError(
                f"{value!r} is not a file; write one with `accelerate config --config_file PATH`, "
                "or give num_processes instead"
            )
        return value

    @model_validator(mode="after")
    def _check_launch(self) -> LaunchSettings:
        if self.launcher == "local" and (
            self.num_processes is not None or self.accelerate_config is not None
        ):
            given = "num_processes" if self.num_processes is not None else "accelerate_config"
            raise ValueError(
                f"{given} is only read with launcher = 'accelerate'; set launcher = 'accelerate' "
                f"or remove {given}"
            )
        return self

    @property
    def distributed(self) -> bool:
        return self.launcher == "accelerate"

    def launch_only(self) -> LaunchSettings:
        """These fields alone (a recipe's train settings subclass this model)."""
        return LaunchSettings(
            launcher=self.launcher, num_processes=self.num_processes, accelerate_config=self.accelerate_config
        )


def check_launchable(kind: TrainerKind, launch: LaunchSettings, hooks: TrainHooks | None = None) -> None:
    """Refuse, before anything is claimed, a job the launched processes could not run."""
    if not launch.distributed:
        return
    if kind.online:
        raise ValueError(
            f"trainer kind {kind.name!r} generates its rollouts with this process's engines and "
            "writes them to the store, which launched processes cannot do; use launcher = 'local' "
            "for it (the off-line kinds sft, dpo and pg run under accelerate)"
        )
    if hooks is not None and hooks.callbacks:
        raise ValueError(
            "TrainHooks.callbacks are objects of this process and cannot reach launched processes; "
            "use launcher = 'local', or report through `report_to`"
        )
    if launch.accelerate_config is not None:
        stage = _zero_stage(Path(launch.accelerate_config).expanduser())
        if stage == 3:
            raise ValueError(
                f"{launch.accelerate_config}: DeepSpeed ZeRO stage 3 shards the weights across "
                "processes, and strop saves rank 0's copy of the model; use zero_stage 1 or 2"
            )


def _zero_stage(path: Path) -> int | None:
    """The DeepSpeed ZeRO stage an accelerate config file asks for (None without one).

    A file that cannot be read or parsed is not refused here: accelerate reports its own error for it when the
    launch starts, in its own words. The cause is logged, since a stage-3 config then goes unchecked.
    """
    import yaml  # accelerate's own dependency: it reads these files with it

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        log.warning(
            "could not read the DeepSpeed ZeRO stage of %s (accelerate will report the file's error when it "
            "launches)",
            path,
            exc_info=True,
        )
        return None
    ds = data.get("deepspeed_config") if isinstance(data, dict) else None
    stage = ds.get("zero_stage") if isinstance(ds, dict) else None
    return stage if isinstance(stage, int) else None


def job_folder(output_dir: Path) -> Path:
    """Where a launched job's spec, examples, log and outcome live: beside the output folder (a shared filesystem
    for a job over several machines, started by hand), kept after a failure so its log can be read."""
    return output_dir.with_name(output_dir.name + ".launch")


def accelerate_command(launch: LaunchSettings, spec: Path, *, port: int | None = None) -> list[str]:
    """The `accelerate launch` command line that runs the worker module on `spec`."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if launch.accelerate_config is not None:
        cmd += ["--config_file", str(Path(launch.accelerate_config).expanduser())]
    elif launch.num_processes is not None and launch.num_processes > 1:
        # Without a config file the plain launcher starts one process on a CPU host; torchrun starts them all.
        cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if port is not None:
            cmd += ["--main_process_port", str(port)]
    if launch.num_processes is not None:
        cmd += ["--num_processes", str(launch.num_processes)]
    return [*cmd, "-m", WORKER_MODULE, str(spec)]


def free_port() -> int:
    """A TCP port nobody listens on now, so two jobs on one host do not both take torchrun's default 29500."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_job(
    folder: Path,
    *,
    kind: str,
    settings: BaseModel,
    parent: ModelVersionRecord,
    examples: list[ExampleRecord],
    output_dir: Path,
    role: Role,
    job_id: str,
    hooks: TrainHooks | None,
) -> Path:
    """Materialise what the worker needs into `folder` (emptied first); returns the spec file."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    with (folder / EXAMPLES_FILE).open("w") as f:
        for ex in examples:
            f.write(ex.model_dump_json() + "\n")
    spec = {
        "kind": kind,
        "settings": settings.model_dump(mode="json"),
        "parent": parent.model_dump(mode="json"),
        "output_dir": str(output_dir.resolve()),
        "role": str(role),
        "job_id": job_id,
        "examples": EXAMPLES_FILE,
        "outcome": OUTCOME_FILE,
        "hooks": {"progress": hooks.progress, "label": hooks.label, "metrics": hooks.metrics}
        if hooks
        else None,
    }
    path = folder / SPEC_FILE
    path.write_text(json.dumps(spec))
    return path


def run_launched(
    kind: TrainerKind,
    *,
    settings: BaseModel,
    parent: ModelVersionRecord,
    examples: list[ExampleRecord],
    output_dir: Path,
    role: Role,
    job_id: str,
    hooks: TrainHooks | None,
    launch: LaunchSettings,
    echo: bool = True,
) -> TrainOutcome:
    """Train under `accelerate launch` and return rank 0's outcome; raise `LaunchError` if the launch failed.

    The child's output is kept in the job folder's log and, with `echo`, copied to this process's stderr as it
    comes. The folder is removed after a success and kept after a failure.
    """
    from strop.training.trainers import TrainOutcome

    folder = job_folder(output_dir)
    spec = write_job(
        folder,
        kind=kind.name,
        settings=settings,
        parent=parent,
        examples=examples,
        output_dir=output_dir,
        role=role,
        job_id=job_id,
        hooks=hooks,
    )
    cmd = accelerate_command(launch, spec, port=free_port())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    rc, tail = _run(cmd, env, folder / LOG_FILE, echo=echo)
    shown = " ".join(cmd)
    if rc != 0:
        raise LaunchError(
            f"accelerate launch failed with exit status {rc} (the claimed examples are released for a rerun).\n"
            + _rank_errors(folder)
            + f"command: {shown}\nlast lines of its output (all of it in {folder / LOG_FILE}):\n"
            + "".join(tail)
        )
    outcome = folder / OUTCOME_FILE
    if not outcome.is_file():
        raise LaunchError(
            f"accelerate launch exited 0 but rank 0 wrote no {OUTCOME_FILE} in {folder}: was "
            f"{WORKER_MODULE} the script launched? command: {shown}"
        )
    result = TrainOutcome.model_validate_json(outcome.read_text())
    # Beside the training seconds: what the launch cost in all (starting the processes, imports, saving).
    result.metrics["launch_seconds"] = time.monotonic() - started
    shutil.rmtree(folder, ignore_errors=True)
    return result


def _rank_errors(folder: Path) -> str:
    """The exception each failed rank recorded (the worker writes one file per rank), one line each."""
    lines = []
    for path in sorted(folder.glob("error-rank*.txt")):
        first = path.read_text().splitlines()[0] if path.stat().st_size else "(empty)"
        lines.append(f"rank {path.stem.removeprefix('error-rank')}: {first}\n")
    return "".join(lines)


def _run(cmd: list[str], env: dict[str, str], log: Path, *, echo: bool) -> tuple[int, list[str]]:
    """Run `cmd`, copying its output to `log` (and stderr); returns its exit status and last lines.

    If this process is interrupted (Ctrl-C, an exception in another thread's signal handler) the launch is
    terminated before the exception goes on, so no training process outlives the job that released its claim.
    """
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                tail.append(line)
                if echo:
                    sys.stderr.write(line)

        reader = threading.Thread(target=pump, name="accelerate-output", daemon=True)
        reader.start()
        try:
            rc = proc.wait()
        except BaseException:
            _stop(proc)
            raise
        finally:
            reader.join(timeout=10)
    return rc, list(tail)


def _stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM the launcher (torchrun passes it to its workers), then SIGKILL after a grace period."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
