"""The local model cache and model-id resolution.

No machine strop runs on can reach a model hub, so a model id is either the name of a folder in the local
cache (built or imported once by a `strop models ...` command) or a path to a local Hugging Face folder.
This module imports only the standard library: engines, the CLI and `strop --help` all resolve ids.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CACHE_ENV = "STROP_MODEL_CACHE"
META_FILE = "meta.json"
TINY = "tiny"
SMOLLM2 = "smollm2-135m"

ALIASES: dict[str, str] = {"smollm2": SMOLLM2, "smollm2-135m-instruct": SMOLLM2}
"""Short names users type for cache entries."""

MAKERS: dict[str, str] = {TINY: "strop models build-tiny", SMOLLM2: "strop models import smollm2"}
"""The command that creates each built-in cache entry, named in every 'not found' error."""

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class ModelNotFoundError(LookupError):
    """A model id names neither a cache entry nor a usable local folder."""


class NotAModelError(ModelNotFoundError):
    """A folder exists but is not a loadable Hugging Face model (no config.json or no weights)."""


class ModelFolderMissingError(ModelNotFoundError):
    """A registered version whose folder this host cannot find: moved, on another disk, or an old relative row."""


def located_version(store: Any, version: Any) -> Any:
    """`version` with its folders found on this host (absolute), or ModelFolderMissingError naming the folders
    tried and the setting that fixes it: a command fails on one line before it loads anything."""
    from strop.memory.paths import ModelFolderNotFoundError

    try:
        return store.locate_model(version.id)
    except ModelFolderNotFoundError as e:
        raise ModelFolderMissingError(str(e)) from e


def missing_folder_message(path: str | Path, what: str = "model") -> str:
    """Why a folder an engine was handed is missing, naming the fix: the builder for a cache entry, the runs
    root for a registry path (memory/paths.py), never the tiny-model text for a folder a training run wrote."""
    folder = Path(path).expanduser()
    cache = model_cache_dir()
    if folder.is_absolute() and folder.parent == cache and folder.name in MAKERS:
        return f"no {what} folder at {folder}: run `{MAKERS[folder.name]}` to create it"
    from strop.memory.paths import missing_message

    return missing_message(str(path), what=what) + " (`strop models list` shows the registry and the cache)"


def model_cache_dir() -> Path:
    """Where built and imported models live; STROP_MODEL_CACHE moves it (tests, shared disks)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "strop" / "models"


def canonical_name(model_id: str) -> str:
    """The cache name an id or alias refers to ('smollm2' -> 'smollm2-135m')."""
    return ALIASES.get(model_id.strip().lower(), model_id.strip())


def missing_parts(folder: Path) -> list[str]:
    """What a folder lacks to load as a Hugging Face causal LM; empty when it looks complete."""
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append("weights (model.safetensors or pytorch_model.bin)")
    return missing


def _check_model_folder(folder: Path, model_id: str) -> Path:
    missing = missing_parts(folder)
    if missing:
        hint = f" Rebuild it with `{MAKERS[folder.name]} --force`." if folder.name in MAKERS else ""
        raise NotAModelError(
            f"model {model_id!r}: folder {folder} is not a Hugging Face model: missing {', '.join(missing)}.{hint}"
        )
    return folder.resolve()


def cached_names() -> list[str]:
    """Names of complete models in the cache, sorted."""
    root = model_cache_dir()
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and not missing_parts(p)
    )


def resolve_model(model_id: str) -> Path:
    """The folder a model id refers to: a cache name (or alias) first, else a local Hugging Face folder.

    Cache names win over relative paths so 'tiny' means the cache entry even if a folder called tiny exists
    in the working directory; write './tiny' for that one.
    """
    if not model_id or not model_id.strip():
        raise ModelNotFoundError(
            "empty model id: give a cache name (e.g. 'tiny', 'smollm2-135m') or a folder path"
        )
    name = canonical_name(model_id)
    is_plain_name = "/" not in name and os.sep not in name and not name.startswith((".", "~"))
    if is_plain_name:
        entry = model_cache_dir() / name
        if entry.is_dir():
            return _check_model_folder(entry, model_id)
    path = Path(model_id).expanduser()
    if path.is_dir():
        return _check_model_folder(path, model_id)
    if path.exists():
        raise NotAModelError(
            f"model {model_id!r}: {path} is a file; a model is a folder with config.json and weights"
        )
    if not is_plain_name:  # a folder path, often a registry version's: the cache builders are not the fix
        raise ModelNotFoundError(f"model {model_id!r}: {missing_folder_message(model_id)}")
    if name in MAKERS:
        raise ModelNotFoundError(
            f"model {model_id!r} is not in the cache ({model_cache_dir()}): run `{MAKERS[name]}` to create it"
        )
    have = cached_names()
    listing = ", ".join(have) if have else "nothing yet"
    raise ModelNotFoundError(
        f"unknown model {model_id!r}: no such cache entry and no such folder. In the cache "
        f"({model_cache_dir()}): {listing}. Built-ins: `strop models build-tiny` makes 'tiny', "
        f"`strop models import smollm2` makes 'smollm2-135m'. A local Hugging Face model folder path "
        f"(with config.json and weights) also works."
    )


def cached_entries() -> list[dict[str, Any]]:
    """Each cache entry's meta.json plus its name and path, for listings (no torch needed)."""
    root = model_cache_dir()
    return [{**read_meta(root / name), "name": name, "path": root / name} for name in cached_names()]


@dataclass
class ModelMeta:
    """What `meta.json` records about a cache entry, so `strop models list` needs no torch."""

    name: str = field(metadata={"description": "Cache name of the entry."})
    source: str = field(
        metadata={"description": "Where the weights came from (a GGUF file, 'built from scratch')."}
    )
    created: str = field(metadata={"description": "ISO-8601 UTC time the entry was written."})
    parameters: int = field(metadata={"description": "Number of model parameters."})
    extra: dict[str, Any] = field(
        default_factory=dict,
        metadata={"description": "Builder-specific facts, e.g. held-out accuracy, seed."},
    )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "created": self.created,
            "parameters": self.parameters,
            **self.extra,
        }


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def write_meta(folder: Path, meta: ModelMeta) -> None:
    (folder / META_FILE).write_text(json.dumps(meta.to_json(), indent=2) + "\n")


def read_meta(folder: Path) -> dict[str, Any]:
    """The entry's meta.json, or {} for folders strop did not write (a user's own HF folder)."""
    path = folder / META_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); rebuild the entry with --force") from exc
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Hold an exclusive lock for building one cache entry, so parallel test workers build it once."""
    root = model_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def staging_dir(name: str) -> Iterator[Path]:
    """A scratch folder next to the entry, renamed into place only on success.

    A crash mid-build then leaves no half-written folder that resolve_model would take for a model.
    """
    root = model_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        yield tmp
        final = root / name
        # Swap by renames so a reader sees the old entry or the new one, never a missing or half one.
        old = root / f".{name}.old.{os.getpid()}"
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; a cache is shared with other users and the jail
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
