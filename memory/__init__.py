"""What is remembered: the SQL trajectory store. A leaf package: imports nothing from the other four.

`memory.Store` is the API every loop and training job uses: one object made of public parts that each own
the SQL of one concern (`store.episodes`, `store.examples`, `store.registry`, `store.queue`, ...; store.py
lists them and says how the flat names `store.write_episode`, ... come about). SQLAlchemy is imported on
first use of these names, not at `import memory`, so light modules (the CLI) can import record types
cheaply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from strop.memory.errors import (
    EpisodeClosedError,
    EpisodeStateError,
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
    from strop.memory.db import resolve_db_url
    from strop.memory.export import to_dataset
    from strop.memory.store import Store

_LAZY = {
    "Store": "strop.memory.store",
    "resolve_db_url": "strop.memory.db",
    "to_dataset": "strop.memory.export",
}

__all__ = [
    "EpisodeClosedError",
    "EpisodeStateError",
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
    raise AttributeError(f"module 'strop.memory' has no attribute {name!r}")
