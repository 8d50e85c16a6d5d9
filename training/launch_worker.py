"""The module `accelerate launch` runs in each training process: `python -m strop.training.launch_worker SPEC`.

It reads the job folder that `training.launch.run_launched` wrote (the trainer kind, its settings, the parent
version, the claimed examples), builds the dataset and trains exactly as the one-process path does (the kind's
own `build_dataset` and `train`), and on rank 0 writes the outcome. It never opens the store: claiming,
registering and marking consumption stay with the process that launched it, so a worker that dies changes
nothing there.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

# One file per failed rank in the job folder (training.launch reads them into its error).
ERROR_PREFIX = "error-rank"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m strop.training.launch_worker SPEC.json (got {args})", file=sys.stderr)
        return 2
    spec_path = Path(args[0])
    from strop._env import set_process_defaults

    set_process_defaults()  # a launched trainer is strop's own process: offline hub, passive OpenMP waits
    try:
        return _train(spec_path)
    except BaseException as e:
        # torchrun's summary names the failed rank but not the error: leave it where the launcher reads it.
        rank = os.environ.get("RANK", "0")
        (spec_path.parent / f"{ERROR_PREFIX}{rank}.txt").write_text(
            f"{type(e).__name__}: {e}\n\n{traceback.format_exc()}"
        )
        raise


def _train(spec_path: Path) -> int:
    from strop.memory.records import ExampleRecord, ModelVersionRecord, Role
    from strop.training.common import is_main_process
    from strop.training.tracking import TrainHooks
    from strop.training.trainers import TrainRequest, get_trainer

    folder = spec_path.parent
    spec = json.loads(spec_path.read_text())
    kind = get_trainer(spec["kind"])
    settings = kind.parse_settings(spec["settings"])
    with (folder / spec["examples"]).open() as f:
        examples = [ExampleRecord.model_validate_json(line) for line in f if line.strip()]
    dataset = kind.build_dataset(examples, settings) if kind.build_dataset and examples else None
    h = spec["hooks"] or {}
    # One progress bar, rank 0's (every rank takes the same steps); no hooks means the one-process default.
    hooks = TrainHooks(
        progress=h.get("progress", True) and os.environ.get("RANK", "0") == "0",
        label=h.get("label", f"{kind.name} (accelerate)"),
        metrics=h.get("metrics", {}),
    )
    outcome = kind.train(
        TrainRequest(
            parent=ModelVersionRecord.model_validate(spec["parent"]),
            settings=settings,
            output_dir=Path(spec["output_dir"]),
            dataset=dataset,
            examples=examples,
            store=None,
            job_id=spec["job_id"],
            role=Role(spec["role"]),
            hooks=hooks,
        )
    )
    outcome.metrics["processes"] = int(os.environ.get("WORLD_SIZE", "1"))  # the data-parallel width it ran at
    if is_main_process():
        tmp = folder / (spec["outcome"] + ".tmp")
        tmp.write_text(outcome.model_dump_json())
        # Whole or absent: the launcher reads it only after every rank exited.
        tmp.replace(folder / spec["outcome"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
