"""Training jobs end to end: claim examples, train with a trainer kind, register the candidate with its lineage.

The order is what keeps the store consistent if the process dies anywhere: claims are held by a running job
(released by `fail_job`), the candidate is registered before the job is finished, and `finish_job` is what
marks the examples consumed. A crash before `finish_job` therefore leaves examples claimable again, never
consumed by a model that does not exist.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from strop.memory.records import (
    ExampleKind,
    JobStatus,
    ModelStatus,
    ModelVersionRecord,
    Role,
    TrainingJobRecord,
)
from strop.training.builders import claim
from strop.training.launch import LaunchSettings, check_launchable, run_launched
from strop.training.tracking import TrainHooks
from strop.training.trainers import TrainRequest, get_trainer


class NothingToTrainError(RuntimeError):
    """No unconsumed examples: nothing to train on."""


class TrainResult(BaseModel):
    job: TrainingJobRecord
    candidate: ModelVersionRecord
    train_loss: float
    examples: int
    seconds: float


def train_candidate(
    store: Any,
    parent: ModelVersionRecord,
    *,
    kind: str = "sft",
    settings: Any = None,
    output_dir: str | Path,
    role: Role | str = Role.POLICY,
    example_kinds: Sequence[ExampleKind] | None = None,
    name: str | None = None,
    job_id: str | None = None,
    model_id: str | None = None,
    consumer: str | None = None,
    limit: int | None = None,
    run_ids: Sequence[str] | None = None,
    context: dict[str, Any] | None = None,
    hooks: TrainHooks | None = None,
    launch: LaunchSettings | None = None,
) -> TrainResult:
    """Train `parent` with trainer `kind` on examples it has not consumed and register a candidate version.

    `example_kinds` defaults to what the kind consumes; `run_ids` limits the examples to those runs' output;
    `hooks` the progress bar and strop's metrics for the trackers. The job keeps TRL's logged figures per
    step (`log_history`: loss, reward...) for reports; the candidate keeps the summary figures only.

    `launch` with launcher 'accelerate' runs the TRL job under `accelerate launch` (training.launch); this
    process still claims, registers and finishes the job, so the bookkeeping is the same as in one process and
    a failed launch releases the claim like any failed job.
    """
    trainer = get_trainer(kind)
    cfg = trainer.parse_settings(settings)
    role = Role(role)
    launch = launch.launch_only() if launch is not None else LaunchSettings()
    check_launchable(trainer, launch, hooks)  # before the job claims anything
    kinds = list(example_kinds) if example_kinds is not None else list(trainer.example_kinds)
    job = store.start_job(
        TrainingJobRecord(
            **({"id": job_id} if job_id else {}),
            algorithm=trainer.name,
            role=role,
            model_in=parent.id,
            metrics={"settings": cfg.model_dump(mode="json")},
        )
    )
    try:
        examples = (
            claim(
                store,
                job.id,
                kinds=kinds,
                role=role,
                consumer=consumer,
                limit=limit or getattr(cfg, "max_examples", None),
                run_ids=run_ids,
            )
            if kinds
            else []
        )
        if kinds and not examples:
            raise NothingToTrainError(
                f"nothing to train: no unconsumed {'/'.join(map(str, kinds))} examples of role {role} for "
                f"{parent.name}; collect some first (e.g. `strop run best-of-n`: only correct answers become "
                "SFT examples)"
            )
        out = Path(output_dir)
        if out.exists():  # left by a job that died mid-save; its claims were released, so start clean
            shutil.rmtree(out)
        # Built here under accelerate too, where the launched processes build their own: a malformed example
        # then fails the job with its own message, not inside a launch log.
        dataset = trainer.build_dataset(examples, cfg) if trainer.build_dataset and examples else None
        if launch.distributed:
            outcome = run_launched(
                trainer,
                settings=cfg,
                parent=parent,
                examples=examples,
                output_dir=out,
                role=role,
                job_id=job.id,
                hooks=hooks,
                launch=launch,
            )
        else:
            outcome = trainer.train(
                TrainRequest(
                    parent=parent,
                    settings=cfg,
                    output_dir=out,
                    dataset=dataset,
                    examples=examples,
                    store=store,
                    job_id=job.id,
                    role=role,
                    context=context or {},
                    hooks=hooks,
                )
            )
    except BaseException as e:
        store.fail_job(job.id, f"{type(e).__name__}: {e}")
        raise
    metrics = {
        "train_loss": outcome.train_loss,
        "examples": outcome.examples,
        "steps": outcome.steps,
        "train_seconds": outcome.seconds,
        **outcome.metrics,
    }
    candidate = store.register_model(
        ModelVersionRecord(
            **({"id": model_id} if model_id else {}),
            name=name or f"{parent.lineage}-{trainer.name}-{job.id[:8]}",
            lineage=parent.lineage,
            path=outcome.path,
            adapter_path=outcome.adapter_path,
            parent_id=parent.id,
            status=ModelStatus.CANDIDATE,
            job_id=job.id,
            metrics=metrics,
        )
    )
    store.finish_job(job.id, model_out=candidate.id, metrics={**metrics, "log_history": outcome.log_history})
    return TrainResult(
        job=store.get_job(job.id),
        candidate=candidate,
        train_loss=outcome.train_loss,
        examples=outcome.examples,
        seconds=outcome.seconds,
    )


def train_sft_candidate(store: Any, parent: ModelVersionRecord, **kwargs: Any) -> TrainResult:
    """`train_candidate` with the `sft` kind (SFT examples of the policy)."""
    return train_candidate(store, parent, kind="sft", **kwargs)


def settle_orphan_job(store: Any, job_id: str, model_id: str) -> bool:
    """A job left running by a killed process: finish it if its model was registered, else release its claims.

    Returns True when the job is (now) succeeded with that model.
    """
    job = store.get_job(job_id)
    if job is None:
        return False
    if job.status == JobStatus.SUCCEEDED:
        return True
    if job.status == JobStatus.RUNNING:
        model = store.get_model(model_id)
        if model is not None and model.job_id == job_id:
            store.finish_job(job_id, model_out=model_id, metrics=model.metrics)
            return True
        store.fail_job(job_id, "interrupted: the process died before the model was registered")
    return False
