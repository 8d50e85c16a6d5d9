"""What happens when things go wrong: killed writers, locked files, old schemas, dead servers."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select
from typer.testing import CliRunner

from strop.cli.commands.db import app as db_app
from strop.memory import SchemaOutdatedError, Store, StoreConnectionError, StoreLockedError
from strop.memory.db import head_revision, make_engine, upgrade
from strop.memory.records import RunRecord
from strop.memory.schema import Critique, Example, Step
from tests.memory.factories import make_episode

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_writer_killed_mid_episode_leaves_nothing(store: Store, db_url: str, tmp_path: Path) -> None:
    run = store.create_run(RunRecord(loop="best_of_n"))
    ep = make_episode(run.id, examples=2)
    (tmp_path / "ep.json").write_text(ep.model_dump_json())
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.memory._workers",
            "hang",
            db_url,
            str(tmp_path / "ep.json"),
            str(ready),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, "the writer exited before reaching the middle of the episode"
        assert time.monotonic() < deadline, "the writer never reached the middle of the episode"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)

    assert not store.has_episode(ep.id)
    with store.db.read() as conn:
        for table in (Step, Critique, Example):
            assert conn.scalar(select(func.count()).select_from(table)) == 0, (
                f"partial rows left in {table.__tablename__}"
            )
    # The lock died with the writer: the retried write goes through, once.
    assert store.write_episode(ep) is True
    assert store.write_episode(ep) is False
    assert len(store.get_episode(ep.id).steps) == 4


def test_locked_sqlite_gives_a_clear_error_after_the_timeout(sqlite_url: str, tmp_path: Path) -> None:
    Store(sqlite_url).close()  # create the schema
    holder = sqlite3.connect(tmp_path / "strop.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        store = Store(sqlite_url, busy_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(StoreLockedError, match=r"locked for 0\.5 s") as info:
            store.create_run(RunRecord(loop="best_of_n"))
        assert time.monotonic() - started >= 0.45
        assert "another process" in str(info.value)
        assert str(tmp_path / "strop.db") in str(info.value)
        store.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_older_schema_names_the_upgrade_command(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine, "0001")
    with pytest.raises(SchemaOutdatedError, match="strop db upgrade") as info:
        Store(db_url)
    assert "0001" in str(info.value)
    with engine.connect() as conn:
        assert "embeddings" not in inspect(conn).get_table_names(), "the store altered tables on its own"

    runner = CliRunner()
    result = runner.invoke(db_app, ["current", "--db", db_url])
    assert result.exit_code == 0 and "needs `strop db upgrade`" in result.output
    result = runner.invoke(db_app, ["upgrade", "--db", db_url])
    assert result.exit_code == 0, result.output
    assert f"0001 -> {head_revision()}" in result.output
    Store(db_url).close()
    assert "up to date" in runner.invoke(db_app, ["current", "--db", db_url]).output
    engine.dispose()


def test_unreachable_server_says_where_and_hides_the_password() -> None:
    with pytest.raises(StoreConnectionError) as info:
        Store("postgresql://strop:hunter2@127.0.0.1:1/strop")
    message = str(info.value)
    assert "hunter2" not in message and "***" in message
    assert "127.0.0.1:1" in message and "server is running" in message


def test_missing_sqlite_store_is_not_created_by_read_commands(tmp_path: Path) -> None:
    result = CliRunner().invoke(db_app, ["stats", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 1 and "no store" in result.output
    assert not (tmp_path / "none.db").exists()
