"""Models without a hub: the local model cache, model-id resolution, and the two embedded defaults.

`resolve_model` and the cache helpers are stdlib-only so engines and the CLI can call them cheaply;
`build_tiny` and `import_smollm2` load torch/transformers, so they are imported on first use.
"""

from __future__ import annotations

from typing import Any

from strop.agents.models.cache import (
    SMOLLM2,
    TINY,
    ModelNotFoundError,
    NotAModelError,
    cached_names,
    model_cache_dir,
    read_meta,
    resolve_model,
)

__all__ = [
    "SMOLLM2",
    "TINY",
    "ModelNotFoundError",
    "NotAModelError",
    "build_tiny",
    "cached_names",
    "import_smollm2",
    "model_cache_dir",
    "read_meta",
    "resolve_model",
]

_LAZY = {"build_tiny": "strop.agents.models.tiny", "import_smollm2": "strop.agents.models.smollm2"}


def __getattr__(name: str) -> Any:
    # PEP 562: keep torch out of `import agents.models` until a builder is actually used.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'strop.agents.models' has no attribute {name!r}")
