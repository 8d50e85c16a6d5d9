"""The `openai` engine following promotions on the server it calls: LoRA versions by vLLM's dynamic LoRA
endpoints, full-weights versions by a server restarted on them.

A LoRA candidate is posted to `/v1/load_lora_adapter` (vLLM: started with `--enable-lora` and
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; `strop serve`: STROP_ALLOW_RUNTIME_LORA_UPDATING=true) under the
version's name, and requests then name it as their `model`. The adapter path must be readable by the server's
host (a shared filesystem, or the same path copied there). A version that is already loaded (another worker
posted it first) is fine. A full-weights version cannot be loaded over HTTP: the server is restarted on it
(docs/serving.md gives the commands), and `reload` then finds its name in `/v1/models`; until then it fails
naming the restart. Against `strop serve --follow LINEAGE` (asked for by the lineage's name) there is nothing
to do: that server swaps by itself.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai

from strop.agents.engines.base import EngineError


async def served_names(client: openai.AsyncOpenAI) -> list[str]:
    """The model names the server answers to now (GET /v1/models)."""
    page = await client.models.list()
    return [m.id for m in page.data]


async def follows_itself(client: openai.AsyncOpenAI, name: str) -> bool:
    """Whether the server is `strop serve --follow NAME`: it swaps to each promoted version by itself (its
    /v1/models card is the current version, with the lineage as `root`), so a client reload has nothing to do."""
    page = await client.models.list()
    for m in page.data:
        root = (m.model_extra or {}).get("root")
        if m.owned_by == "strop" and root == name and m.id != name:
            return True
    return False


async def load_adapter(client: openai.AsyncOpenAI, name: str, path: str, base_url: str) -> None:
    """Load `path` into the running server as `name`; one already loaded under that name counts as loaded."""
    try:
        await client.post(
            "/load_lora_adapter", cast_to=httpx.Response, body={"lora_name": name, "lora_path": path}
        )
    except openai.APIStatusError as e:
        text = _message(e)
        if e.status_code == 400 and "already" in text.lower():
            return
        if e.status_code in (404, 405):
            raise EngineError(
                f"{base_url} does not load LoRA adapters at runtime ({e.status_code}: {text}). Start vLLM with "
                "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or `strop serve` with "
                "STROP_ALLOW_RUNTIME_LORA_UPDATING=true; or follow the lineage on the server itself "
                "(`strop serve --follow LINEAGE`)"
            ) from e
        raise EngineError(
            f"{base_url} could not load the adapter {path} as {name!r} ({e.status_code}: {text}); the path must "
            "be readable on the server's host"
        ) from e


async def unload_adapter(client: openai.AsyncOpenAI, name: str) -> bool:
    """Unload `name`; False when the server did not have it (or has no such endpoint)."""
    try:
        await client.post("/unload_lora_adapter", cast_to=httpx.Response, body={"lora_name": name})
    except openai.APIStatusError:
        return False
    return True


def restart_needed(base_url: str, model_path: str, names: list[str]) -> EngineError:
    return EngineError(
        f"{base_url} serves {', '.join(repr(n) for n in names) or 'nothing'}, not the full-weights version "
        f"{model_path}: weights that are not a LoRA adapter need the server restarted on them (vLLM: `vllm "
        f"serve {model_path} --enable-lora`; strop: `strop serve {model_path}`, or `strop serve --follow "
        "LINEAGE`, which swaps by itself); the next reload then finds it"
    )


def _message(e: openai.APIStatusError) -> str:
    body: Any = e.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
    return e.message or str(e)
