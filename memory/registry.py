"""The model registry: which model versions exist, where their weights are, and which one is live.

Status changes follow MODEL_TRANSITIONS (records.py); anything else is refused, because two workers racing
to promote or roll back must not both win.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, update

from strop.memory.core import Part, threaded
from strop.memory.errors import InvalidTransitionError, NotFoundError
from strop.memory.records import MODEL_TRANSITIONS, ModelStatus, ModelVersionRecord, utcnow
from strop.memory.schema import ModelVersion


class Registry(Part):
    def register_model(self, model: ModelVersionRecord) -> ModelVersionRecord:
        """Record a model version (idempotent by id); return what the store holds."""
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
                path=model.path,
                adapter_path=model.adapter_path,
                parent_id=model.parent_id,
                status=str(model.status),
                job_id=model.job_id,
                metrics=model.metrics,
                created_at=model.created_at,
                promoted_at=model.promoted_at,
            )
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))
            return ModelVersionRecord.model_validate(self._model_row(conn, model.id))

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
            row = conn.execute(select(ModelVersion).where(ModelVersion.id == id_or_name)).one_or_none()
            if row is None:
                row = conn.execute(
                    select(ModelVersion)
                    .where(ModelVersion.name == id_or_name)
                    .order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
                    .limit(1)
                ).one_or_none()
        return None if row is None else ModelVersionRecord.model_validate(row)

    def list_models(self, lineage: str | None = None) -> list[ModelVersionRecord]:
        q = select(ModelVersion).order_by(ModelVersion.created_at, ModelVersion.id)
        if lineage is not None:
            q = q.where(ModelVersion.lineage == lineage)
        with self.db.read() as conn:
            return [ModelVersionRecord.model_validate(r) for r in conn.execute(q)]

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
        return None if row is None else ModelVersionRecord.model_validate(row)

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
            return ModelVersionRecord.model_validate(self._model_row(conn, model_id))

    def update_model_metrics(self, model_id: str, metrics: dict[str, Any]) -> ModelVersionRecord:
        """Merge `metrics` into the version's metrics (existing keys are overwritten)."""
        with self.db.write() as conn:
            row = self._model_row(conn, model_id, lock=True)
            conn.execute(
                update(ModelVersion)
                .where(ModelVersion.id == model_id)
                .values(metrics={**row.metrics, **metrics})
            )
            return ModelVersionRecord.model_validate(self._model_row(conn, model_id))

    aregister_model = threaded(register_model)
    aget_model = threaded(get_model)
    alist_models = threaded(list_models)
    acurrent_model = threaded(current_model)
    aset_model_status = threaded(set_model_status)
    aupdate_model_metrics = threaded(update_model_metrics)
