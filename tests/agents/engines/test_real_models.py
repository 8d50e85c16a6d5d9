"""The hf engine on the real cached models: the pre-trained tiny model and SmolLM2-135M."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner

from strop.agents.engines import FinishReason, GenerationRequest, load_engine


@pytest.mark.slow
async def test_tiny_model_through_load_engine(tiny_model_path: Path) -> None:
    engine = load_engine(str(tiny_model_path), max_batch_size=8)
    requests = [
        GenerationRequest.chat(f"What is {a} + {a}?", max_tokens=24, temperature=0, stop=["\n"])
        for a in range(10, 18)
    ]
    results = await asyncio.gather(*(engine.generate([r]) for r in requests))
    assert engine.stats.mean_batch_size > 1
    for [[c]] in results:
        assert "\n" not in c.text
        assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids) > 0
        assert c.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    await engine.close()


@pytest.mark.slow
@pytest.mark.smollm2
async def test_smollm2_chat_generation(smollm2_path: Path) -> None:
    engine = load_engine(str(smollm2_path))
    assert engine.context_length >= 2048
    [[c]] = await engine.generate(
        [GenerationRequest.chat("What is 2 + 3? Answer with a number.", max_tokens=12, temperature=0)]
    )
    assert c.text.strip(), "SmolLM2 should say something"
    assert engine.tokenizer.decode(c.token_ids, skip_special_tokens=True).startswith(c.text)
    assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
    assert all(lp <= 0 for lp in c.logprobs)
    await engine.close()


def test_serve_command_reports_an_unknown_model() -> None:
    from strop.cli import app

    result = CliRunner().invoke(app, ["serve", "no-such-model-anywhere", "--port", "1"])
    assert result.exit_code == 1
    assert "strop models" in result.output
