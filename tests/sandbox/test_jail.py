"""Hostile code in the real jail: each attack is contained and reported, and the host process is unharmed.

Every test runs under bubblewrap (where installed) and under the forced fallback (`isolation="rlimits"`),
since the fallback is what users without bwrap get.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path

import pytest

from strop.sandbox import jail, jail_isolation
from strop.sandbox.jail import Isolation, JailLimits, JailVerdict, arun_code, run_code, run_file

MODES = ["auto", "rlimits"]
FAST = JailLimits(timeout_s=2.0, memory_mb=256, file_size_mb=8, max_processes=16)


def _host_alive() -> None:
    """The host can still fork, exec and run Python: no limit leaked into this process."""
    done = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "42"


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry.name))
    return found


def test_isolation_level_is_reported() -> None:
    r = run_code("print('hi')")
    assert r.verdict == JailVerdict.OK and r.stdout == "hi\n" and r.exit_code == 0
    assert r.isolation == jail.isolation_level("auto")
    assert run_code("print(1)", isolation="rlimits").isolation in {Isolation.NETNS, Isolation.RLIMITS}


@pytest.mark.parametrize("mode", MODES)
def test_infinite_loop_is_stopped(mode: str) -> None:
    start = time.monotonic()
    r = run_code("while True:\n    pass\n", isolation=mode, limits=FAST.model_copy(update={"timeout_s": 1.0}))
    assert r.verdict == JailVerdict.TIMEOUT and "limit" in r.reason
    assert time.monotonic() - start < 5
    _host_alive()


@pytest.mark.parametrize("mode", MODES)
def test_cpu_limit_stops_a_busy_loop_before_the_wall_clock(mode: str) -> None:
    r = run_code(
        "while True:\n    pass\n",
        isolation=mode,
        limits=FAST.model_copy(update={"timeout_s": 20, "cpu_s": 1}),
    )
    assert (
        r.verdict == JailVerdict.TIMEOUT and "CPU" in r.reason and r.wall_s < 19
    )  # the CPU limit, not the wall


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_fork_bomb_is_contained(mode: str) -> None:
    marker = f"bomb-{uuid.uuid4().hex}"
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    r = run_code(code, isolation=mode, args=[marker], limits=FAST.model_copy(update={"timeout_s": 1.5}))
    assert r.verdict == JailVerdict.TIMEOUT
    deadline = time.monotonic() + 5
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(marker) == []  # not one child survived the run
    _host_alive()


@pytest.mark.parametrize("mode", MODES)
def test_allocating_10_gb_is_a_memory_verdict(mode: str) -> None:
    r = run_code("x = bytearray(10 * 2**30)\nprint('allocated')", isolation=mode, limits=FAST)
    assert r.verdict == JailVerdict.MEMORY and "allocated" not in r.stdout
    _host_alive()


@pytest.mark.parametrize("mode", MODES)
def test_writing_1_gb_is_stopped_by_the_file_size_limit(mode: str) -> None:
    code = "with open('big', 'wb') as f:\n    for _ in range(1024):\n        f.write(b'x' * 2**20)\nprint('wrote')"
    r = run_code(code, isolation=mode, limits=FAST)
    assert r.verdict == JailVerdict.FAILED and "File too large" in r.reason and "wrote" not in r.stdout
    assert r.wall_s < 5


@pytest.mark.parametrize("mode", MODES)
def test_writing_outside_the_working_directory_fails(mode: str, tmp_path: Path) -> None:
    target = tmp_path / "evil.txt"
    code = f"open({str(target)!r}, 'w').write('pwned')\nprint('done')"
    r = run_code(code, isolation=mode, limits=FAST)
    assert r.verdict == JailVerdict.FAILED and "done" not in r.stdout
    assert not target.exists()


def test_bwrap_hides_even_world_accessible_host_files(tmp_path: Path) -> None:
    if jail.isolation_level("auto") != Isolation.BWRAP:
        pytest.skip("bubblewrap is not available here")
    target = Path("/tmp") / f"strop-evil-{uuid.uuid4().hex}"
    r = run_code(f"open({str(target)!r}, 'w').write('x')", limits=FAST)
    assert r.verdict == JailVerdict.OK  # it wrote to the jail's own /tmp...
    assert not target.exists()  # ...which is not the host's
    shared = Path(tempfile.mkdtemp(prefix="strop-world-", dir="/var/tmp"))
    try:
        shared.chmod(0o755)
        secret = f"SECRET-{uuid.uuid4().hex}"
        (shared / "strop.db").write_text(secret)
        (shared / "strop.db").chmod(0o644)  # readable by anyone on the host, yet not in the jail
        r = run_code(f"print(open({str(shared / 'strop.db')!r}).read())", limits=FAST)
        assert r.verdict == JailVerdict.FAILED and "FileNotFoundError" in r.reason and secret not in r.stdout
        r = run_code("import os\nprint(sorted(os.listdir('/')))", limits=FAST)
        assert "etc" not in r.stdout and "home" not in r.stdout and "var" not in r.stdout
    finally:
        shutil.rmtree(shared)


@pytest.mark.parametrize("mode", MODES)
def test_secrets_stay_unread(mode: str, tmp_path: Path) -> None:
    secret = f"SECRET-{uuid.uuid4().hex}"
    ssh = tmp_path / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "id_ed25519").write_text(secret)
    db = tmp_path / "strop.db"
    db.write_text(secret)
    db.chmod(0o600)
    code = (
        "import os\n"
        f"for p in [{str(ssh / 'id_ed25519')!r}, {str(db)!r}, os.path.expanduser('~/.ssh/id_rsa'),"
        " '/root/.ssh/id_rsa', '/proc/1/environ']:\n"
        "    try:\n        print(open(p).read())\n    except OSError as e:\n        print('denied', e.errno)\n"
        "print(os.environ)\n"
    )
    r = run_code(code, isolation=mode, limits=FAST)
    assert secret not in r.stdout + r.stderr
    assert r.stdout.count("denied") >= 4
    assert "STROP" not in r.stdout and "PG" not in r.stdout  # scrubbed environment


@pytest.mark.parametrize("mode", MODES)
def test_no_network_to_the_database_port(mode: str) -> None:
    code = (
        "import socket\ns = socket.socket()\ns.settimeout(1)\n"
        "try:\n    s.connect(('127.0.0.1', 5432))\n    print('connected')\n"
        "except OSError as e:\n    print('refused', e.errno)\n"
    )
    r = run_code(code, isolation=mode, limits=FAST)
    assert r.verdict == JailVerdict.OK and "refused" in r.stdout and "connected" not in r.stdout


@pytest.mark.parametrize("mode", MODES)
def test_printing_100_mb_is_capped(mode: str) -> None:
    code = (
        "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 2**20)\nprint('end', file=sys.stderr)"
    )
    r = run_code(
        code, isolation=mode, limits=FAST.model_copy(update={"timeout_s": 10, "output_bytes": 10_000})
    )
    assert r.truncated and len(r.stdout) == 10_000 and r.stderr == "end\n"
    assert r.verdict == JailVerdict.OK


@pytest.mark.parametrize("mode", MODES)
def test_killing_the_parent_fails(mode: str) -> None:
    code = (
        "import os, signal, sys\n"
        "for pid in {os.getppid(), int(sys.argv[1])}:\n"
        "    try:\n        os.kill(pid, signal.SIGKILL)\n        print('sent', pid)\n"
        "    except OSError as e:\n        print('denied', pid, e.errno)\n"
    )
    r = run_code(code, isolation=mode, args=[str(os.getpid())], limits=FAST)
    assert r.verdict in {JailVerdict.OK, JailVerdict.KILLED}
    _host_alive()  # and this test process is still here to say so


@pytest.mark.parametrize("mode", MODES)
def test_sleeping_past_the_limit_is_a_timeout(mode: str) -> None:
    r = run_code(
        "import time\ntime.sleep(30)", isolation=mode, limits=FAST.model_copy(update={"timeout_s": 1.0})
    )
    assert r.verdict == JailVerdict.TIMEOUT and 0.9 < r.wall_s < 4


@pytest.mark.parametrize("mode", MODES)
def test_crash_exit_codes_stdin_and_files(mode: str) -> None:
    r = run_code("raise SystemExit(3)", isolation=mode)
    assert r.verdict == JailVerdict.FAILED and r.exit_code == 3
    r = run_code("import ctypes\nctypes.string_at(0)", isolation=mode)
    assert r.verdict == JailVerdict.KILLED and r.exit_code == -11
    r = run_code(
        "import helper, sys\nprint(helper.X + sys.stdin.read())",
        stdin="!",
        files={"helper.py": "X = 'a'"},
        isolation=mode,
    )
    assert r.stdout == "a!\n"
    with pytest.raises(ValueError, match="outside"):
        run_code("", files={"../x.py": ""}, isolation=mode)


def test_run_file_and_async(tmp_path: Path) -> None:
    f = tmp_path / "prog.py"
    f.write_text("print(sum(range(10)))")
    assert run_file(f).stdout == "45\n"


async def test_async_twin_runs_concurrently() -> None:
    import asyncio

    results = await asyncio.gather(*(arun_code(f"print({i})") for i in range(4)))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(4)]


def test_fallback_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jail_isolation, "_bwrap_works", lambda: False)
    monkeypatch.setattr(jail_isolation, "_warned", threading.Event())
    with pytest.warns(RuntimeWarning, match="bubblewrap"):
        r = run_code("print('x')")
    assert r.isolation != Isolation.BWRAP and r.verdict == JailVerdict.OK
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_code("print('y')")  # the second fallback run is silent
