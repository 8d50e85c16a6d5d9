"""Training jobs end to end: claim examples, train, register the candidate with its lineage.

The order is what keeps the store consistent if the process dies anywhere: claims are held by a running job
(released by `fail_job`), the candidate is registered before the job is finished, and `finish_job` is what
marks the examples consumed. A crash before `finish_job` therefore leaves examples claimable again, never
consumed by a model that does not exist.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from memory.records import JobStatus, ModelStatus, ModelVersionRecord, Role, TrainingJobRecord
from training.builders import claim_sft
from training.sft import SFTSettings, run_sft


class NothingToTrainError(RuntimeError):
    """No unconsumed examples: nothing to train on."""


class TrainResult(BaseModel):
    job: TrainingJobRecord
    candidate: ModelVersionRecord
    train_loss: float
    examples: int
    seconds: float


def train_sft_candidate(
    store: Any, parent: ModelVersionRecord, *, output_dir: str | Path, settings: SFTSettings | None = None,
    name: str | None = None, job_id: str | None = None, model_id: str | None = None, consumer: str | None = None,
    limit: int | None = None,
) -> TrainResult:
    """Train `parent` on the SFT examples it has not consumed and register a candidate version."""
    cfg = settings or SFTSettings()
    job = store.start_job(TrainingJobRecord(
        **({"id": job_id} if job_id else {}), algorithm="sft", role=Role.POLICY, model_in=parent.id,
        metrics={"settings": cfg.model_dump(mode="json")},
    ))
    try:
        examples, dataset = claim_sft(store, job.id, consumer=consumer, limit=limit or cfg.max_examples)
        if not examples:
            raise NothingToTrainError(
                f"nothing to train: no unconsumed SFT examples for {parent.name}; collect some first with "
                "`strop run best-of-n` (only correct answers become examples)"
            )
        out = Path(output_dir)
        if out.exists():  # left by a job that died mid-save; its claims were released, so start clean
            shutil.rmtree(out)
        outcome = run_sft(dataset, model_path=parent.path, adapter_path=parent.adapter_path, output_dir=out,
                          settings=cfg)
    except BaseException as e:
        store.fail_job(job.id, f"{type(e).__name__}: {e}")
        raise
    metrics = {"train_loss": outcome.train_loss, "examples": outcome.examples, "steps": outcome.steps,
               "train_seconds": outcome.seconds}
    candidate = store.register_model(ModelVersionRecord(
        **({"id": model_id} if model_id else {}),
        name=name or f"{parent.lineage}-sft-{job.id[:8]}", lineage=parent.lineage, path=outcome.path,
        adapter_path=outcome.adapter_path, parent_id=parent.id, status=ModelStatus.CANDIDATE, job_id=job.id,
        metrics=metrics,
    ))
    store.finish_job(job.id, model_out=candidate.id, metrics=metrics)
    return TrainResult(job=store.get_job(job.id), candidate=candidate, train_loss=outcome.train_loss,
                       examples=outcome.examples, seconds=outcome.seconds)


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
