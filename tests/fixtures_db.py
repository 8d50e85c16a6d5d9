"""Database fixtures (SQLite and PostgreSQL).

`db_url` runs a test on both backends: a fresh SQLite file, and a fresh schema on the PostgreSQL server at
127.0.0.1:5432 (database `test`; override with STROP_TEST_PG), selected through the connection's
search_path and dropped afterwards. A PostgreSQL that cannot be reached skips locally and FAILS in CI
(CI=true): the store's PostgreSQL path must never go untested silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ADMIN = os.environ.get("STROP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgresql"]


def _pg_unreachable(reason: str) -> None:
    message = f"PostgreSQL for the store tests is unreachable at {PG_ADMIN}: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: the PostgreSQL tests must run; start the server)")
    pytest.skip(message + " (set CI=true to make this a failure)")


def _pg_admin_exec(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A SQLAlchemy URL for a fresh, empty PostgreSQL schema, dropped after the test."""
    import psycopg

    schema = f"strop_t_{uuid.uuid4().hex[:12]}"
    try:
        _pg_admin_exec(f"CREATE SCHEMA {schema}")
    except psycopg.OperationalError as exc:
        _pg_unreachable(str(exc).strip())
    base = PG_ADMIN.replace("postgresql://", "postgresql+psycopg://", 1)
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}"
    _pg_admin_exec(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'strop.db'}"


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest) -> str:
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return request.getfixturevalue(name)


@pytest.fixture
def store(db_url: str) -> Iterator[object]:
    """A Store at the current schema on each backend, closed after the test."""
    from strop.memory import Store

    s = Store(db_url)
    yield s
    s.close()
