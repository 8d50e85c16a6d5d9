"""Where a registered model version's folders live, in a form every host and working directory can read.

A version's `path` and `adapter_path` name folders that another process opens later: `strop eval` from
another directory, a scheduled job, `strop serve --follow`, a rollout worker on another host. The registry
therefore stores them

- absolute (the registering process's working directory made explicit), or
- as `$STROP_RUNS_ROOT/<relative>` when the folder lies under `STROP_RUNS_ROOT`: hosts that mount a shared
  runs disk at different places then each set the variable to their own mount point.

Rows written before that rule hold paths relative to the directory their run was started in, and nothing
recorded that directory. They are looked up, in order, under `STROP_RUNS_ROOT`, the working directory and the
SQLite database's folder (where `./strop.db` sits next to `runs/` by default); the first that exists wins.
When none does, `locate` raises, naming every folder it tried and the setting that fixes it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from strop.memory.errors import NotFoundError

RUNS_ROOT_ENV = "STROP_RUNS_ROOT"
ROOT_PREFIX = f"${RUNS_ROOT_ENV}/"


class ModelFolderNotFoundError(NotFoundError):
    """A registered version's folder is not where its row says, on this host, from this directory."""


def runs_root() -> Path | None:
    """`STROP_RUNS_ROOT`, absolute, or None when unset or empty."""
    raw = os.environ.get(RUNS_ROOT_ENV, "").strip()
    return Path(os.path.abspath(os.path.expanduser(raw))) if raw else None


def stored_form(path: str | None) -> str | None:
    """What the registry writes for `path`: `$STROP_RUNS_ROOT/...` under the runs root, else absolute.

    Not `Path.resolve()`: a symlinked shared mount must stay the path the user gave, not this host's target.
    """
    if path is None or path == "" or path.startswith(ROOT_PREFIX):
        return path
    absolute = os.path.abspath(os.path.expanduser(path))
    root = runs_root()
    if root is not None and _under(Path(absolute), root):
        rel = os.path.relpath(absolute, root)
        return ROOT_PREFIX + ("" if rel == "." else rel)
    return absolute


def candidates(stored: str, db_dir: Path | None = None) -> list[Path]:
    """The folders a stored path may name, in the order they are tried (see the module docstring)."""
    if stored.startswith(ROOT_PREFIX):
        root = runs_root()
        return [] if root is None else [root / stored.removeprefix(ROOT_PREFIX)]
    path = Path(stored).expanduser()
    if path.is_absolute():
        return [path]
    bases = [runs_root(), Path.cwd(), db_dir]
    out: list[Path] = []
    for base in bases:
        if base is not None and (folder := Path(os.path.abspath(base / path))) not in out:
            out.append(folder)
    return out


def resolved(stored: str | None, db_dir: Path | None = None) -> str | None:
    """The folder a stored path names on this host, as an absolute path; the stored text when none is found.

    Lenient, for reads: listing or promoting a version needs no folder. `locate` is the strict form. Only
    legacy relative rows cost a disk lookup; absolute and runs-root rows are read as written.
    """
    if stored is None or stored == "":
        return stored
    found = candidates(stored, db_dir)
    if stored.startswith(ROOT_PREFIX) or Path(stored).expanduser().is_absolute():
        return str(found[0]) if found else stored
    return next((str(folder) for folder in found if folder.exists()), stored)


def locate(stored: str, *, what: str, version: str, db_dir: Path | None = None) -> Path:
    """The existing folder `stored` names, else ModelFolderNotFoundError naming what was tried and the fix."""
    found = candidates(stored, db_dir)
    for folder in found:
        if folder.exists():
            return folder
    raise ModelFolderNotFoundError(missing_message(stored, what=what, version=version, tried=found))


def missing_message(
    stored: str, *, what: str, version: str | None = None, tried: Sequence[Path] | None = None
) -> str:
    """One line: which folder is missing, where it was looked for, and the setting or command that fixes it.

    `version` names the registered version when the caller knows it (engines that are handed a bare path
    do not)."""
    tried = candidates(stored) if tried is None else tried
    looked = ", ".join(str(p) for p in tried)
    who = f"{version}: " if version else ""
    if stored.startswith(ROOT_PREFIX):
        if runs_root() is None:
            return (
                f"{who}the {what} folder is stored relative to the runs root ({stored}) and {RUNS_ROOT_ENV} "
                f"is not set here: set {RUNS_ROOT_ENV} to this host's copy of the runs root"
            )
        return (
            f"{who}no {what} folder at {looked} (stored as {stored}): set {RUNS_ROOT_ENV} to the folder "
            "that holds it on this host, or restore the folder"
        )
    if Path(stored).expanduser().is_absolute():
        return (
            f"{who}no {what} folder at {stored}: it was moved or deleted, or this host does not see that disk; "
            f"restore it there, or share the runs folder and register versions with {RUNS_ROOT_ENV} set "
            "(docs/store.md, 'Where model versions live')"
        )
    return (
        f"{who}no {what} folder for the relative path {stored!r} (looked in {looked}): a registry row from "
        f"before strop stored absolute paths is relative to the directory its run was started in; set "
        f"{RUNS_ROOT_ENV} to that directory (the one holding runs/), or run from there"
    )


def _under(path: Path, root: Path) -> bool:
    try:
        return os.path.commonpath([path, root]) == str(root)
    except ValueError:  # different drives
        return False
