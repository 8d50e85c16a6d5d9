"""`strop serve --follow`: a promotion in the registry (another Store, as another process would hold) during a
stream; the stream finishes on the old version, the next request gets the new one. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest
from typer.testing import CliRunner

from strop.agents.engines.hf import HFEngine
from strop.agents.server import create_app
from strop.agents.server_follow import RegistryFollower, current_version
from strop.memory import Store
from strop.memory.records import ModelStatus, ModelVersionRecord
from strop.training.promotion import promote
from tests.agents.engines.test_serving import _Server


@pytest.fixture(scope="module")
def adapter_path(random_tiny_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(random_tiny_path)
    folder = tmp_path_factory.mktemp("adapter")
    # init_lora_weights=False: a random (non-zero) update, so the new version visibly answers differently
    get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    ).save_pretrained(folder)
    return folder


def _register(store: Any, random_tiny_path: Path, adapter_path: Path) -> tuple[Any, Any]:
    base = store.register_model(
        ModelVersionRecord(name="rt", lineage="rt", path=str(random_tiny_path), status=ModelStatus.BASE)
    )
    cand = store.register_model(
        ModelVersionRecord(
            name="rt-c1",
            lineage="rt",
            path=str(random_tiny_path),
            adapter_path=str(adapter_path),
            parent_id=base.id,
        )
    )
    return base, cand


def test_a_promotion_during_a_stream_swaps_after_it(
    db_url: str, random_tiny_path: Path, adapter_path: Path
) -> None:
    store = Store(db_url)
    base, cand = _register(store, random_tiny_path, adapter_path)
    version = current_version(store, "rt")
    assert version.id == base.id
    engine = HFEngine(version.path, model_version=version.name)
    follower = RegistryFollower(engine, store, "rt", version, poll_s=0.05)
    server = _Server(create_app(engine, aliases=("rt",), follower=follower))
    try:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
        probe: dict[str, Any] = dict(model="rt", prompt="the quick", max_tokens=4, temperature=0, logprobs=0)
        before = client.completions.create(**probe)
        assert before.model == "rt"

        stream = client.completions.create(
            model="rt", prompt="the quick brown", max_tokens=200, temperature=0, stream=True
        )
        models = [next(iter(stream)).model]
        batches = engine.stats.batches
        other = Store(db_url)  # the promoting side holds its own connection, as `strop models promote` would
        promote(other, cand.id)
        other.close()
        assert engine.stats.batches == batches, (
            "the stream's batch ended before the promotion: nothing tested"
        )
        models += [chunk.model for chunk in stream]
        assert set(models) == {"rt"}, "a stream in flight must finish on the version it started on"

        deadline = time.monotonic() + 15
        while [m.id for m in client.models.list()] != ["rt-c1"]:
            assert time.monotonic() < deadline, "the follower never swapped to the promoted version"
            time.sleep(0.05)
        after = client.completions.create(**probe)
        assert after.model == "rt-c1" and follower.swaps == 1 and engine.stats.adapter_swaps == 1
        assert after.choices[0].logprobs.token_logprobs != before.choices[0].logprobs.token_logprobs
        assert client.completions.create(**{**probe, "model": "rt-c1"}).model == "rt-c1"
        with pytest.raises(openai.NotFoundError):  # the old version is no longer served
            client.completions.create(**{**probe, "model": "rt-base-gone"})
    finally:
        server.stop()
        store.close()


async def test_rollback_to_the_base_unmerges_the_adapter(
    tmp_path: Path, random_tiny_path: Path, adapter_path: Path
) -> None:
    """Adapter -> base on the same weights: a LoRA swap back, and the base answers exactly as before."""
    from strop.training.promotion import rollback

    store = Store(f"sqlite:///{tmp_path / 'strop.db'}")
    _, cand = _register(store, random_tiny_path, adapter_path)
    engine = HFEngine(random_tiny_path, model_version="rt")
    request = {"prompt": "the quick", "sampling": {"max_tokens": 6, "temperature": 0}}
    [[plain]] = await engine.generate([request])
    follower = RegistryFollower(engine, store, "rt", current_version(store, "rt"))
    promote(store, cand.id)
    assert await follower.check() and engine.model_version == "rt-c1"
    [[adapted]] = await engine.generate([request])
    rollback(store, "rt")
    assert await follower.check() and engine.model_version == "rt"
    [[again]] = await engine.generate([request])
    assert adapted.logprobs != plain.logprobs
    assert again.token_ids == plain.token_ids
    assert again.logprobs == pytest.approx(plain.logprobs, abs=1e-4)
    assert engine.stats.adapter_swaps == 2
    await engine.close()
    store.close()


def test_serve_cli_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    from strop.cli import app

    runner = CliRunner()
    both = runner.invoke(app, ["serve", "tiny", "--follow", "rt"])
    assert both.exit_code == 1 and "--follow" in both.output
    db = f"sqlite:///{tmp_path / 'strop.db'}"
    Store(db).close()
    missing = runner.invoke(app, ["serve", "--follow", "nope", "--db", db])
    assert missing.exit_code == 1 and "no lineage 'nope'" in missing.output
    bad = runner.invoke(app, ["serve", "tiny", "--engine", "llamacpp"])
    assert bad.exit_code == 1 and "unknown --engine" in bad.output
