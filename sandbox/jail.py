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

This module is the jail's API and its working directory; the limits and results are in jail_models.py, the
probing and process set-up per isolation level in jail_isolation.py, and supervising a run in jail_process.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from strop.sandbox.jail_isolation import isolation_level, launch, rlimits_for
from strop.sandbox.jail_models import (
    Isolation,
    IsolationChoice,
    JailLimits,
    JailResult,
    JailUnavailableError,
    JailVerdict,
)
from strop.sandbox.jail_process import pids_of, run_uid, supervise

__all__ = [
    "Isolation",
    "IsolationChoice",
    "JailLimits",
    "JailResult",
    "JailUnavailableError",
    "JailVerdict",
    "arun_code",
    "arun_file",
    "isolation_level",
    "run_code",
    "run_file",
]

log = logging.getLogger(__name__)


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
    def fix(
        func: Callable[[str], object], path: str, _exc: object
    ) -> None:  # code may have chmod-ed its own files to 000
        os.chmod(path, 0o700)
        func(path)

    try:
        shutil.rmtree(workdir, onerror=fix)
    except OSError as exc:
        log.warning("could not remove jail directory %s: %s", workdir, exc)


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
    uid = run_uid() if root else None
    # -S: no site-packages, so the code gets the standard library only and starts without third-party .pth hooks.
    program = ["-E", "-S", "-s", "-B", "main.py", *(args or [])]
    workdir = _prepare_workdir(code, files, stdin, uid)
    try:
        nproc = limits.max_processes + (0 if root else len(pids_of(os.getuid())))
        how = launch(level, workdir, limits, rlimits_for(limits, nproc), uid, program)
        return supervise(how.argv, workdir, how.env, how.preexec, limits, level, uid)
    finally:
        _remove(workdir)


def run_file(path: str | Path, **options: Any) -> JailResult:
    """Run a Python file in the jail; the file's own directory is not visible, only its text."""
    return run_code(Path(path).read_text(encoding="utf-8"), **options)


async def arun_code(code: str, **options: Any) -> JailResult:
    """`run_code` off the event loop, for LangGraph loops: one worker thread per concurrent run."""
    return await asyncio.to_thread(run_code, code, **options)


async def arun_file(path: str | Path, **options: Any) -> JailResult:
    """`run_file` off the event loop."""
    return await asyncio.to_thread(run_file, path, **options)
