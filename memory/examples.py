"""Training examples, and the training jobs that claim them exactly once per consumer.

Examples arrive with their episode (episodes.py) or later (`add_examples`: pairs a builder derives from
stored answers); `list_examples` reads them whatever their state.

A job claims the examples its consumer (e.g. "policy:sft") never consumed and nobody currently holds. The
claim is a row in `consumption` keyed by (consumer, example_id): it becomes "consumed" when the job
succeeds and is deleted when the job fails, so the examples go back to the pool. On PostgreSQL the claim
query locks the example rows it picks (FOR UPDATE SKIP LOCKED), so concurrent jobs on many hosts take
disjoint sets without waiting for each other; on SQLite the claim runs under BEGIN IMMEDIATE, the single
writer lock. In both, the primary key is the final guard against a double claim.

A running job holds a lease (job_leases.py); one whose lease lapsed, or whose process died on this machine,
is settled by the next claim of any process, so a killed job's examples return to the pool. Finishing or
failing a job drops its lease; given the `holder`, a claim, finish or fail is refused (LeaseLostError) once
that holder has lost the job's lease to a rerun or a release.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, or_, select, update

from strop.memory import job_leases
from strop.memory.core import Part, chunks, threaded
from strop.memory.episodes import HELDOUT
from strop.memory.errors import HeldoutLeakError, InvalidTransitionError, NotFoundError
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


class Examples(Part):
    def list_examples(
        self,
        role: Role | str | None = None,
        kind: ExampleKind | str | None = None,
        limit: int | None = None,
        *,
        run_id: str | None = None,
    ) -> list[ExampleRecord]:
        """Examples oldest first, whether consumed or not (training jobs use claim_examples instead)."""
        q = select(Example).order_by(Example.created_at, Example.id)
        if run_id is not None:
            q = q.join(Episode, Episode.id == Example.episode_id).where(Episode.run_id == run_id)
        if role is not None:
            q = q.where(Example.role == str(Role(role)))
        if kind is not None:
            q = q.where(Example.kind == str(ExampleKind(kind)))
        with self.db.read() as conn:
            return [ExampleRecord.model_validate(r) for r in conn.execute(q.limit(limit))]

    def add_examples(self, episode_id: str, examples: Sequence[ExampleRecord]) -> int:
        """Add training examples to an episode already stored (e.g. DPO pairs derived later from its answers).

        Idempotent by example id, like episode writes: an example whose id is stored is skipped, so a builder
        can run again over the same episodes. New examples join the pool that `claim_examples` hands out, each
        once per consumer. Held-out examples are refused. Returns how many were new."""
        leaked = [x.id for x in examples if str(x.split) == HELDOUT]
        if leaked:
            raise HeldoutLeakError(
                f"{len(leaked)} example(s) for episode {episode_id} come from a held-out task: held-out tasks are "
                "for evaluation only"
            )
        if not examples:
            return 0
        unique = list({x.id: x for x in reversed(examples)}.values())[::-1]
        with self.db.write() as conn:
            task_id = conn.scalar(select(Episode.task_id).where(Episode.id == episode_id))
            if task_id is None:
                raise NotFoundError(
                    f"episode {episode_id!r} is not in the store; write it with write_episode first"
                )
            now = utcnow()
            added = 0
            for part in chunks(unique, 1000):
                rows = [
                    {
                        "id": x.id,
                        "kind": str(x.kind),
                        "role": str(x.role),
                        "payload": x.payload,
                        "episode_id": episode_id,
                        "task_id": x.task_id if x.task_id is not None else task_id,
                        "split": str(x.split),
                        "created_at": now + timedelta(microseconds=added + i),
                    }
                    for i, x in enumerate(part)
                ]
                stmt = self.db.insert(Example.__table__).on_conflict_do_nothing(index_elements=["id"])
                added += len(conn.execute(stmt.returning(Example.__table__.c.id), rows).all())
        return added

    # --- training jobs and claims ----------------------------------------------------------------------------

    def start_job(self, job: TrainingJobRecord) -> TrainingJobRecord:
        """Record a training job (idempotent by id); return what the store holds."""
        with self.db.write() as conn:
            stmt = self.db.insert(TrainingJob.__table__).values(
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
            return TrainingJobRecord.model_validate(self._job_row(conn, job.id))

    def get_job(self, job_id: str) -> TrainingJobRecord | None:
        with self.db.read() as conn:
            row = conn.execute(select(TrainingJob).where(TrainingJob.id == job_id)).one_or_none()
        return None if row is None else TrainingJobRecord.model_validate(row)

    def list_jobs(
        self, status: JobStatus | str | None = None, limit: int | None = None
    ) -> list[TrainingJobRecord]:
        q = select(TrainingJob).order_by(TrainingJob.created_at.desc(), TrainingJob.id)
        if status is not None:
            q = q.where(TrainingJob.status == str(JobStatus(status)))
        with self.db.read() as conn:
            return [TrainingJobRecord.model_validate(r) for r in conn.execute(q.limit(limit))]

    def _job_row(self, conn: Connection, job_id: str, *, lock: bool = False) -> Any:
        q = select(TrainingJob).where(TrainingJob.id == job_id)
        if lock and not self.db.is_sqlite:
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
        holder: str | None = None,
    ) -> list[ExampleRecord]:
        """Claim up to `limit` examples (oldest first) that `consumer` never consumed and no running job
        holds. They stay held until finish_job (consumed) or fail_job (released).

        `run_ids` limits the claim to examples emitted by episodes of those runs (a recipe stage trains on
        what its own runs produced); None takes any run's. `holder`: the job's lease holder, checked.
        Abandoned jobs (lease lapsed, holder dead) are settled first, so what they held is claimable."""
        role, kind = Role(role), ExampleKind(kind)
        self.release_abandoned_jobs()
        with self.db.write() as conn:
            # With a holder, lock the job row before the lease row, the order a release takes them in.
            job = self._job_row(conn, job_id, lock=holder is not None)
            self._check_holder(conn, job_id, holder)
            if job.status != JobStatus.RUNNING:
                raise InvalidTransitionError(
                    f"training job {job_id} is {job.status}: only a running job can claim examples"
                )
            consumer = consumer or default_consumer(role, job.algorithm)
            got: list[ExampleRecord] = []
            # On PostgreSQL a job that commits while our SELECT runs leaves its rows unlocked but, to our
            # statement's snapshot, unclaimed: we pick them and the inserts below conflict. A fresh statement
            # sees its claims, so select again for what is still wanted until a pass loses nothing.
            while True:
                ids = self._claimable(
                    conn, role, kind, consumer, run_ids, None if limit is None else limit - len(got)
                )
                mine = self._take(conn, job_id, consumer, ids)
                got.extend(mine)
                if len(mine) == len(ids) or (limit is not None and len(got) >= limit):
                    break
        return got

    def _claimable(
        self,
        conn: Connection,
        role: Role,
        kind: ExampleKind,
        consumer: str,
        run_ids: Sequence[str] | None,
        limit: int | None,
    ) -> list[str]:
        """Ids (oldest first) that `consumer` never consumed and no running job holds, locked where the
        database can (SKIP LOCKED: two claimers never wait on each other)."""
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
            q = q.where(Example.episode_id.in_(select(Episode.id).where(Episode.run_id.in_(list(run_ids)))))
        if not self.db.is_sqlite:
            q = q.with_for_update(skip_locked=True)
        return list(conn.scalars(q))

    def _take(self, conn: Connection, job_id: str, consumer: str, ids: list[str]) -> list[ExampleRecord]:
        """Claim `ids` for the job; those another job committed first are skipped, not raised (the primary
        key decides who got each). Returns the examples this job now holds."""
        now = utcnow()
        for part in chunks(ids, 2000):
            rows = [
                {"consumer": consumer, "example_id": i, "job_id": job_id, "state": CLAIMED, "claimed_at": now}
                for i in part
            ]
            conn.execute(self.db.insert(Consumption.__table__).on_conflict_do_nothing(), rows)
        got: list[ExampleRecord] = []
        for part in chunks(ids):
            q = (
                select(Example)
                .join(Consumption, Consumption.example_id == Example.id)
                .where(Consumption.job_id == job_id, Consumption.consumer == consumer, Example.id.in_(part))
                .order_by(Example.created_at, Example.id)
            )
            got.extend(ExampleRecord.model_validate(r) for r in conn.execute(q))
        return got

    def finish_job(
        self,
        job_id: str,
        *,
        model_out: str | None = None,
        metrics: dict[str, Any] | None = None,
        holder: str | None = None,
    ) -> TrainingJobRecord:
        """The job succeeded: its claimed examples become consumed (never handed to its consumer again)."""
        with self.db.write() as conn:
            row = self._job_row(conn, job_id, lock=True)
            self._check_transition(row, JobStatus.SUCCEEDED)
            self._check_holder(conn, job_id, holder)
            job_leases.drop_job_lease(conn, job_id)
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
            return TrainingJobRecord.model_validate(self._job_row(conn, job_id))

    def fail_job(self, job_id: str, error: str, *, holder: str | None = None) -> TrainingJobRecord:
        """The job failed: release its claims so the next job can take the same examples."""
        with self.db.write() as conn:
            row = self._job_row(conn, job_id, lock=True)
            self._check_transition(row, JobStatus.FAILED)
            self._check_holder(conn, job_id, holder)
            job_leases.drop_job_lease(conn, job_id)
            conn.execute(
                delete(Consumption).where(Consumption.job_id == job_id, Consumption.state == CLAIMED)
            )
            conn.execute(
                update(TrainingJob)
                .where(TrainingJob.id == job_id)
                .values(status=str(JobStatus.FAILED), error=error, finished_at=utcnow())
            )
            return TrainingJobRecord.model_validate(self._job_row(conn, job_id))

    # Job leases (job_leases.py): bound here so they are this part's methods, and the Store's.
    release_abandoned_jobs = job_leases.release_abandoned_jobs
    release_stale_jobs = job_leases.release_stale_jobs
    job_claims = job_leases.job_claims
    job_lease_report = job_leases.job_lease_report
    _check_holder = job_leases.check_job_holder

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
        with self.db.read() as conn:
            return int(conn.scalar(q) or 0)

    def example_counts(self, run_ids: Sequence[str]) -> dict[tuple[str, str, str], int]:
        """How many examples the episodes of each run emitted, by (run id, kind, role), in one grouped query
        per chunk of runs: what a report's data-counts panel shows. Pairs that have none are left out."""
        out: dict[tuple[str, str, str], int] = {}
        with self.db.read() as conn:
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

    alist_examples = threaded(list_examples)
    aadd_examples = threaded(add_examples)
    astart_job = threaded(start_job)
    aget_job = threaded(get_job)
    alist_jobs = threaded(list_jobs)
    aclaim_examples = threaded(claim_examples)
    afinish_job = threaded(finish_job)
    afail_job = threaded(fail_job)
    arelease_stale_jobs = threaded(release_stale_jobs)
    arelease_abandoned_jobs = threaded(release_abandoned_jobs)
    ajob_claims = threaded(job_claims)
    aexample_counts = threaded(example_counts)
    acount_examples = threaded(count_examples)
