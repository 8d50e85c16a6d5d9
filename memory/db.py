"""Database URLs, engines and schema checks: everything about *which* database, not what is in it.

One rule for every entry point (CLI `--db`, env `STROP_DB`, Python `Store(url)`): a URL with a scheme is
used as given (`postgresql://` gets the psycopg 3 driver), anything else is a SQLite file path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic_core
from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from strop.memory.errors import SchemaError, SchemaOutdatedError, StoreConnectionError, StoreLockedError

DEFAULT_DB = "sqlite:///./strop.db"
ENV_VAR = "STROP_DB"
MIGRATIONS = Path(__file__).parent / "migrations"


def resolve_db_url(db: str | None = None) -> str:
    """`db` argument, else $STROP_DB, else ./strop.db, normalised to a SQLAlchemy URL."""
    raw = (db or os.environ.get(ENV_VAR) or DEFAULT_DB).strip()
    if "://" not in raw:
        return f"sqlite:///{Path(raw).expanduser()}"
    scheme, rest = raw.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return raw


def masked(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # an unparsable URL has no password we could locate; show nothing of it
        return "<unparsable database URL>"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str) -> Path | None:
    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None


def sqlite_exists(url: str) -> bool:
    path = sqlite_path(url)
    return path is None or path.exists()


def missing_sqlite_error(url: str) -> StoreConnectionError:
    return StoreConnectionError(
        f"there is no store at {sqlite_path(url)}: run a loop to create one, or `strop db upgrade --db "
        f"{sqlite_path(url)}`, or point --db / STROP_DB at an existing store"
    )


def to_json_text(value: Any) -> str:
    # pydantic-core's Rust encoder: about 5x faster than json.dumps on payloads, and JSON columns are
    # written for every step and example.
    return pydantic_core.to_json(value).decode()


def make_engine(url: str, *, busy_timeout: float = 30.0, pool_size: int | None = None) -> Engine:
    """`pool_size`: PostgreSQL connections kept per process (SQLAlchemy's default 5, plus as many again on
    demand); a process hosting many workers needs more, a server with many hosts fewer."""
    json_args: dict[str, Any] = {
        "json_serializer": to_json_text,
        "json_deserializer": pydantic_core.from_json,
    }
    if is_sqlite(url):
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": busy_timeout, "check_same_thread": False}, **json_args
        )
        _sqlite_events(engine)
        return engine
    pool = {} if pool_size is None else {"pool_size": pool_size, "max_overflow": pool_size}
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10}, **pool, **json_args)


def _sqlite_events(engine: Engine) -> None:
    """Take transaction control away from pysqlite (SQLAlchemy docs, "Serializable isolation / Savepoints /
    Transactional DDL"): write transactions then start with BEGIN IMMEDIATE, so a second writer waits for
    the lock up front (busy timeout) instead of failing half-way when it tries to upgrade a read lock."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # WAL: readers never block the writer; NORMAL: no fsync per commit, still crash-consistent in WAL.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        # 64 MiB page cache (default 2 MiB): the random-key indexes of a big store stay in memory.
        cur.execute("PRAGMA cache_size=-65536")
        # Checkpoint the WAL every ~16 MiB instead of 4 MiB: fewer fsyncs for a busy writer.
        cur.execute("PRAGMA wal_autocheckpoint=4000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql(
            "BEGIN IMMEDIATE" if conn.get_execution_options().get("strop_write") else "BEGIN"
        )


@contextlib.contextmanager
def translate_errors(url: str, busy_timeout: float) -> Iterator[None]:
    """Turn driver errors that have a known cause into StoreErrors that say what to do."""
    try:
        yield
    except OperationalError as exc:
        text = str(exc.orig if exc.orig is not None else exc)
        if is_sqlite(url) and ("locked" in text or "busy" in text):
            raise StoreLockedError(
                f"SQLite database {sqlite_path(url)} stayed locked for {busy_timeout:g} s: another process holds "
                "a write transaction on it (another strop loop or training job, a `strop db` command, or a "
                "sqlite3 shell with an open transaction). Stop that process, raise the busy timeout "
                "(Store(..., busy_timeout=...)), or use PostgreSQL for many concurrent writers."
            ) from exc
        if not is_sqlite(url) and _is_connection_failure(exc):
            raise StoreConnectionError(
                f"cannot reach the database at {masked(url)}: {text.strip()}. Check that the server is "
                "running and reachable at that host and port, that the user, password and database name are "
                "right, and that --db / STROP_DB name the store you mean."
            ) from exc
        if is_sqlite(url) and "unable to open" in text:
            raise StoreConnectionError(
                f"cannot open the SQLite database at {sqlite_path(url)}: {text.strip()}. Check that the "
                "folder exists and is writable, or pass another path with --db / STROP_DB."
            ) from exc
        raise


def _is_connection_failure(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    text = str(exc.orig).lower()
    return any(s in text for s in ("connection", "could not", "does not exist", "authentication", "timeout"))


# --- migrations --------------------------------------------------------------------------------------------


def alembic_config(url: str) -> Any:
    """Alembic configured in code: the migrations ship inside the package, no alembic.ini needed."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    cfg = alembic_config("sqlite://")
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None, "memory/migrations has no revisions"
    return head


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory.from_config(alembic_config("sqlite://")).walk_revisions()}


def current_revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run migrations up to `revision` on this engine's connection (transactional on both backends)."""
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as conn:
        conn.execution_options(strop_write=True)
        with conn.begin():
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)


def check_schema(engine: Engine, *, create: bool) -> None:
    """Refuse to work on a schema this code does not match; create a brand-new empty database at head.

    Never migrates an existing database on its own: the user decides when (`strop db upgrade`).
    """
    url = engine.url.render_as_string(hide_password=False)
    head = head_revision()
    with engine.connect() as conn:
        current = current_revision(conn)
        tables = set(inspect(conn).get_table_names())
    if current == head:
        return
    if current is None:
        if tables - {"alembic_version"}:
            raise SchemaError(
                f"the database at {masked(url)} has tables ({', '.join(sorted(tables)[:5])}...) but no strop "
                "migration record: it is not a strop store. Point --db / STROP_DB at another database."
            )
        if not create:
            raise SchemaOutdatedError(
                f"the database at {masked(url)} is empty. Create the strop schema with "
                f"`strop db upgrade --db {masked(url)}`."
            )
        try:
            upgrade(engine)
        except DBAPIError:
            # Another process may have created it at the same moment; fine if it is at head now.
            with engine.connect() as conn:
                if current_revision(conn) != head:
                    raise
        return
    if current in known_revisions():
        raise SchemaOutdatedError(
            f"the database at {masked(url)} has schema revision {current}, this strop needs {head}. "
            f"Run `strop db upgrade --db {masked(url)}` (back the file up first if it matters); strop never "
            "alters tables on its own."
        )
    raise SchemaError(
        f"the database at {masked(url)} has schema revision {current}, which this strop does not know: it was "
        "written by a newer strop. Upgrade strop (`pip install -U strop`) on this host."
    )
