"""Running the jailed process to its verdict: the deadline, capped output, and killing all it started.

The code's process group is killed at the deadline and, where it ran as its own uid, every process of that
uid is swept, pid by pid, so background children cannot outlive the run. Output is read with a cap and the
rest drained, so 100 MB of prints costs no memory. The verdict is read from the exit status, the CPU time and
the tail of stderr: a run never raises for what the code did.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from strop.sandbox.jail_models import Isolation, JailLimits, JailResult, JailVerdict

log = logging.getLogger(__name__)

# -- uids and cleanup --------------------------------------------------------------------------------------

_uid_counter = itertools.count()
_MIN_JAIL_UID = 100_000  # far above any real account: a sweep can never reach root or a login user


def run_uid() -> int:
    """A fresh unprivileged uid for each run (no passwd entry needed): runs cannot signal each other."""
    return 2 * _MIN_JAIL_UID + (os.getpid() * 1009 + next(_uid_counter)) % _MIN_JAIL_UID


def pids_of(uid: int) -> list[int]:
    """The pids of every process `uid` owns (read from /proc)."""
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
        pids = pids_of(uid)
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


def supervise(
    argv: list[str],
    workdir: Path,
    env: dict[str, str],
    preexec: Callable[[], None],
    limits: JailLimits,
    level: Isolation,
    uid: int | None,
) -> JailResult:
    """Start the run, read its output until it exits or its deadline passes, kill what is left, judge it."""
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
