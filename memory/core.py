"""What every part of the Store shares: the `Database` (engine, read and write transactions, error
translation), the `Part` base class, and `threaded`, the one way an async twin is made.

This is the store's public extension API: code in `memory/` that needs SQL of its own (embeddings, exports,
reflection memory) opens `store.db.read()` / `store.db.write()` like the parts do, never a private method.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import datetime
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar, overload

from sqlalchemy import Connection, Table, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from strop.memory import db
from strop.memory.records import as_utc, utcnow

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")
# Stay under SQLite's bound-parameter limit (32766) and PostgreSQL's (65535) in IN (...) lists.
CHUNK = 5000


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Database:
    """Owns the SQLAlchemy engine. Safe to share between threads (each call takes a pooled connection);
    processes each make their own."""

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
        with self.errors():
            db.check_schema(self.engine, create=create)
        # What a duplicate key raises: pipelined inserts (episodes.py) raise psycopg's own, outside SQLAlchemy.
        self.integrity_errors: tuple[type[Exception], ...] = (IntegrityError,)
        if not self.is_sqlite:
            import psycopg

            self.integrity_errors += (psycopg.errors.IntegrityError,)

    def __repr__(self) -> str:
        return f"Database({db.masked(self.url)!r})"

    def close(self) -> None:
        self.engine.dispose()

    def errors(self) -> contextlib.AbstractContextManager[None]:
        """Driver errors with a known cause become StoreErrors that say what to do."""
        return db.translate_errors(self.url, self.busy_timeout)

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction: BEGIN IMMEDIATE on SQLite (one writer at a time, waits up to the busy
        timeout), an ordinary transaction on PostgreSQL (row locks where a query asks for them)."""
        with self.errors(), self.engine.connect() as conn:
            conn.execution_options(strop_write=True)
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with self.errors(), self.engine.connect() as conn:
            yield conn

    def insert(self, table: Table) -> Any:
        """INSERT that supports ON CONFLICT DO NOTHING / DO UPDATE on both backends."""
        return sqlite_insert(table) if self.is_sqlite else pg_insert(table)

    def now(self) -> Any:
        """The server's clock inside a PostgreSQL statement (no extra round trip), this host's on SQLite."""
        return utcnow() if self.is_sqlite else func.now()

    def clock(self, conn: Connection) -> datetime:
        """The server's clock as a value on PostgreSQL (one clock for every host), this host's on SQLite."""
        if self.is_sqlite:
            return utcnow()
        now = as_utc(conn.scalar(select(func.now())))
        assert now is not None
        return now


class Part:
    """One concern of the store (episodes, examples, the registry, ...) over the shared Database.

    A part owns the SQL of its tables; `Store` builds one of each and exposes their methods."""

    def __init__(self, db: Database) -> None:
        self.db = db


class threaded(Generic[P, R]):  # lower case: it reads like a decorator, `aget_run = threaded(get_run)`
    """The async twin of a store method: `aget_run = threaded(get_run)` in a class body gives
    `await obj.aget_run(...)`, which runs `obj.get_run(...)` in a worker thread so an event loop (a LangGraph
    node, a runner) never blocks on the database. The twin has the method's parameters and returns an
    awaitable of its result, for readers and type checkers alike.

    The method is looked up on the instance, as a hand-written `await asyncio.to_thread(self.get_run, ...)`
    would: a patched or overridden method is the one that runs."""

    def __init__(self, method: Callable[Concatenate[Any, P], R]) -> None:
        self.method = method
        self.name = f"a{method.__name__}"
        self.__doc__ = f"Async twin of `{method.__name__}` (run in a worker thread)."

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Self: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> Callable[P, Coroutine[Any, Any, R]]: ...
    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return self
        method = getattr(obj, self.method.__name__)  # the instance's own, as `self.get_run` would be

        @functools.wraps(method)
        async def twin(*args: P.args, **kwargs: P.kwargs) -> R:
            return await asyncio.to_thread(method, *args, **kwargs)

        twin.__name__ = twin.__qualname__ = self.name
        twin.__doc__ = self.__doc__
        return twin
