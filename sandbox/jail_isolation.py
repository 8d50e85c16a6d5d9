"""How the jail isolates a run: bubblewrap where it works, else rlimits and a network namespace.

Probes what this machine allows (once per process), and turns a run's limits and isolation level into what
`subprocess.Popen` needs: the argv (bwrap's, or the interpreter's), the child-side setup between fork and
exec (rlimits, namespaces, the uid drop), and a scrubbed environment. The code runs with the base interpreter,
not the venv's: it gets the standard library only.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from strop.sandbox.jail_models import Isolation, IsolationChoice, JailLimits, JailUnavailableError

log = logging.getLogger(__name__)

JAIL_DIR = "/work"  # the working directory as the code sees it under bwrap
_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_PR_SET_NO_NEW_PRIVS = 38
_libc = ctypes.CDLL(None, use_errno=True)


# -- the interpreter the code runs with -----------------------------------------------------------------


@cache
def base_python() -> tuple[Path, Path]:
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


# -- building the process -----------------------------------------------------------------------------


def rlimits_for(limits: JailLimits, nproc: int) -> list[tuple[int, int]]:
    """(resource, value) pairs for `setrlimit`; `nproc` counts the processes the uid already has."""
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
) -> Callable[[], None]:
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
    exe, prefix = base_python()
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


@dataclass(frozen=True)
class Launch:
    """What `subprocess.Popen` needs to start one jailed run."""

    argv: list[str]
    preexec: Callable[[], None]
    env: dict[str, str]


def launch(
    level: Isolation,
    workdir: Path,
    limits: JailLimits,
    rlimits: list[tuple[int, int]],
    uid: int | None,
    program: list[str],
) -> Launch:
    """How to start `program` (interpreter arguments) at `level`; `uid` is the run's own uid when root."""
    if level == Isolation.BWRAP:
        # rlimits are set on bwrap itself (as root it is exempt from NPROC) and inherited by the code.
        argv = _bwrap_argv(workdir, limits, uid, program)
        return Launch(argv, _preexec(rlimits), _env(Path(JAIL_DIR), None))
    root = os.geteuid() == 0
    exe, prefix = base_python()
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
    maps = (os.getuid(), os.getgid()) if flags & _CLONE_NEWUSER else None
    preexec = _preexec(rlimits, unshare=flags, bind=bind, uid=uid, id_maps=maps)
    return Launch([str(python), *program], preexec, _env(workdir, lib))
