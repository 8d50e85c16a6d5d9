"""The record of schedule firings: one row per (schedule, scheduled time).

Two reasons to keep it in the store. Schedulers on several hosts share one job store, and APScheduler 3 lets
each of them fire a job that is due: the primary key turns "both fired" into "the first one claimed it, the
second saw the row and stood down", so each due cycle runs once. And a scheduled cycle that fails, is skipped
(its recipe's lease was held) or is missed (the scheduler was down past the misfire grace time) leaves a row
with the reason, which `strop schedule list` shows, instead of a line in a log nobody reads.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import func, select, update

from strop.memory.core import Part
from strop.memory.records import StoredRecord, UTCDateTime, utcnow
from strop.memory.schema import ScheduleFiring


class FiringStatus(StrEnum):
    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"  # the recipe's lease was held by another cycle
    MISSED = "missed"  # the scheduler fired later than the misfire grace time allows


class FiringRecord(StoredRecord):
    schedule_id: str
    scheduled_at: UTCDateTime
    recipe: str
    holder: str
    status: FiringStatus
    cycle: int | None = None
    error: str | None = None
    started_at: UTCDateTime
    finished_at: UTCDateTime | None = None


def _at(t: datetime) -> datetime:
    """Scheduled times arrive in the trigger's time zone; the key is stored in UTC (SQLite keeps no zone)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


class Firings(Part):
    def claim_firing(
        self,
        schedule_id: str,
        scheduled_at: datetime,
        *,
        recipe: str,
        holder: str,
        status: FiringStatus | str = FiringStatus.RUNNING,
        error: str | None = None,
    ) -> bool:
        """Record a firing unless one for this (schedule, scheduled time) exists; True when this call did.

        The second scheduler to fire the same due job gets False and must not run it. A terminal `status`
        (missed, skipped) records a firing that never ran."""
        status = FiringStatus(status)
        now = utcnow()
        with self.db.write() as conn:
            stmt = (
                self.db.insert(ScheduleFiring.__table__)
                .values(
                    schedule_id=schedule_id,
                    scheduled_at=_at(scheduled_at),
                    recipe=recipe,
                    holder=holder,
                    status=str(status),
                    error=error,
                    started_at=now,
                    finished_at=None if status == FiringStatus.RUNNING else now,
                )
                .on_conflict_do_nothing(index_elements=["schedule_id", "scheduled_at"])
            )
            # RETURNING, not rowcount: psycopg reports 1 for a conflicting INSERT ... DO NOTHING here.
            return conn.execute(stmt.returning(ScheduleFiring.__table__.c.schedule_id)).first() is not None

    def finish_firing(
        self,
        schedule_id: str,
        scheduled_at: datetime,
        status: FiringStatus | str,
        *,
        cycle: int | None = None,
        error: str | None = None,
    ) -> None:
        with self.db.write() as conn:
            conn.execute(
                update(ScheduleFiring)
                .where(
                    ScheduleFiring.schedule_id == schedule_id,
                    ScheduleFiring.scheduled_at == _at(scheduled_at),
                )
                .values(status=str(FiringStatus(status)), cycle=cycle, error=error, finished_at=utcnow())
            )

    def abandon_firings(self, schedule_id: str, holder: str, reason: str) -> int:
        """Mark the schedule's firings still 'running' under another holder as failed with `reason`.

        Called by a firing that has just taken its recipe's lease: a firing that is still 'running' under
        another holder cannot be running (it would hold the lease), so its process died mid-cycle. The cycle
        itself is not lost: the firing calling this resumes it."""
        with self.db.write() as conn:
            return conn.execute(
                update(ScheduleFiring)
                .where(
                    ScheduleFiring.schedule_id == schedule_id,
                    ScheduleFiring.holder != holder,
                    ScheduleFiring.status == str(FiringStatus.RUNNING),
                )
                .values(status=str(FiringStatus.FAILED), error=reason, finished_at=utcnow())
            ).rowcount

    def get_firing(self, schedule_id: str, scheduled_at: datetime) -> FiringRecord | None:
        with self.db.read() as conn:
            row = conn.execute(
                select(ScheduleFiring).where(
                    ScheduleFiring.schedule_id == schedule_id,
                    ScheduleFiring.scheduled_at == _at(scheduled_at),
                )
            ).one_or_none()
        return None if row is None else FiringRecord.model_validate(row)

    def list_firings(self, schedule_id: str | None = None, limit: int | None = 20) -> list[FiringRecord]:
        """Firings, newest scheduled time first."""
        q = select(ScheduleFiring).order_by(ScheduleFiring.scheduled_at.desc(), ScheduleFiring.schedule_id)
        if schedule_id is not None:
            q = q.where(ScheduleFiring.schedule_id == schedule_id)
        with self.db.read() as conn:
            return [FiringRecord.model_validate(r) for r in conn.execute(q.limit(limit))]

    def last_firings(self) -> dict[str, FiringRecord]:
        """The latest firing of each schedule (by scheduled time)."""
        latest = (
            select(ScheduleFiring.schedule_id, func.max(ScheduleFiring.scheduled_at).label("at"))
            .group_by(ScheduleFiring.schedule_id)
            .subquery()
        )
        q = select(ScheduleFiring).join(
            latest,
            (ScheduleFiring.schedule_id == latest.c.schedule_id)
            & (ScheduleFiring.scheduled_at == latest.c.at),
        )
        with self.db.read() as conn:
            return {r.schedule_id: FiringRecord.model_validate(r) for r in conn.execute(q)}
