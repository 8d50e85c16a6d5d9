"""Who acts: model engines, LangGraph loops, the episode runner, evaluation and the CLI."""

import os as _os

# No machine strop runs on may reach a model hub: fail fast instead of hanging on a download.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Before torch loads: OpenMP threads that spin while waiting make torch up to 9x slower on a CPU shared
# with other processes (measured: 4 vs 35 tok/s); sleeping waiters cost little on an idle one.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
