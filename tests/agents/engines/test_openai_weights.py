"""The `openai` engine following promotions on the server it calls, through a real `strop serve` app that answers
vLLM's dynamic LoRA endpoints: a LoRA version is loaded by the endpoint and then answers token for token as the
in-process engine with that adapter; a rollback unloads it; full weights the server does not serve name the
restart; a server without runtime LoRA names the switch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from strop.agents.engines import EngineError, GenerationRequest
from strop.agents.engines.hf import HFEngine
from strop.agents.engines.openai import OpenAIEngine
from strop.agents.server import create_app
from tests.servers import ThreadServer

ASK = GenerationRequest.chat("What is 12 + 34?", temperature=0, max_tokens=8)


@pytest.fixture(scope="module")
def adapter(random_tiny_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(random_tiny_path)
    folder = tmp_path_factory.mktemp("openai-adapter")
    # init_lora_weights=False: a random (non-zero) update, so the adapter visibly answers differently
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(folder)
    return folder


def _serve(random_tiny_path: Path, runtime_lora: bool) -> ThreadServer:
    """Served under its path, as `vllm serve PATH` names a model."""
    engine = HFEngine(random_tiny_path, model_version=str(random_tiny_path))
    return ThreadServer(create_app(engine, owns_engine=True, runtime_lora=runtime_lora))


@pytest.fixture
def lora_server(random_tiny_path: Path) -> Iterator[ThreadServer]:
    server = _serve(random_tiny_path, True)
    yield server
    server.stop()


async def _ids(engine: object) -> list[int]:
    [[c]] = await engine.generate([ASK])  # type: ignore[attr-defined]
    return c.token_ids


async def test_openai_reload_follows_a_lora_promotion_then_a_rollback(
    lora_server: ThreadServer, random_tiny_path: Path, adapter: Path, tmp_path: Path
) -> None:
    remote = OpenAIEngine(lora_server.url, str(random_tiny_path))
    base_local, lora_local = HFEngine(random_tiny_path), HFEngine(random_tiny_path, adapter_path=adapter)
    try:
        base = await _ids(remote)
        assert base == await _ids(base_local)
        await remote.reload(random_tiny_path, adapter_path=adapter, model_version="rt-c1")
        assert remote.model_version == "rt-c1"
        [[c]] = await remote.generate([ASK])
        assert c.model_version == "rt-c1" and c.token_ids == await _ids(lora_local) != base
        await remote.reload(random_tiny_path, adapter_path=adapter, model_version="rt-c1")  # loaded: a no-op
        await remote.reload(random_tiny_path, model_version="rt")  # the rollback: back on the base
        assert await _ids(remote) == base and remote.model == str(random_tiny_path)
        with pytest.raises(EngineError, match="restarted on them"):
            await remote.reload(tmp_path / "rt-full-v2", model_version="rt-v2")
    finally:
        for engine in (remote, base_local, lora_local):
            await engine.close()


async def test_openai_worker_engine_loads_its_lora_version_before_the_first_request(
    lora_server: ThreadServer, random_tiny_path: Path, adapter: Path
) -> None:
    """What a rollout worker builds for a registry version with `--engine openai`."""
    from strop.agents.runner import load_version_engine
    from strop.memory.records import ModelVersionRecord

    version = ModelVersionRecord(
        name="rt-c1", lineage="rt", path=str(random_tiny_path), adapter_path=str(adapter)
    )
    remote = load_version_engine(version, backend="openai", base_url=lora_server.url)
    lora_local = HFEngine(random_tiny_path, adapter_path=adapter)
    try:
        assert remote.model_version == version.id
        assert await _ids(remote) == await _ids(lora_local)
    finally:
        await remote.close()
        await lora_local.close()


async def test_openai_reload_names_the_switch_when_the_server_loads_no_adapters(
    random_tiny_path: Path, adapter: Path
) -> None:
    server = _serve(random_tiny_path, False)
    remote = OpenAIEngine(server.url, str(random_tiny_path))
    try:
        with pytest.raises(EngineError, match="STROP_ALLOW_RUNTIME_LORA_UPDATING=true"):
            await remote.reload(random_tiny_path, adapter_path=adapter, model_version="rt-c1")
    finally:
        await remote.close()
        server.stop()


async def test_openai_reload_leaves_a_following_strop_serve_to_swap_by_itself(
    random_tiny_path: Path, adapter: Path
) -> None:
    """`strop serve --follow rt` lists its current version with the lineage as root: the client keeps asking
    for the lineage, and its completions name the version that answered."""
    engine = HFEngine(random_tiny_path, model_version="rt-base")
    server = ThreadServer(create_app(engine, aliases=("rt",), owns_engine=True, runtime_lora=True))
    remote = OpenAIEngine(server.url, "rt", tokenizer=str(random_tiny_path))
    try:
        await remote.reload(random_tiny_path, adapter_path=adapter, model_version="rt-c1")
        [[c]] = await remote.generate([ASK])
        assert remote.model == "rt" and remote.model_version == "rt-c1" and c.model_version == "rt-base"
        assert engine.adapter_path is None  # nothing was loaded behind the follower's back
    finally:
        await remote.close()
        server.stop()
