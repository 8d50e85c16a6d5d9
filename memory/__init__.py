"""What is remembered: the SQL trajectory store. A leaf package: imports nothing from the other four."""

import os as _os

# No machine strop runs on may reach a model hub: fail fast instead of hanging on a download.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
