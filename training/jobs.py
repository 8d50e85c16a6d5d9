"""Training jobs end to end: claim examples, train with a trainer kind, register the candidate with its lineage.

The order is what keeps the store consistent if the process dies anywhere: claims are held by a running job
(released by `fail_job`), the candidate is registered before the job is finished, and `finish_job` is what
marks the examples consumed. A crash before `finish_job` therefore leaves examples claimable again, never
consumed by a model that does not exist.

Each job holds a lease (memory/job_leases.py), taken before the job row is written and renewed by a heartbeat
while it trains. A killed job's lease lapses (or its process is seen dead on this machine), and then either
the next claim by any process returns its examples to the pool, or a rerun with the same job id takes the
lease over and continues the job on the examples it had claimed. `strop train` derives its job id from what
defines the job (`job_id_for`), so "kill it, run it again" continues the same job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from strop.memory.errors import InvalidTransitionError
from strop.memory.job_leases import JOB_LEASE_TTL, job_lease_name
from strop.memory.leases import LeaseHeldError, LeaseKeeper, LeaseLostError, new_holder
from strop.memory.records import (
    ExampleKind,
    JobStatus,
    ModelStatus,
    ModelVersionRecord,
    Role,
    TrainingJobRecord,
    new_id,
)
from strop.training.builders import claim
from strop.training.launch import LaunchSettings, check_launchable, run_launched
from strop.training.tracking import TrainHooks
from strop.training.trainers import TrainRequest, get_trainer

log = logging.getLogger(__name__)


class NothingToTrainError(RuntimeError):
    """No unconsumed examples: nothing to train on."""


class JobRunningError(RuntimeError):
    """The job is running in a live process (its lease is held and renewed): a second run would train twice."""


class JobFinishedError(InvalidTransitionError):
    """The job id names a job that has already succeeded or failed: a new attempt needs a new id."""


def job_id_for(store: Any, spec: dict[str, Any]) -> str:
    """The id of the job `spec` defines (kind, parent, settings, data...): the first attempt that has not
    finished. A rerun after a kill therefore finds the same, still running job and continues it; a rerun after
    it succeeded or failed gets the next attempt's id and starts afresh."""
    base = json.dumps(spec, sort_keys=True, default=str)
    attempt = 0
    while True:
        job_id = hashlib.sha256(f"{base}#{attempt}".encode()).hexdigest()[:32]
        job = store.get_job(job_id)
        if job is None or job.status == JobStatus.RUNNING:
            return job_id
        attempt += 1


def hold_job_lease(store: Any, job_id: str, ttl: float = JOB_LEASE_TTL) -> LeaseKeeper:
    """Take the job's lease (taking it over from a lapsed holder, or at once from a dead process of this
    machine) and keep it renewed; JobRunningError while a live process holds it."""
    name, holder = job_lease_name(job_id), new_holder()
    try:
        lease = store.acquire_or_take_over(name, holder, ttl)
    except LeaseHeldError as e:
        raise JobRunningError(
            f"training job {job_id} is running in {e.lease.holder} (last heartbeat "
            f"{e.lease.heartbeat_at:%H:%M:%S} UTC): wait for it to end, or stop that process and run again"
        ) from None
    return LeaseKeeper(store, lease, ttl)


def _fail(store: Any, job_id: str, error: str, holder: str) -> None:
    """Fail the job unless it is no longer ours (a rerun took it over, or a release settled it)."""
    try:
        store.fail_job(job_id, error, holder=holder)
    except (LeaseLostError, InvalidTransitionError) as e:
        log.warning("training job %s was not failed here: %s", job_id, e)


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
    lease_ttl: float = JOB_LEASE_TTL,
) -> TrainResult:
    """Train `parent` with trainer `kind` on examples it has not consumed and register a candidate version.

    `example_kinds` defaults to what the kind consumes; `run_ids` limits the examples to those runs' output;
    `hooks` the progress bar and strop's metrics for the trackers. The job keeps TRL's logged figures per
    step (`log_history`: loss, reward...) for reports; the candidate keeps the summary figures only.

    `launch` with launcher 'accelerate' runs the TRL job under `accelerate launch` (training.launch); this
    process still claims, registers and finishes the job, so the bookkeeping is the same as in one process and
    a failed launch releases the claim like any failed job.

    The job holds its lease (renewed every `lease_ttl / 3` s) from before it is recorded until it ends. A
    `job_id` that names a running job whose holder is gone continues that job: it keeps the examples the job
    had claimed (claiming more only up to `limit`), or, when the dead process had registered the model
    already, just finishes the job with it. A live holder raises JobRunningError, a finished job
    JobFinishedError.
    """
    trainer = get_trainer(kind)
    cfg = trainer.parse_settings(settings)
    role = Role(role)
    launch = launch.launch_only() if launch is not None else LaunchSettings()
    check_launchable(trainer, launch, hooks)  # before the job claims anything
    kinds = list(example_kinds) if example_kinds is not None else list(trainer.example_kinds)
    job_id = job_id or new_id()
    keeper = hold_job_lease(store, job_id, lease_ttl)  # before the job row: a recorded job always has a lease
    holder = keeper.holder
    try:
        job = store.start_job(
            TrainingJobRecord(
                id=job_id,
                algorithm=trainer.name,
                role=role,
                model_in=parent.id,
                metrics={"settings": cfg.model_dump(mode="json")},
            )
        )
        if job.status != JobStatus.RUNNING:
            raise JobFinishedError(
                f"training job {job.id} has {job.status}: give a new job id to train again"
            )
        done = _registered(store, parent, job.id)
    except BaseException:
        keeper.release()
        raise
    if done is not None:  # the killed holder registered the model before it could finish the job
        keeper.stop()
        store.finish_job(job.id, model_out=done.id, metrics=done.metrics, holder=holder)
        return _result(store, job.id, done)
    try:
        examples = store.job_claims(job.id)  # a job taken over keeps what it had claimed
        want = limit or getattr(cfg, "max_examples", None)
        left = None if want is None else want - len(examples)
        if kinds and (left is None or left > 0):
            examples += claim(
                store,
                job.id,
                kinds=kinds,
                role=role,
                consumer=consumer,
                limit=left,
                run_ids=run_ids,
                holder=holder,
            )
        if kinds and not examples:
            raise NothingToTrainError(
                f"nothing to train: no unconsumed {'/'.join(map(str, kinds))} examples of role {role} for "
                f"{parent.name}; collect some first (e.g. `strop run best-of-n`: only correct answers become "
                "SFT examples)"
            )
        # By id, not claim order (write time): concurrent collectors write in a different order each run, and
        # TRL's seeded shuffle of a reordered dataset trains a different model from the same examples.
        examples = sorted(examples, key=lambda x: x.id)
        out = Path(output_dir)
        if out.exists():  # left by a killed job (this one, continued, or one whose claims were released)
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
        if keeper.lost is not None:  # stalled past the TTL: another process settled or continues this job
            raise LeaseLostError(f"{keeper.lost}; this run's training is discarded")
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
    except BaseException as e:
        keeper.stop()
        _fail(store, job.id, f"{type(e).__name__}: {e}", holder)
        raise
    keeper.stop()  # finish_job drops the lease with the job
    try:
        store.finish_job(
            job.id,
            model_out=candidate.id,
            metrics={**metrics, "log_history": outcome.log_history},
            holder=holder,
        )
    except (LeaseLostError, InvalidTransitionError):
        # Stalled past the TTL after registering: a release that found the model finished the job with it.
        settled = store.get_job(job.id)
        if settled is None or settled.model_out != candidate.id:
            raise
    return _result(store, job.id, candidate)


def _registered(store: Any, parent: ModelVersionRecord, job_id: str) -> ModelVersionRecord | None:
    """The model a job registered, if any (only a job continued after a kill can have one yet)."""
    return next((m for m in store.list_models(lineage=parent.lineage) if m.job_id == job_id), None)


def _result(store: Any, job_id: str, candidate: ModelVersionRecord) -> TrainResult:
    m = candidate.metrics
    return TrainResult(
        job=store.get_job(job_id),
        candidate=candidate,
        train_loss=float(m.get("train_loss", 0.0)),
        examples=int(m.get("examples", 0)),
        seconds=float(m.get("train_seconds", 0.0)),
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
