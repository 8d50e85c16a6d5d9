"""Model engines behind one contract (`agents.engines.base`): `hf` (transformers), `openai` (any
OpenAI-compatible server) and `vllm`. Backends are imported only when chosen, so importing this package
costs nothing and a machine without vLLM can still use the others.
"""

from __future__ import annotations

from typing import Any

from strop.agents.engines.base import (
    Completion,
    Engine,
    EngineError,
    FinishReason,
    GenerationRequest,
    Message,
    PromptTooLongError,
    SamplingParams,
)

BACKENDS = ("hf", "openai", "vllm")

__all__ = [
    "BACKENDS",
    "Completion",
    "Engine",
    "EngineError",
    "FinishReason",
    "GenerationRequest",
    "Message",
    "PromptTooLongError",
    "SamplingParams",
    "load_engine",
]


def load_engine(model: str, backend: str = "hf", **options: Any) -> Engine:
    """Build an engine for `model`: a cache name ('tiny', 'smollm2-135m'), a local folder, or for `openai`
    the model name the server knows. `options` go to the backend's constructor (for `openai`: base_url...).
    """
    if backend == "hf":
        from strop.agents.engines.hf import HFEngine
        from strop.agents.models import resolve_model

        options.setdefault("model_version", model)
        return HFEngine(resolve_model(model), **options)
    if backend == "openai":
        from strop.agents.engines.openai import OpenAIEngine

        base_url = options.pop("base_url", None)
        if not base_url:
            raise EngineError(
                "the openai backend needs base_url, e.g. load_engine('tiny', 'openai', "
                "base_url='http://127.0.0.1:8000/v1') for a server started with `strop serve tiny`"
            )
        return OpenAIEngine(base_url, model, **options)
    if backend == "vllm":
        from strop.agents.engines.vllm import VLLMEngine
        from strop.agents.models import resolve_model

        options.setdefault("model_version", model)
        return VLLMEngine(resolve_model(model), **options)
    raise EngineError(f"unknown engine backend {backend!r}: choose one of {', '.join(BACKENDS)}")
