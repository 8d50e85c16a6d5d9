"""vLLM's dynamic LoRA endpoints on `strop serve`, so one client follows promotions on either server.

`POST /v1/load_lora_adapter {"lora_name", "lora_path"}` and `POST /v1/unload_lora_adapter {"lora_name"}` are
vLLM's (it answers them when started with `--enable-lora` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True); the
`openai` engine's `reload` posts a promoted adapter there and then asks for it by name. Loading an arbitrary
path into a server is a privilege, so here too the routes answer 404 unless the app was created with
`runtime_lora=True` or STROP_ALLOW_RUNTIME_LORA_UPDATING=true is set (the same switch as vLLM's, under strop's
name). One difference: vLLM holds many adapters side by side; `strop serve`'s engine serves one set of weights,
so loading swaps the served weights to the base plus that adapter (the engine's own LoRA swap: requests in
flight finish first) and the server then answers to `lora_name` only; unloading goes back to the base and its
name. With `--follow` the registry decides the weights, so these routes are refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from strop.agents.engines.base import Engine, EngineError

ENV_SWITCH = "STROP_ALLOW_RUNTIME_LORA_UPDATING"


class LoraAdapterRequest(BaseModel):
    """vLLM's load/unload body; fields vLLM has and strop does not need (load_inplace) are ignored."""

    lora_name: str = Field(min_length=1, description="The name requests use as `model` once it is loaded.")
    lora_path: str | None = Field(None, description="The adapter folder, as the server's host sees it.")


def runtime_lora_allowed(flag: bool | None) -> bool:
    """The app's setting, or (None) the environment switch, read when the app is created."""
    if flag is not None:
        return flag
    return os.environ.get(ENV_SWITCH, "").strip().lower() in ("1", "true", "yes")


def add_lora_routes(
    app: FastAPI, engine: Engine, *, enabled: bool, following: bool, error: Callable[..., JSONResponse]
) -> None:
    """The two routes; `error(status, message, param=, code=)` is the server's OpenAI-style error."""
    base_path = getattr(engine, "model_path", None)
    base_name = engine.model_version

    def refused() -> JSONResponse | None:
        if not enabled:
            return error(
                404,
                f"runtime LoRA loading is off: start the server with {ENV_SWITCH}=true (create_app("
                "runtime_lora=True)) to let clients load adapters",
                code="runtime_lora_off",
            )
        if following:
            return error(
                400,
                "this server follows a lineage (--follow): the registry decides its weights",
                code="following",
            )
        if base_path is None or not hasattr(engine, "reload"):
            return error(400, f"the {type(engine).__name__} engine cannot load adapters", code="no_reload")
        return None

    @app.post("/v1/load_lora_adapter", response_model=None)
    async def load_lora_adapter(body: LoraAdapterRequest) -> Any:
        if (no := refused()) is not None:
            return no
        if not body.lora_path:
            return error(
                400, "lora_path is required: the adapter folder on the server's host", param="lora_path"
            )
        current = getattr(engine, "adapter_path", None)
        if (
            engine.model_version == body.lora_name
            and current is not None
            and Path(current) == Path(body.lora_path)
        ):
            return PlainTextResponse(f"LoRA adapter '{body.lora_name}' is already loaded.")
        try:
            await engine.reload(base_path, adapter_path=body.lora_path, model_version=body.lora_name)  # type: ignore[attr-defined]
        except EngineError as e:
            return error(400, f"could not load the adapter {body.lora_path}: {e}", param="lora_path")
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter", response_model=None)
    async def unload_lora_adapter(body: LoraAdapterRequest) -> Any:
        if (no := refused()) is not None:
            return no
        if getattr(engine, "adapter_path", None) is None or engine.model_version != body.lora_name:
            return error(
                404,
                f"no adapter named {body.lora_name!r} is loaded (serving {engine.model_version!r})",
                param="lora_name",
            )
        await engine.reload(base_path, adapter_path=None, model_version=base_name)  # type: ignore[attr-defined]
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
