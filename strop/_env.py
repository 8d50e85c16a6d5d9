"""Process-wide defaults that only strop's own entry points set (`strop ...`, the worker and launch mains).

`import strop` sets nothing: an application that embeds strop keeps its own hub access and thread settings,
and strop's model loading reads local folders only. strop's entry points own their process, so they set:
- HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE, HF_DATASETS_OFFLINE: no machine strop runs on may reach a model hub;
  fail fast instead of hanging on a download.
- OMP_WAIT_POLICY=PASSIVE: OpenMP threads that spin while waiting made torch up to 9x slower on a CPU shared
  with other processes (measured: 4 vs 35 tok/s); sleeping waiters cost little on an idle one.
Each is a default: a value the user exported wins. Call before torch or transformers are imported.
"""

from __future__ import annotations

import os

PROCESS_DEFAULTS: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
}


def set_process_defaults() -> None:
    """Set strop's process defaults (see the module docstring); only entry points call this."""
    for key, value in PROCESS_DEFAULTS.items():
        os.environ.setdefault(key, value)
