"""Run a kill test's worker script in the test's own process.

The kill tests write a small worker script and run it three ways: a reference run, a run that SIGKILLs
itself, and a rerun. Only the dying run needs a process of its own; the others can run here, which saves the
seconds a fresh interpreter spends importing torch and transformers and loading the model code. Everything a
rerun resumes from is in the database, so running it here checks the same thing.
"""

from __future__ import annotations

import contextlib
import io
import runpy
import subprocess
import sys
from pathlib import Path
from unittest import mock


def run_here(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python script args...` in this process; what it printed comes back as a CompletedProcess.

    An exception in the script propagates (with its traceback) instead of becoming a returncode.
    """
    out = io.StringIO()
    with mock.patch.object(sys, "argv", [str(script), *args]), contextlib.redirect_stdout(out):
        runpy.run_path(str(script), run_name="__main__")
    return subprocess.CompletedProcess([sys.executable, str(script), *args], 0, out.getvalue(), "")
