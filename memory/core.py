"""The plumbing every part of the Store shares: the engine, read and write transactions, error translation
and row-to-record conversion. The public API lives in store.py, registry.py and training_data.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import Connection, Row, Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from strop.memory import db
from strop.memory.records import (
    CritiqueRecord,
    EpisodeRecord,
    ExampleRecord,
    ModelVersionRecord,
    RunRecord,
    StepRecord,
    TrainingJobRecord,
)
from strop.memory.schema import unpack_floats, unpack_ids, utc

T = TypeVar("T")
# Stay under SQLite's bound-parameter limit (32766) and PostgreSQL's (65535) in IN (...) lists.
CHUNK = 5000


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class StoreCore:
    """Owns the SQLAlchemy engine. Safe to share between threads (each call takes a pooled connection);
    processes each make their own Store."""

    def __init__(
        self,
        url: str | None = None,
        *,
        create: bool = True,
        busy_timeout: float = 30.0,
        pool_size: int | None = None,
    ) -> None:
        self.url = db.resolve_db_url(url)
        self.busy_timeout = busy_timeout
        self.is_sqlite = db.is_sqlite(self.url)
        if self.is_sqlite and not create and not db.sqlite_exists(self.url):
            raise db.missing_sqlite_error(self.url)
        self.engine = db.make_engine(self.url, busy_timeout=busy_timeout, pool_size=pool_size)
        with self._errors():
            db.check_schema(self.engine, create=create)

    def __repr__(self) -> str:
        return f"Store({db.masked(self.url)!r})"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> StoreCore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return db.translate_errors(self.url, self.busy_timeout)

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction: BEGIN IMMEDIATE on SQLite (one writer at a time, waits up to the busy
        timeout), an ordinary transaction on PostgreSQL (row locks where a query asks for them)."""
        with self._errors(), self.engine.connect() as conn:
            conn.execution_options(strop_write=True)
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._errors(), self.engine.connect() as conn:
            yield conn

    def _insert(self, table: Table) -> Any:
        """INSERT that supports ON CONFLICT DO NOTHING on both backends."""
        return sqlite_insert(table) if self.is_sqlite else pg_insert(table)


def step_from_row(row: Row[Any]) -> StepRecord:
    return StepRecord(
        id=row.id,
        parent_id=row.parent_id,
        index=row.step_index,
        role=row.role,
        model_version=row.model_version,
        text=row.text,
        prompt_token_ids=unpack_ids(row.prompt_token_ids),
        token_ids=unpack_ids(row.token_ids),
        logprobs=unpack_floats(row.logprobs),
        reward=row.reward,
        value=row.value,
        visits=row.visits,
        metadata=row._mapping["metadata"],
    )


def critique_from_row(row: Row[Any]) -> CritiqueRecord:
    return CritiqueRecord(
        id=row.id,
        episode_id=row.episode_id,
        step_id=row.step_id,
        critic_version=row.critic_version,
        verdict=row.verdict,
        first_wrong_step=row.first_wrong_step,
        text=row.text,
        parsed=row.parsed,
        validated=row.validated,
        corrected_solution=row.corrected_solution,
    )


def example_from_row(row: Row[Any]) -> ExampleRecord:
    return ExampleRecord(
        id=row.id,
        kind=row.kind,
        role=row.role,
        payload=row.payload,
        episode_id=row.episode_id,
        task_id=row.task_id,
        split=row.split,
    )


def episode_from_row(row: Row[Any]) -> EpisodeRecord:
    return EpisodeRecord(
        id=row.id,
        run_id=row.run_id,
        task_id=row.task_id,
        loop=row.loop,
        status=row.status,
        reward=row.reward,
        outcome=row.outcome,
        created_at=utc(row.created_at),
    )


def run_from_row(row: Row[Any]) -> RunRecord:
    return RunRecord(
        id=row.id,
        loop=row.loop,
        config=row.config,
        model_ids=row.model_ids,
        status=row.status,
        host=row.host,
        started_at=utc(row.started_at),
        finished_at=utc(row.finished_at),
    )


def job_from_row(row: Row[Any]) -> TrainingJobRecord:
    return TrainingJobRecord(
        id=row.id,
        algorithm=row.algorithm,
        role=row.role,
        model_in=row.model_in,
        model_out=row.model_out,
        status=row.status,
        metrics=row.metrics,
        error=row.error,
        created_at=utc(row.created_at),
        finished_at=utc(row.finished_at),
    )


def model_from_row(row: Row[Any]) -> ModelVersionRecord:
    return ModelVersionRecord(
        id=row.id,
        name=row.name,
        lineage=row.lineage,
        path=row.path,
        adapter_path=row.adapter_path,
        parent_id=row.parent_id,
        status=row.status,
        job_id=row.job_id,
        metrics=row.metrics,
        created_at=utc(row.created_at),
        promoted_at=utc(row.promoted_at),
    )
