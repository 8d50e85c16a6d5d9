"""Leases of training jobs: a job that stops heartbeating gives its claimed examples back to the pool.

Why: a job claims its examples when it starts and holds them until it finishes or fails. A process killed in
between (SIGKILL, OOM killer, a lost node) does neither, so without a lease its examples stayed claimed, and
never trained, for good. Each running job now holds the lease `train-job:<job id>` (leases.py), taken *before*
the job row is written and renewed by a heartbeat while it trains (training/jobs.py). A job whose lease has
lapsed, or whose holder is a dead process of this machine, is abandoned: the next claim, by any process,
settles it (`release_abandoned_jobs`). Settling fails the job and deletes its claims, or, when the killed
process had already registered the job's model (it died between registering and finishing), finishes it
with that model so its examples are never trained twice.

A running job with no lease row was started by a strop without job leases; it is released only once it is
older than `LEASELESS_STALE_S`, as `release_stale_jobs` always did by hand.

Every release re-checks its verdict in the write transaction that settles the job (the job row and the lease
row locked on PostgreSQL, the single writer on SQLite): a holder that renewed, or a rerun that took the lease
over in the meantime, keeps its job.

These are functions of the examples part (examples.py binds them as its methods), kept here so the part's
module stays readable.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel
from sqlalchemy import Connection, delete, func, select, update

from strop.memory.core import chunks
from strop.memory.leases import LeaseLostError, LeaseRecord, holder_is_dead
from strop.memory.records import ExampleRecord, JobStatus, UTCDateTime, as_utc, utcnow
from strop.memory.schema import Consumption, Example, Lease, ModelVersion, TrainingJob

if TYPE_CHECKING:
    from strop.memory.examples import Examples

JOB_LEASE_PREFIX = "train-job:"
JOB_LEASE_TTL = 60.0  # seconds; the heartbeat renews it every TTL / 3
LEASELESS_STALE_S = 24 * 3600.0  # a running job without a lease (older strop) is released after this long

Verdict = Literal["lapsed", "dead", "no lease", "stale"]
LeaseState = Literal["live", "lapsed", "dead", "no lease"]


def job_lease_name(job_id: str) -> str:
    return f"{JOB_LEASE_PREFIX}{job_id}"


class AbandonedJob(BaseModel):
    """One job a release settled: why, whose it was, and what became of its claims."""

    job_id: str
    reason: Verdict
    holder: str | None = None
    heartbeat_at: UTCDateTime | None = None
    released_claims: int = 0  # back in the pool
    model_out: str | None = None  # set when the job's model was registered: the job finished instead


class RunningJob(BaseModel):
    """A running job as `strop db stats` shows it: its lease's state and the claims it holds."""

    job_id: str
    algorithm: str
    created_at: UTCDateTime
    lease: LeaseState
    holder: str | None = None
    heartbeat_at: UTCDateTime | None = None
    claims: int = 0


class JobLeaseReport(BaseModel):
    running: list[RunningJob]
    stuck_claims: (
        int  # held by abandoned running jobs (lease lapsed, holder dead): the next claim returns them
    )
    released_jobs: int  # jobs settled as abandoned so far
    released_claims: int  # the claims those releases returned to the pool


def _fmt(t: datetime | None) -> str:
    return "never" if t is None else t.strftime("%Y-%m-%d %H:%M:%S UTC")


def _verdict(
    created_at: datetime,
    lease: LeaseRecord | None,
    now: datetime,
    is_dead: Callable[[str], bool],
    leaseless_after_s: float,
) -> Verdict | None:
    """Why a running job is abandoned, or None while it is (or may still be) alive."""
    if lease is None:
        return "no lease" if as_utc(created_at) < now - timedelta(seconds=leaseless_after_s) else None
    if lease.expires_at < now:
        return "lapsed"
    return "dead" if is_dead(lease.holder) else None


def _leases(conn: Connection, job_ids: list[str]) -> dict[str, LeaseRecord]:
    out: dict[str, LeaseRecord] = {}
    for part in chunks([job_lease_name(j) for j in job_ids]):
        for row in conn.execute(select(Lease).where(Lease.name.in_(part))):
            out[row.name.removeprefix(JOB_LEASE_PREFIX)] = LeaseRecord.model_validate(row)
    return out


def release_abandoned_jobs(
    self: Examples,
    *,
    leaseless_after_s: float = LEASELESS_STALE_S,
    is_dead: Callable[[str], bool] = holder_is_dead,
) -> list[AbandonedJob]:
    """Settle every running job whose lease lapsed or whose holder is a dead process of this machine (and
    lease-less ones older than `leaseless_after_s`): its claims go back to the pool, or, if its model was
    registered, it finishes with that model. `claim_examples` calls this first, so any process's next claim
    frees what a killed job held. Returns what was settled."""
    with self.db.read() as conn:
        now = self.db.clock(conn)
        jobs = conn.execute(
            select(TrainingJob.id, TrainingJob.created_at).where(TrainingJob.status == str(JobStatus.RUNNING))
        ).all()
        leases = _leases(conn, [j.id for j in jobs]) if jobs else {}
        # A lapsed job lease without a running job: its holder died before recording the job.
        strays = set(
            conn.scalars(
                select(Lease.name).where(Lease.name.startswith(JOB_LEASE_PREFIX), Lease.expires_at < now)
            )
        ) - {job_lease_name(j.id) for j in jobs}
    if strays:
        with self.db.write() as conn:
            for part in chunks(sorted(strays)):
                conn.execute(
                    delete(Lease).where(Lease.name.in_(part), Lease.expires_at < self.db.clock(conn))
                )
    out = []
    for job_id, created_at in jobs:
        lease = leases.get(job_id)
        verdict = _verdict(created_at, lease, now, is_dead, leaseless_after_s)
        if verdict is not None:
            why = {
                "lapsed": f"its lease lapsed (holder {lease and lease.holder}, last heartbeat "
                f"{_fmt(lease and lease.heartbeat_at)})",
                "dead": f"its process is gone (holder {lease and lease.holder} on this machine, last "
                f"heartbeat {_fmt(lease and lease.heartbeat_at)})",
                "no lease": f"no lease and still running after {leaseless_after_s:g} s (started by a strop "
                "without job leases)",
            }[verdict]
            got = _abandon(self, job_id, verdict, lease, why)
            if got is not None:
                out.append(got)
    return out


def release_stale_jobs(self: Examples, older_than_s: float) -> list[str]:
    """Fail running jobs started more than `older_than_s` ago, lease or not (their process died without
    finishing or failing), releasing what they claimed. Returns their ids. `release_abandoned_jobs` is the
    automatic path; this one is for an operator who knows those jobs are gone."""
    cutoff = utcnow().timestamp() - older_than_s
    stale = [j.id for j in self.list_jobs(JobStatus.RUNNING) if j.created_at.timestamp() < cutoff]
    why = f"still running after {older_than_s:g} s (released by release_stale_jobs)"
    return [j for j in stale if _abandon(self, j, "stale", None, why) is not None]


def _abandon(
    self: Examples, job_id: str, verdict: Verdict, seen: LeaseRecord | None, why: str
) -> AbandonedJob | None:
    """Settle one job if the verdict still holds under the write lock; None when it no longer does."""
    name = job_lease_name(job_id)
    with self.db.write() as conn:
        row = self._job_row(conn, job_id, lock=True)
        if row.status != JobStatus.RUNNING:
            return None  # finished, failed or settled by someone else meanwhile
        now = self.db.clock(conn)
        q = select(Lease).where(Lease.name == name)
        cur = conn.execute(q if self.db.is_sqlite else q.with_for_update()).one_or_none()
        lease = None if cur is None else LeaseRecord.model_validate(cur)
        if verdict == "no lease" and lease is not None:
            return None
        if verdict in ("lapsed", "dead") and (lease is None or seen is None or lease.holder != seen.holder):
            return None  # a rerun took the job over (or its holder finished): it is live again
        if verdict == "lapsed" and lease is not None and lease.expires_at >= now:
            return None  # renewed since: the holder was slow, not gone
        held = Consumption.job_id == job_id, Consumption.state == "claimed"
        claims = int(conn.scalar(select(func.count()).select_from(Consumption).where(*held)) or 0)
        model = conn.execute(
            select(ModelVersion.id, ModelVersion.metrics).where(ModelVersion.job_id == job_id).limit(1)
        ).one_or_none()
        by = f"{socket.gethostname()}:{os.getpid()}"
        note = {
            "reason": verdict,
            "holder": lease and lease.holder,
            "heartbeat_at": lease and lease.heartbeat_at.isoformat(),
            "released_by": by,
        }
        done: dict[str, Any]
        if model is not None:  # died between registering its model and finishing: the model trained on them
            conn.execute(update(Consumption).where(*held).values(state="consumed", consumed_at=now))
            note["consumed_claims"] = claims
            done = {
                "status": str(JobStatus.SUCCEEDED),
                "model_out": model.id,
                "metrics": {**row.metrics, **(model.metrics or {}), "abandoned": note},
            }
        else:
            conn.execute(delete(Consumption).where(*held))
            note["released_claims"] = claims
            done = {
                "status": str(JobStatus.FAILED),
                "error": f"abandoned: {why}; {claims} claim(s) returned to the pool by {by}",
                "metrics": {**row.metrics, "abandoned": note},
            }
        conn.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(finished_at=now, **done))
        conn.execute(delete(Lease).where(Lease.name == name))
    return AbandonedJob(
        job_id=job_id,
        reason=verdict,
        holder=lease and lease.holder,
        heartbeat_at=lease and lease.heartbeat_at,
        released_claims=0 if model is not None else claims,
        model_out=None if model is None else model.id,
    )


def check_job_holder(self: Examples, conn: Connection, job_id: str, holder: str | None) -> None:
    """Inside a job's write transaction: refuse with LeaseLostError when `holder` no longer holds the job's
    lease (a rerun took it over, or a release settled the job), so a holder that stalled past its TTL cannot
    finish, fail or claim for a job another process now runs. None: the caller holds no lease (tests, tools)."""
    if holder is None:
        return
    q = select(Lease.holder).where(Lease.name == job_lease_name(job_id))
    now_holder = conn.scalar(q if self.db.is_sqlite else q.with_for_update())
    if now_holder != holder:
        who = f"taken over by {now_holder}" if now_holder else "released"
        raise LeaseLostError(f"training job {job_id}: its lease of {holder} was {who}")


def drop_job_lease(conn: Connection, job_id: str) -> None:
    """The job finished or failed: its lease goes with it (in the same transaction)."""
    conn.execute(delete(Lease).where(Lease.name == job_lease_name(job_id)))


def job_claims(self: Examples, job_id: str) -> list[ExampleRecord]:
    """The examples `job_id` holds now (claimed, not yet consumed), oldest first: what a rerun that takes a
    killed job over trains on."""
    q = (
        select(Example)
        .join(Consumption, Consumption.example_id == Example.id)
        .where(Consumption.job_id == job_id, Consumption.state == "claimed")
        .order_by(Example.created_at, Example.id)
    )
    with self.db.read() as conn:
        return [ExampleRecord.model_validate(r) for r in conn.execute(q)]


def job_lease_report(self: Examples, *, is_dead: Callable[[str], bool] = holder_is_dead) -> JobLeaseReport:
    """Running jobs with their lease state and claims, and what releases have returned so far (what
    `strop db stats` shows). Reads only: a stuck job is shown, not released."""
    with self.db.read() as conn:
        now = self.db.clock(conn)
        jobs = conn.execute(
            select(TrainingJob.id, TrainingJob.algorithm, TrainingJob.created_at)
            .where(TrainingJob.status == str(JobStatus.RUNNING))
            .order_by(TrainingJob.created_at, TrainingJob.id)
        ).all()
        leases = _leases(conn, [j.id for j in jobs]) if jobs else {}
        held = dict(
            conn.execute(
                select(Consumption.job_id, func.count())
                .join(TrainingJob, TrainingJob.id == Consumption.job_id)
                .where(Consumption.state == "claimed", TrainingJob.status == str(JobStatus.RUNNING))
                .group_by(Consumption.job_id)
            ).all()
        )
        released = conn.execute(
            select(TrainingJob.metrics).where(
                TrainingJob.status == str(JobStatus.FAILED), TrainingJob.error.like("abandoned:%")
            )
        ).scalars()
        notes = [m.get("abandoned", {}) if isinstance(m, dict) else {} for m in released]
    running, stuck = [], 0
    for j in jobs:
        lease = leases.get(j.id)
        verdict = _verdict(j.created_at, lease, now, is_dead, LEASELESS_STALE_S)
        state: LeaseState = "no lease" if lease is None else "dead" if verdict == "dead" else "live"
        if verdict == "lapsed":
            state = "lapsed"
        stuck += int(held.get(j.id, 0)) if verdict is not None else 0
        running.append(
            RunningJob(
                job_id=j.id,
                algorithm=j.algorithm,
                created_at=j.created_at,
                lease=state,
                holder=lease and lease.holder,
                heartbeat_at=lease and lease.heartbeat_at,
                claims=int(held.get(j.id, 0)),
            )
        )
    return JobLeaseReport(
        running=running,
        stuck_claims=stuck,
        released_jobs=len(notes),
        released_claims=sum(int(n.get("released_claims", 0)) for n in notes),
    )
