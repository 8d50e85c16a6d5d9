"""Runs: one execution of a loop (its config, the model versions it used, its status). Every episode
belongs to a run, so a run is created before its episodes are written."""

from __future__ import annotations

from sqlalchemy import select, update

from strop.memory.core import Part, threaded
from strop.memory.errors import NotFoundError
from strop.memory.records import RunRecord, RunStatus, utcnow
from strop.memory.schema import Run


class Runs(Part):
    def create_run(self, run: RunRecord) -> RunRecord:
        """Insert the run unless one with its id exists; return what the store holds (idempotent)."""
        with self.db.write() as conn:
            stmt = self.db.insert(Run.__table__).values(
                id=run.id,
                loop=run.loop,
                config=run.config,
                model_ids=run.model_ids,
                status=str(run.status),
                host=run.host,
                started_at=run.started_at,
                finished_at=run.finished_at,
            )
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))
            row = conn.execute(select(Run).where(Run.id == run.id)).one()
        return RunRecord.model_validate(row)

    def finish_run(self, run_id: str, status: RunStatus | str = RunStatus.FINISHED) -> None:
        status = RunStatus(status)
        with self.db.write() as conn:
            done = conn.execute(
                update(Run).where(Run.id == run_id).values(status=str(status), finished_at=utcnow())
            ).rowcount
        if not done:
            raise NotFoundError(f"run {run_id!r} is not in the store; create it with create_run first")

    def get_run(self, run_id: str) -> RunRecord | None:
        with self.db.read() as conn:
            row = conn.execute(select(Run).where(Run.id == run_id)).one_or_none()
        return None if row is None else RunRecord.model_validate(row)

    def list_runs(self, loop: str | None = None, limit: int | None = None) -> list[RunRecord]:
        """Runs, newest first."""
        q = select(Run).order_by(Run.started_at.desc(), Run.id)
        if loop is not None:
            q = q.where(Run.loop == loop)
        with self.db.read() as conn:
            return [RunRecord.model_validate(r) for r in conn.execute(q.limit(limit))]

    acreate_run = threaded(create_run)
    afinish_run = threaded(finish_run)
    aget_run = threaded(get_run)
    alist_runs = threaded(list_runs)
