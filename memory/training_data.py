"""Training jobs and exactly-once consumption of training examples.

A job claims the examples its consumer (e.g. "policy:sft") never consumed and nobody currently holds. The
claim is a row in `consumption` keyed by (consumer, example_id): it becomes "consumed" when the job
succeeds and is deleted when the job fails, so the examples go back to the pool. On PostgreSQL the claim
query locks the example rows it picks (FOR UPDATE SKIP LOCKED), so concurrent jobs on many hosts take
disjoint sets without waiting for each other; on SQLite the claim runs under BEGIN IMMEDIATE, the single
writer lock. In both, the primary key is the final guard against a double claim.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, func, or_, select, update

from strop.memory.core import StoreCore, chunks, example_from_row, job_from_row
from strop.memory.errors import InvalidTransitionError, NotFoundError
from strop.memory.records import (
    JOB_TRANSITIONS,
    ExampleKind,
    ExampleRecord,
    JobStatus,
    Role,
    TrainingJobRecord,
    utcnow,
)
from strop.memory.schema import Consumption, Episode, Example, TrainingJob

CLAIMED = "claimed"
CONSUMED = "consumed"


def default_consumer(role: Role | str, algorithm: str) -> str:
    return f"{Role(role)}:{algorithm}"


class TrainingDataMixin(StoreCore):
    def start_job(self, job: TrainingJobRecord) -> TrainingJobRecord:
        """Record a training job (idempotent by id); return what the store holds."""
        with self._write() as conn:
            stmt = self._insert(TrainingJob.__table__).values(
                id=job.id,
                algorithm=job.algorithm,
                role=str(job.role),
                model_in=job.model_in,
                model_out=job.model_out,
                status=str(job.status),
                metrics=job.metrics,
                error=job.error,
                created_at=job.created_at,
                finished_at=job.finished_at,
            )
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))
            return job_from_row(self._job_row(conn, job.id))

    def get_job(self, job_id: str) -> TrainingJobRecord | None:
        with self._read() as conn:
            row = conn.execute(select(TrainingJob).where(TrainingJob.id == job_id)).one_or_none()
        return None if row is None else job_from_row(row)

    def list_jobs(
        self, status: JobStatus | str | None = None, limit: int | None = None
    ) -> list[TrainingJobRecord]:
        q = select(TrainingJob).order_by(TrainingJob.created_at.desc(), TrainingJob.id)
        if status is not None:
            q = q.where(TrainingJob.status == str(JobStatus(status)))
        with self._read() as conn:
            return [job_from_row(r) for r in conn.execute(q.limit(limit))]

    def _job_row(self, conn: Connection, job_id: str, *, lock: bool = False) -> Any:
        q = select(TrainingJob).where(TrainingJob.id == job_id)
        if lock and not self.is_sqlite:
            q = q.with_for_update()
        row = conn.execute(q).one_or_none()
        if row is None:
            raise NotFoundError(
                f"training job {job_id!r} is not in the store; record it with start_job first"
            )
        return row

    def _check_transition(self, row: Any, to: JobStatus) -> None:
        if to not in JOB_TRANSITIONS[JobStatus(row.status)]:
            raise InvalidTransitionError(
                f"training job {row.id} is {row.status}; it cannot become {to}. Only a running job can "
                "finish or fail: start a new job (start_job) to train again."
            )

    def claim_examples(
        self,
        job_id: str,
        *,
        role: Role | str,
        kind: ExampleKind | str,
        consumer: str | None = None,
        limit: int | None = None,
        run_ids: Sequence[str] | None = None,
    ) -> list[ExampleRecord]:
        """Claim up to `limit` examples (oldest first) that `consumer` never consumed and no running job
        holds. They stay held until finish_job (consumed) or fail_job (released).

        `run_ids` limits the claim to examples emitted by episodes of those runs (a recipe stage trains on
        what its own runs produced); None takes any run's."""
        role, kind = Role(role), ExampleKind(kind)
        with self._write() as conn:
            job = self._job_row(conn, job_id)
            if job.status != JobStatus.RUNNING:
                raise InvalidTransitionError(
                    f"training job {job_id} is {job.status}: only a running job can claim examples"
                )
            consumer = consumer or default_consumer(role, job.algorithm)
            taken = select(Consumption.example_id).where(
                or_(Consumption.consumer == consumer, Consumption.state == CLAIMED)
            )
            q = (
                select(Example.id)
                .where(Example.role == str(role), Example.kind == str(kind), Example.id.not_in(taken))
                .order_by(Example.created_at, Example.id)
                .limit(limit)
            )
            if run_ids is not None:
                q = q.where(
                    Example.episode_id.in_(select(Episode.id).where(Episode.run_id.in_(list(run_ids))))
                )
            if not self.is_sqlite:
                q = q.with_for_update(skip_locked=True)
            ids = list(conn.scalars(q))
            now = utcnow()
            for part in chunks(ids, 2000):
                rows = [
                    {
                        "consumer": consumer,
                        "example_id": i,
                        "job_id": job_id,
                        "state": CLAIMED,
                        "claimed_at": now,
                    }
                    for i in part
                ]
                # A row another job committed after our snapshot is skipped here, not raised: the primary
                # key decides who got it.
                conn.execute(self._insert(Consumption.__table__).on_conflict_do_nothing(), rows)
            got: list[ExampleRecord] = []
            for part in chunks(ids):
                q = (
                    select(Example)
                    .join(Consumption, Consumption.example_id == Example.id)
                    .where(
                        Consumption.job_id == job_id, Consumption.consumer == consumer, Example.id.in_(part)
                    )
                    .order_by(Example.created_at, Example.id)
                )
                got.extend(example_from_row(r) for r in conn.execute(q))
        return got

    def finish_job(
        self, job_id: str, *, model_out: str | None = None, metrics: dict[str, Any] | None = None
    ) -> TrainingJobRecord:
        """The job succeeded: its claimed examples become consumed (never handed to its consumer again)."""
        with self._write() as conn:
            row = self._job_row(conn, job_id, lock=True)
            self._check_transition(row, JobStatus.SUCCEEDED)
            now = utcnow()
            conn.execute(
                update(Consumption)
                .where(Consumption.job_id == job_id, Consumption.state == CLAIMED)
                .values(state=CONSUMED, consumed_at=now)
            )
            conn.execute(
                update(TrainingJob)
                .where(TrainingJob.id == job_id)
                .values(
                    status=str(JobStatus.SUCCEEDED),
                    model_out=model_out if model_out is not None else row.model_out,
                    metrics={**row.metrics, **(metrics or {})},
                    finished_at=now,
                )
            )
            return job_from_row(self._job_row(conn, job_id))

    def fail_job(self, job_id: str, error: str) -> TrainingJobRecord:
        """The job failed: release its claims so the next job can take the same examples."""
        with self._write() as conn:
            row = self._job_row(conn, job_id, lock=True)
            self._check_transition(row, JobStatus.FAILED)
            conn.execute(
                delete(Consumption).where(Consumption.job_id == job_id, Consumption.state == CLAIMED)
            )
            conn.execute(
                update(TrainingJob)
                .where(TrainingJob.id == job_id)
                .values(status=str(JobStatus.FAILED), error=error, finished_at=utcnow())
            )
            return job_from_row(self._job_row(conn, job_id))

    def release_stale_jobs(self, older_than_s: float) -> list[str]:
        """Fail running jobs started more than `older_than_s` ago (their process died without finishing or
        failing), releasing what they claimed. Returns their ids."""
        cutoff = utcnow().timestamp() - older_than_s
        stale = [j.id for j in self.list_jobs(JobStatus.RUNNING) if j.created_at.timestamp() < cutoff]
        for job_id in stale:
            self.fail_job(
                job_id, f"abandoned: still running after {older_than_s:g} s (released by release_stale_jobs)"
            )
        return stale

    def count_examples(
        self,
        role: Role | str | None = None,
        kind: ExampleKind | str | None = None,
        *,
        unconsumed_by: str | None = None,
        run_ids: Sequence[str] | None = None,
    ) -> int:
        """How many examples exist (of a role/kind, from `run_ids`), or how many `unconsumed_by` could still
        claim."""
        q = select(func.count()).select_from(Example)
        if run_ids is not None:
            q = q.where(Example.episode_id.in_(select(Episode.id).where(Episode.run_id.in_(list(run_ids)))))
        if role is not None:
            q = q.where(Example.role == str(Role(role)))
        if kind is not None:
            q = q.where(Example.kind == str(ExampleKind(kind)))
        if unconsumed_by is not None:
            taken = select(Consumption.example_id).where(
                or_(Consumption.consumer == unconsumed_by, Consumption.state == CLAIMED)
            )
            q = q.where(Example.id.not_in(taken))
        with self._read() as conn:
            return int(conn.scalar(q) or 0)

    def example_counts(self, run_ids: Sequence[str]) -> dict[tuple[str, str, str], int]:
        """How many examples the episodes of each run emitted, by (run id, kind, role), in one grouped query
        per chunk of runs: what a report's data-counts panel shows. Pairs that have none are left out."""
        out: dict[tuple[str, str, str], int] = {}
        with self._read() as conn:
            for part in chunks(list(dict.fromkeys(run_ids))):
                q = (
                    select(Episode.run_id, Example.kind, Example.role, func.count())
                    .join(Episode, Episode.id == Example.episode_id)
                    .where(Episode.run_id.in_(part))
                    .group_by(Episode.run_id, Example.kind, Example.role)
                )
                for run_id, kind, role, n in conn.execute(q):
                    out[(run_id, kind, role)] = int(n)
        return out

    # --- async twins ---------------------------------------------------------------------------------------

    async def astart_job(self, job: TrainingJobRecord) -> TrainingJobRecord:
        return await asyncio.to_thread(self.start_job, job)

    async def aget_job(self, job_id: str) -> TrainingJobRecord | None:
        return await asyncio.to_thread(self.get_job, job_id)

    async def alist_jobs(
        self, status: JobStatus | str | None = None, limit: int | None = None
    ) -> list[TrainingJobRecord]:
        return await asyncio.to_thread(self.list_jobs, status, limit)

    async def aclaim_examples(
        self,
        job_id: str,
        *,
        role: Role | str,
        kind: ExampleKind | str,
        consumer: str | None = None,
        limit: int | None = None,
        run_ids: Sequence[str] | None = None,
    ) -> list[ExampleRecord]:
        return await asyncio.to_thread(
            lambda: self.claim_examples(
                job_id, role=role, kind=kind, consumer=consumer, limit=limit, run_ids=run_ids
            )
        )

    async def afinish_job(
        self, job_id: str, *, model_out: str | None = None, metrics: dict[str, Any] | None = None
    ) -> TrainingJobRecord:
        return await asyncio.to_thread(lambda: self.finish_job(job_id, model_out=model_out, metrics=metrics))

    async def afail_job(self, job_id: str, error: str) -> TrainingJobRecord:
        return await asyncio.to_thread(self.fail_job, job_id, error)

    async def arelease_stale_jobs(self, older_than_s: float) -> list[str]:
        return await asyncio.to_thread(self.release_stale_jobs, older_than_s)

    async def aexample_counts(self, run_ids: Sequence[str]) -> dict[tuple[str, str, str], int]:
        return await asyncio.to_thread(self.example_counts, run_ids)

    async def acount_examples(
        self,
        role: Role | str | None = None,
        kind: ExampleKind | str | None = None,
        *,
        unconsumed_by: str | None = None,
        run_ids: Sequence[str] | None = None,
    ) -> int:
        return await asyncio.to_thread(
            lambda: self.count_examples(role, kind, unconsumed_by=unconsumed_by, run_ids=run_ids)
        )
