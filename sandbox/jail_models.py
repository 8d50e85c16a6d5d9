"""The code jail's vocabulary: the limits a run is given, the isolation it gets, and what it returns.

Plain data, kept apart from the machinery that enforces it (jail_isolation.py, jail_process.py), so callers
that only build limits or read results import nothing that touches namespaces or processes.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field


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
