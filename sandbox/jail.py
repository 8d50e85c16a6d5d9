"""The code jail: run untrusted, model-written Python in a separate, limited process.

Why each layer exists:
- bubblewrap (where installed) hides the host filesystem: the code sees /usr, the interpreter, a throw-away
  /work and an empty /tmp, nothing else (no ~/.ssh, no strop.db). It also gives a new network namespace
  (no network at all) and a new pid namespace, so killing bwrap kills every process the code started.
- Started as root, the code is dropped to an unprivileged uid of its own: root ignores RLIMIT_NPROC and can
  read every file; a uid per run also keeps concurrent runs from signalling or starving each other.
- rlimits bound CPU, address space, file size, open files and processes; a wall-clock deadline kills the
  whole process group. Output is read with a cap and the rest drained, so 100 MB of prints costs no memory.
- Without bwrap the jail falls back to rlimits plus a new network namespace where the kernel allows it, and
  says so (`isolation` in every result, and a warning once).

A run never raises for what the code did: crashes, timeouts and limits are verdicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import logging
import os
import resource
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

JAIL_DIR = "/work"  # the working directory as the code sees it under bwrap
_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_PR_SET_NO_NEW_PRIVS = 38
_libc = ctypes.CDLL(None, use_errno=True)


class JailVerdict(StrEnum):
    OK = "ok"  # exited 0
    FAILED = "failed"  # non-zero exit (an exception, a failed assert, a file-size limit...)
    TIMEOUT = "timeout"  # wall-clock or CPU-time limit
    MEMORY = "memory"  # address-space limit (MemoryError)
    KILLED = "killed"  # ended by a signal that is not one of the limits above


class Isolation(StrEnum):
    BWRAP = "bwrap"  # bubblewrap: host filesystem hidden, no network, own pid namespace, rlimits, own uid
    NETNS = "rlimits+netns"  # no bwrap: rlimits, own uid (as root), a new network namespace
    RLIMITS = "rlimits"  # rlimits only: the kernel allows no namespaces here


IsolationChoice = Literal["auto", "bwrap", "rlimits"]


class JailUnavailableError(RuntimeError):
    """The isolation asked for cannot be had on this machine (a configuration problem, not the code's)."""


class JailLimits(BaseModel):
    """Resource limits for one run."""

    timeout_s: float = Field(
        5.0, gt=0, description="Wall-clock limit in seconds; the process group is killed."
    )
    cpu_s: float | None = Field(
        None, gt=0, description="CPU-time limit; None: the wall limit plus one second."
    )
    memory_mb: int = Field(512, gt=16, description="Address-space limit (RLIMIT_AS) in MiB.")
    file_size_mb: int = Field(16, ge=0, description="Largest file the code may write (RLIMIT_FSIZE), in MiB.")
    max_processes: int = Field(32, ge=1, description="Processes the code's uid may have (RLIMIT_NPROC).")
    max_open_files: int = Field(64, ge=8, description="Open file descriptors (RLIMIT_NOFILE).")
    output_bytes: int = Field(
        1_000_000, ge=0, description="Bytes kept of stdout and of stderr; the rest is dropped."
    )
    tmp_mb: int = Field(64, ge=1, description="Size of the jail's private /tmp (bwrap only).")


class JailResult(BaseModel):
    """What one run did. `exit_code` is negative for a signal (-9: SIGKILL), None if it never started."""

    stdout: str
    stderr: str
    exit_code: int | None
    wall_s: float = Field(description="Start to verdict, seconds.")
    cpu_s: float = Field(description="User + system CPU seconds of the code and the children it waited for.")
    verdict: JailVerdict
    isolation: str = Field(description="The isolation level used: bwrap, rlimits+netns or rlimits.")
    truncated: bool = Field(description="True if stdout or stderr went over `output_bytes` and was cut.")
    reason: str = Field("", description="Why this verdict, e.g. 'wall-clock limit of 2.0 s exceeded'.")

    @property
    def ok(self) -> bool:
        return self.verdict == JailVerdict.OK


# -- the interpreter the code runs with -----------------------------------------------------------------


@cache
def _python() -> tuple[Path, Path]:
    """The base interpreter (not the venv: the code gets the standard library only) and its prefix."""
    prefix = Path(sys.base_prefix)
    exe = prefix / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    if not exe.exists():
        exe = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    return exe, prefix


def _reachable_by_others(path: Path) -> bool:
    """Whether a uid without privileges can reach `path` (every ancestor searchable by 'other')."""
    p = path
    while True:
        try:
            mode = p.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
        if p.parent == p:
            return True
        p = p.parent


# -- uids and cleanup --------------------------------------------------------------------------------------

_uid_counter = itertools.count()
_MIN_JAIL_UID = 100_000  # far above any real account: a sweep can never reach root or a login user


def _run_uid() -> int:
    """A fresh unprivileged uid for each run (no passwd entry needed): runs cannot signal each other."""
    return 2 * _MIN_JAIL_UID + (os.getpid() * 1009 + next(_uid_counter)) % _MIN_JAIL_UID


def _pids_of(uid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except OSError:
                continue  # exited while we looked
    return pids


def _kill_uid(uid: int) -> None:
    """SIGKILL every process owned by the run's own uid, pid by pid.

    Deliberately not `kill(-1)`: run with the wrong credentials that would signal every process on the host.
    Each target is pinned with a pidfd and its owner re-checked before the signal, so a recycled pid is
    never hit.
    """
    if uid < _MIN_JAIL_UID:
        raise ValueError(f"refusing to sweep uid {uid}: jail uids start at {_MIN_JAIL_UID}")
    for _ in range(50):  # a fork bomb may still be forking while a sweep runs: sweep until none is left
        pids = _pids_of(uid)
        if not pids:
            return
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue  # already gone
            try:
                with contextlib.suppress(OSError):  # exited between the check and the signal
                    if os.stat(f"/proc/{pid}").st_uid == uid:
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
            finally:
                os.close(fd)
        time.sleep(0.005)
    log.warning("processes of jail uid %d survived 50 kill sweeps", uid)


# -- building the process -----------------------------------------------------------------------------


def _rlimits(limits: JailLimits, nproc: int) -> list[tuple[int, int]]:
    cpu = int(limits.cpu_s if limits.cpu_s is not None else limits.timeout_s + 1) or 1
    mb = 1024 * 1024
    return [
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_AS, limits.memory_mb * mb),
        (resource.RLIMIT_FSIZE, limits.file_size_mb * mb),
        (resource.RLIMIT_NOFILE, limits.max_open_files),
        (resource.RLIMIT_NPROC, nproc),
        (resource.RLIMIT_CORE, 0),
    ]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _preexec(
    rlimits: list[tuple[int, int]],
    *,
    unshare: int = 0,
    bind: tuple[bytes, bytes] | None = None,
    uid: int | None = None,
    id_maps: tuple[int, int] | None = None,
):
    """The child-side setup, run between fork and exec. Only async-signal-safe-ish calls: no imports."""

    def setup() -> None:
        for which, value in rlimits:
            soft = value
            hard = value + 1 if which == resource.RLIMIT_CPU else value  # SIGXCPU first, SIGKILL after
            resource.setrlimit(which, (soft, hard))
        if unshare:
            _check(_libc.unshare(unshare), "unshare")
        if id_maps is not None:  # unprivileged user namespace: map our own ids so files stay ours
            real_uid, real_gid = id_maps
            for name, text in (
                ("setgroups", "deny"),
                ("uid_map", f"{real_uid} {real_uid} 1"),
                ("gid_map", f"{real_gid} {real_gid} 1"),
            ):
                fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
                os.write(fd, text.encode())
                os.close(fd)
        if bind is not None:
            _check(_libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
            _check(_libc.mount(bind[0], bind[1], None, _MS_BIND | _MS_REC, None), "bind interpreter")
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")

    return setup


def _bwrap_argv(workdir: Path, limits: JailLimits, uid: int | None, program: list[str]) -> list[str]:
    exe, prefix = _python()
    argv = [
        "bwrap",
        "--unshare-net",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--as-pid-1",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    if not str(prefix).startswith("/usr/"):
        argv += ["--ro-bind", str(prefix), str(prefix)]
    argv += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(limits.tmp_mb * 1024 * 1024),
        "--perms",
        "1777",
        "--tmpfs",
        "/tmp",
        "--bind",
        str(workdir),
        JAIL_DIR,
        "--chdir",
        JAIL_DIR,
    ]
    if uid is not None:  # privileged bwrap (root): keep just enough to drop to the run's uid inside
        argv += [
            "--cap-add",
            "CAP_SETUID",
            "--cap-add",
            "CAP_SETGID",
            "--",
            shutil.which("setpriv") or "/usr/bin/setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "--no-new-privs",
        ]
    else:
        argv += ["--unshare-user", "--"]
    return [*argv, str(exe), *program]


@cache
def _bwrap_works() -> bool:
    if shutil.which("bwrap") is None or (os.geteuid() == 0 and shutil.which("setpriv") is None):
        return False
    with tempfile.TemporaryDirectory(prefix="strop-jail-probe-") as d:
        argv = _bwrap_argv(Path(d), JailLimits(), 65534 if os.geteuid() == 0 else None, ["-c", "pass"])
        done = subprocess.run(argv, capture_output=True, timeout=30, check=False, env=_env(Path(d), None))
    if done.returncode != 0:
        log.info("bwrap is installed but cannot start a jail here: %s", done.stderr.decode(errors="replace"))
    return done.returncode == 0


@cache
def _netns_works() -> bool:
    flags = _CLONE_NEWNET if os.geteuid() == 0 else _CLONE_NEWUSER | _CLONE_NEWNET
    maps = None if os.geteuid() == 0 else (os.getuid(), os.getgid())
    try:
        subprocess.run(
            ["true"],
            preexec_fn=_preexec([], unshare=flags, id_maps=maps),
            check=True,
            env={"PATH": "/usr/bin:/bin"},
            timeout=30,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        log.info("no network namespace for the jail: %s", exc)
        return False
    return True


_warned = threading.Event()


def isolation_level(choice: IsolationChoice = "auto") -> Isolation:
    """The isolation a run with `choice` gets on this machine (probed once per process)."""
    if choice == "bwrap":
        if not _bwrap_works():
            raise JailUnavailableError(
                "isolation='bwrap' asked for but bubblewrap cannot start here: install it with "
                "`apt-get install -y bubblewrap`, or use isolation='auto'"
            )
        return Isolation.BWRAP
    if choice == "auto" and _bwrap_works():
        return Isolation.BWRAP
    level = Isolation.NETNS if _netns_works() else Isolation.RLIMITS
    if choice == "auto" and not _warned.is_set():
        _warned.set()
        warnings.warn(
            f"bubblewrap is not available: the code jail falls back to '{level}' (the host filesystem is "
            "visible to jailed code). Install it with `apt-get install -y bubblewrap`.",
            RuntimeWarning,
            stacklevel=3,
        )
    return level


def _env(workdir: Path, lib: Path | None) -> dict[str, str]:
    """A scrubbed environment: nothing of the host's (keys, database URLs) reaches the code."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": str(workdir),
        "TMPDIR": "/tmp",
        "PYTHONIOENCODING": "utf-8",
    }
    if lib is not None:
        env["LD_LIBRARY_PATH"] = str(lib)
    return env


# -- running ----------------------------------------------------------------------------------------------


def _prepare_workdir(
    code: str, files: dict[str, str | bytes] | None, stdin: str | bytes | None, uid: int | None
) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="strop-jail-"))
    try:
        for rel, content in {**(files or {}), "main.py": code}.items():
            target = (workdir / rel).resolve()
            if workdir.resolve() not in target.parents:
                raise ValueError(f"jail file {rel!r} would land outside the working directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode() if isinstance(content, str) else content)
        stdin_bytes = stdin.encode() if isinstance(stdin, str) else (stdin or b"")
        (workdir / ".stdin").write_bytes(stdin_bytes)
        if uid is not None:
            for path in [workdir, *workdir.rglob("*")]:
                os.chown(path, uid, uid)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return workdir


def _remove(workdir: Path) -> None:
    def fix(func, path, _exc) -> None:  # code may have chmod-ed its own files to 000
        os.chmod(path, 0o700)
        func(path)

    try:
        shutil.rmtree(workdir, onerror=fix)
    except OSError as exc:
        log.warning("could not remove jail directory %s: %s", workdir, exc)


class _Capped:
    """Keeps the first `cap` bytes of a stream and counts the rest."""

    def __init__(self, cap: int) -> None:
        self.cap, self.data, self.dropped = cap, bytearray(), 0

    def add(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def run_code(
    code: str,
    *,
    stdin: str | bytes | None = None,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    files: dict[str, str | bytes] | None = None,
    isolation: IsolationChoice = "auto",
    limits: JailLimits | None = None,
    args: list[str] | None = None,
) -> JailResult:
    """Run Python `code` as `main.py` in a fresh jail and return what happened.

    `files` are written next to it (relative paths); `limits` overrides every limit, `timeout_s` and
    `memory_mb` are shortcuts for the two that callers change most.
    """
    limits = limits or JailLimits(timeout_s=timeout_s, memory_mb=memory_mb)
    level = isolation_level(isolation)
    root = os.geteuid() == 0
    uid = _run_uid() if root else None
    exe, prefix = _python()
    # -S: no site-packages, so the code gets the standard library only and starts without third-party .pth hooks.
    program = ["-E", "-S", "-s", "-B", "main.py", *(args or [])]
    workdir = _prepare_workdir(code, files, stdin, uid)
    try:
        nproc = limits.max_processes + (0 if root else len(_pids_of(os.getuid())))
        rl = _rlimits(limits, nproc)
        if level == Isolation.BWRAP:
            # rlimits are set on bwrap itself (as root it is exempt from NPROC) and inherited by the code.
            argv = _bwrap_argv(workdir, limits, uid, program)
            preexec = _preexec(rl)
            env = _env(Path(JAIL_DIR), None)
        else:
            flags, bind, lib, python = 0, None, None, exe
            if level == Isolation.NETNS:
                flags = _CLONE_NEWNET if root else _CLONE_NEWUSER | _CLONE_NEWNET
            if root and not _reachable_by_others(exe):
                # The interpreter lives where the run's uid cannot reach it (e.g. under /root): show it
                # at a path inside the working directory, in a private mount namespace.
                staged = workdir / ".python"
                staged.mkdir()
                flags |= _CLONE_NEWNS
                bind = (str(prefix).encode(), str(staged).encode())
                python, lib = staged / exe.relative_to(prefix), staged / "lib"
            argv = [str(python), *program]
            maps = (os.getuid(), os.getgid()) if flags & _CLONE_NEWUSER else None
            preexec = _preexec(rl, unshare=flags, bind=bind, uid=uid, id_maps=maps)
            env = _env(workdir, lib)
        return _supervise(argv, workdir, env, preexec, limits, level, uid)
    finally:
        _remove(workdir)


def _supervise(
    argv: list[str],
    workdir: Path,
    env: dict[str, str],
    preexec,
    limits: JailLimits,
    level: Isolation,
    uid: int | None,
) -> JailResult:
    out, err = _Capped(limits.output_bytes), _Capped(limits.output_bytes)
    start = time.monotonic()
    with (workdir / ".stdin").open("rb") as stdin:
        proc = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=env,
            preexec_fn=preexec,
            start_new_session=True,
            close_fds=True,
        )
    deadline = start + limits.timeout_s
    timed_out = False
    status = 0
    rusage = None
    sel = selectors.DefaultSelector()
    pidfd = os.pidfd_open(proc.pid)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        sel.register(pidfd, selectors.EVENT_READ, None)
        exited = False
        while not exited:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(remaining):
                if key.data is None:
                    exited = True
                    continue
                chunk = os.read(key.fd, 65536)
                if chunk:
                    key.data.add(chunk)
                else:
                    sel.unregister(key.fileobj)
        # Kill the group before reaping its leader: an unreaped leader keeps the group id from being reused,
        # so this can only ever hit the run's own processes.
        _kill_group(proc.pid)
        _, status, rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - start
        if uid is not None and (timed_out or level != Isolation.BWRAP):
            # Without a pid namespace, background children can outlive the code; under bwrap the namespace
            # dies with the code's main process, but a killed bwrap does not take it along (the uid drop
            # clears the parent-death signal), so a timeout sweeps the run's uid in both modes.
            _kill_uid(uid)
        # Whatever is still buffered in the pipes (the process has exited or been killed).
        for stream, sink in ((proc.stdout, out), (proc.stderr, err)):
            os.set_blocking(stream.fileno(), False)
            try:
                while chunk := os.read(stream.fileno(), 65536):
                    sink.add(chunk)
                    if sink.dropped > 64 * limits.output_bytes + (1 << 26):
                        break  # a background writer that escaped the kill: stop draining
            except BlockingIOError:
                pass
    finally:
        sel.close()
        os.close(pidfd)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    cpu = (rusage.ru_utime + rusage.ru_stime) if rusage is not None else 0.0
    code = proc.returncode
    stderr_text = err.text()
    if level == Isolation.BWRAP and code is not None and code > 128:
        code = -(code - 128)  # bwrap reports a child killed by signal N as exit 128+N
    verdict, reason = _verdict(code, timed_out, cpu, stderr_text, limits)
    return JailResult(
        stdout=out.text(),
        stderr=stderr_text,
        exit_code=code,
        wall_s=round(wall, 6),
        cpu_s=round(cpu, 6),
        verdict=verdict,
        isolation=str(level),
        truncated=bool(out.dropped or err.dropped),
        reason=reason,
    )


def _kill_group(pgid: int) -> None:
    if pgid <= 1:
        raise ValueError(f"refusing to signal process group {pgid}")
    with contextlib.suppress(ProcessLookupError):  # already gone: nothing to kill
        os.killpg(pgid, signal.SIGKILL)


def _verdict(
    code: int | None, timed_out: bool, cpu: float, stderr: str, limits: JailLimits
) -> tuple[JailVerdict, str]:
    tail = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if timed_out:
        return JailVerdict.TIMEOUT, f"wall-clock limit of {limits.timeout_s:g} s exceeded"
    if code == -signal.SIGXCPU or (code == -signal.SIGKILL and cpu >= (limits.cpu_s or limits.timeout_s + 1)):
        return JailVerdict.TIMEOUT, f"CPU-time limit exceeded ({cpu:.2f} s used)"
    if "MemoryError" in tail or "Cannot allocate memory" in stderr[-2000:]:
        return JailVerdict.MEMORY, f"memory limit of {limits.memory_mb} MiB exceeded"
    if code == 0:
        return JailVerdict.OK, "exited 0"
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return JailVerdict.KILLED, f"killed by {name}"
    return JailVerdict.FAILED, tail or f"exited {code}"


def run_file(path: str | Path, **options) -> JailResult:
    """Run a Python file in the jail; the file's own directory is not visible, only its text."""
    return run_code(Path(path).read_text(encoding="utf-8"), **options)


async def arun_code(code: str, **options) -> JailResult:
    """`run_code` off the event loop, for LangGraph loops: one worker thread per concurrent run."""
    return await asyncio.to_thread(run_code, code, **options)


async def arun_file(path: str | Path, **options) -> JailResult:
    return await asyncio.to_thread(run_file, path, **options)
