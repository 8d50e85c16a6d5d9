"""The model registry: which model versions exist, where their weights are, and which one is live.

Status changes follow MODEL_TRANSITIONS (records.py); anything else is refused, because two workers racing
to promote or roll back must not both win.

Folders are stored in a form any host and working directory can read (absolute, or under STROP_RUNS_ROOT)
and read back resolved; paths.py says how, and how rows from before that rule are found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select, update

from strop.memory import db as dbmod
from strop.memory import paths
from strop.memory.core import Part, threaded
from strop.memory.errors import InvalidTransitionError, NotFoundError
from strop.memory.records import MODEL_TRANSITIONS, ModelStatus, ModelVersionRecord, utcnow
from strop.memory.schema import ModelVersion


class Registry(Part):
    def register_model(self, model: ModelVersionRecord) -> ModelVersionRecord:
        """Record a model version (idempotent by id); return what the store holds.

        A relative folder is made absolute against this process's working directory before it is stored
        (under STROP_RUNS_ROOT: relative to that root), so the version loads from any directory or host.
        """
        if model.parent_id is not None and self.get_model(model.parent_id) is None:
            raise NotFoundError(
                f"model {model.name!r} names parent {model.parent_id!r}, which is not registered: register the "
                "parent first (`strop models list` shows what is registered)"
            )
        with self.db.write() as conn:
            stmt = self.db.insert(ModelVersion.__table__).values(
                id=model.id,
                name=model.name,
                lineage=model.lineage,
                path=paths.stored_form(model.path),
                adapter_path=paths.stored_form(model.adapter_path),
                parent_id=model.parent_id,
                status=str(model.status),
                job_id=model.job_id,
                metrics=model.metrics,
                created_at=model.created_at,
                promoted_at=model.promoted_at,
            )
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))
            return self._record(self._model_row(conn, model.id))

    def _record(self, row: Any) -> ModelVersionRecord:
        """A row as a record whose folders are resolved for this host and working directory (paths.py)."""
        record = ModelVersionRecord.model_validate(row)
        db_dir = self._db_dir()
        return record.model_copy(
            update={
                "path": paths.resolved(record.path, db_dir),
                "adapter_path": paths.resolved(record.adapter_path, db_dir),
            }
        )

    def _db_dir(self) -> Path | None:
        """The SQLite file's folder: by default `./strop.db` sits beside the runs/ that old relative rows name."""
        if not self.db.is_sqlite:
            return None
        file = dbmod.sqlite_path(self.db.url)
        return None if file is None else file.expanduser().absolute().parent

    def locate_model(self, id_or_name: str) -> ModelVersionRecord:
        """The version with its folders checked on this host: absolute paths that exist.

        Raises NotFoundError for an unknown version and `ModelFolderNotFoundError` (a NotFoundError) naming
        every folder tried and the setting that fixes it, for a folder this host cannot find.
        """
        with self.db.read() as conn:
            row = self._find(conn, id_or_name)
        if row is None:
            raise NotFoundError(
                f"model version {id_or_name!r} is not registered (`strop models list` shows them)"
            )
        stored = ModelVersionRecord.model_validate(row)
        db_dir = self._db_dir()
        located = {
            field: str(paths.locate(value, what=what, version=stored.name, db_dir=db_dir))
            for field, what, value in (
                ("path", "model", stored.path),
                ("adapter_path", "adapter", stored.adapter_path),
            )
            if value
        }
        return stored.model_copy(update=located)

    def _model_row(self, conn: Connection, model_id: str, *, lock: bool = False) -> Any:
        q = select(ModelVersion).where(ModelVersion.id == model_id)
        if lock and not self.db.is_sqlite:
            q = q.with_for_update()
        row = conn.execute(q).one_or_none()
        if row is None:
            raise NotFoundError(
                f"model version {model_id!r} is not registered (`strop models list` shows them)"
            )
        return row

    def get_model(self, id_or_name: str) -> ModelVersionRecord | None:
        """By id, else the newest version with that name."""
        with self.db.read() as conn:
            row = self._find(conn, id_or_name)
        return None if row is None else self._record(row)

    def _find(self, conn: Connection, id_or_name: str) -> Any:
        row = conn.execute(select(ModelVersion).where(ModelVersion.id == id_or_name)).one_or_none()
        if row is None:
            row = conn.execute(
                select(ModelVersion)
                .where(ModelVersion.name == id_or_name)
                .order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
                .limit(1)
            ).one_or_none()
        return row

    def list_models(self, lineage: str | None = None) -> list[ModelVersionRecord]:
        q = select(ModelVersion).order_by(ModelVersion.created_at, ModelVersion.id)
        if lineage is not None:
            q = q.where(ModelVersion.lineage == lineage)
        with self.db.read() as conn:
            return [self._record(r) for r in conn.execute(q)]

    def current_model(self, lineage: str) -> ModelVersionRecord | None:
        """The live version of a lineage: the most recently promoted one, else its base model."""
        with self.db.read() as conn:
            row = conn.execute(
                select(ModelVersion)
                .where(ModelVersion.lineage == lineage, ModelVersion.status == str(ModelStatus.PROMOTED))
                .order_by(ModelVersion.promoted_at.desc(), ModelVersion.created_at.desc())
                .limit(1)
            ).one_or_none()
            if row is None:
                row = conn.execute(
                    select(ModelVersion)
                    .where(ModelVersion.lineage == lineage, ModelVersion.status == str(ModelStatus.BASE))
                    .order_by(ModelVersion.created_at.desc())
                    .limit(1)
                ).one_or_none()
        return None if row is None else self._record(row)

    def set_model_status(self, model_id: str, status: ModelStatus | str) -> ModelVersionRecord:
        status = ModelStatus(status)
        with self.db.write() as conn:
            row = self._model_row(conn, model_id, lock=True)
            current = ModelStatus(row.status)
            if status not in MODEL_TRANSITIONS[current]:
                allowed = ", ".join(sorted(MODEL_TRANSITIONS[current])) or "nothing"
                raise InvalidTransitionError(
                    f"model version {row.name} ({model_id}) is {current}; it can become {allowed}, not {status}"
                )
            values: dict[str, Any] = {"status": str(status)}
            if status is ModelStatus.PROMOTED:
                values["promoted_at"] = utcnow()
            conn.execute(update(ModelVersion).where(ModelVersion.id == model_id).values(**values))
            return self._record(self._model_row(conn, model_id))

    def update_model_metrics(self, model_id: str, metrics: dict[str, Any]) -> ModelVersionRecord:
        """Merge `metrics` into the version's metrics (existing keys are overwritten)."""
        with self.db.write() as conn:
            row = self._model_row(conn, model_id, lock=True)
            conn.execute(
                update(ModelVersion)
                .where(ModelVersion.id == model_id)
                .values(metrics={**row.metrics, **metrics})
            )
            return self._record(self._model_row(conn, model_id))

    aregister_model = threaded(register_model)
    aget_model = threaded(get_model)
    alocate_model = threaded(locate_model)
    alist_models = threaded(list_models)
    acurrent_model = threaded(current_model)
    aset_model_status = threaded(set_model_status)
    aupdate_model_metrics = threaded(update_model_metrics)
