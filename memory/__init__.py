"""What is remembered: the SQL trajectory store. A leaf package: imports nothing from the other four.

`memory.Store` is the API every loop and training job uses; SQLAlchemy is imported on first use of these
names, not at `import memory`, so light modules (the CLI) can import record types cheaply.
"""

from __future__ import annotations

import os as _os
from typing import TYPE_CHECKING, Any

# No machine strop runs on may reach a model hub: fail fast instead of hanging on a download.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from memory.errors import (
    HeldoutLeakError,
    InvalidTransitionError,
    NotFoundError,
    SchemaError,
    SchemaOutdatedError,
    StoreConnectionError,
    StoreError,
    StoreLockedError,
)

if TYPE_CHECKING:
    from memory.db import resolve_db_url
    from memory.export import to_dataset
    from memory.store import Store

_LAZY = {"Store": "memory.store", "resolve_db_url": "memory.db", "to_dataset": "memory.export"}

__all__ = [
    "HeldoutLeakError",
    "InvalidTransitionError",
    "NotFoundError",
    "SchemaError",
    "SchemaOutdatedError",
    "Store",
    "StoreConnectionError",
    "StoreError",
    "StoreLockedError",
    "resolve_db_url",
    "to_dataset",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'memory' has no attribute {name!r}")
