"""`HFEngine.from_model`: an engine over a model object someone else holds (a trainer), sharing its weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from strop.agents.engines import GenerationRequest
from strop.agents.engines.hf import HFEngine


async def test_from_model_samples_from_the_live_weights(random_tiny_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(random_tiny_path)
    tokenizer = AutoTokenizer.from_pretrained(random_tiny_path)
    tokenizer.padding_side = "right"
    engine = HFEngine.from_model(model, tokenizer, model_version="live")
    request = GenerationRequest.chat("What is 12 + 34?", max_tokens=4, temperature=0)
    [[before]] = await engine.generate([request])
    assert engine.model is model and before.model_version == "live" and len(before.token_ids) > 0
    assert tokenizer.padding_side == "right"  # the owner's tokenizer is left as it was

    with torch.no_grad():  # the owner changes its weights in place: the next batch sees them, no reload
        model.lm_head.weight.zero_()  # every logit 0: a uniform next-token distribution
    [[after]] = await engine.generate([request])
    assert after.logprobs is not None and before.logprobs is not None
    assert (
        after.logprobs[0] == pytest.approx(-math.log(model.config.vocab_size), abs=1e-4) != before.logprobs[0]
    )
    await engine.close()
