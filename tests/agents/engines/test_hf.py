"""The hf engine through the real path: a real (tiny) Llama, real tokenizer, real `generate`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from strop.agents.engines import (
    EngineError,
    GenerationRequest,
    PromptTooLongError,
    SamplingParams,
    load_engine,
)
from strop.agents.engines.base import FinishReason, Message
from strop.agents.engines.hf import HFEngine


@pytest.fixture(scope="module")
def engine(random_tiny_path: Path) -> HFEngine:
    return HFEngine(random_tiny_path, model_version="random-tiny", batch_wait_ms=20)


def _chat(text: str, **sampling: object) -> GenerationRequest:
    return GenerationRequest.chat(text, **sampling)


async def test_concurrent_requests_are_coalesced_into_batches(engine: HFEngine) -> None:
    before_batches, before_rows = engine.stats.batches, engine.stats.rows
    results = await asyncio.gather(
        *(engine.generate([_chat(f"What is {i} + 2?", max_tokens=8, temperature=0)]) for i in range(16))
    )
    batches = engine.stats.batches - before_batches
    assert engine.stats.rows - before_rows == 16
    assert 16 / batches > 1, f"16 concurrent requests ran in {batches} batches: no coalescing"
    assert all(len(r) == 1 and len(r[0]) == 1 for r in results)


async def test_n_samples_with_token_ids_and_logprobs(engine: HFEngine) -> None:
    request = _chat("What is 12 + 34?", n=4, max_tokens=12, temperature=1.0, seed=3)
    [completions] = await engine.generate([request])
    assert len(completions) == 4
    assert len({tuple(c.token_ids) for c in completions}) > 1, "n samples should differ at temperature 1"
    for c in completions:
        assert c.prompt_token_ids == engine.prompt_ids(request)
        assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids) > 0
        assert all(lp <= 0 for lp in c.logprobs)
        assert c.model_version == "random-tiny"


async def test_logprobs_are_those_of_the_sampling_distribution(engine: HFEngine) -> None:
    """The first token's log-prob must match log_softmax(logits / T) of a plain forward pass."""
    for temperature in (0.0, 0.7):
        request = _chat("the quick brown", max_tokens=1, temperature=temperature, seed=11)
        [[c]] = await engine.generate([request])
        with torch.no_grad():
            logits = engine.model(torch.tensor([c.prompt_token_ids])).logits[0, -1].float()
        t = temperature if temperature > 0 else 1.0
        expected = torch.log_softmax(logits / t, dim=-1)[c.token_ids[0]].item()
        assert c.logprobs is not None
        assert c.logprobs[0] == pytest.approx(expected, abs=1e-4)
        if temperature == 0:
            assert c.token_ids[0] == int(logits.argmax())


async def test_seeds_are_reproducible_and_distinct(engine: HFEngine) -> None:
    def request(seed: int) -> GenerationRequest:
        return _chat("fox", n=2, max_tokens=10, temperature=1.0, seed=seed)

    [a] = await engine.generate([request(7)])
    [b] = await engine.generate([request(7)])
    [c] = await engine.generate([request(8)])
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


async def test_rows_in_a_mixed_batch_keep_their_own_parameters(engine: HFEngine) -> None:
    greedy = _chat("What is 5 + 5?", max_tokens=10, temperature=0)
    [[alone]] = await engine.generate([greedy])
    mixed = await engine.generate(
        [
            _chat("a much longer prompt about the lazy dog", n=3, max_tokens=4, temperature=1.5, top_p=0.9),
            greedy,
        ]
    )
    assert mixed[1][0].token_ids == alone.token_ids
    assert all(len(c.token_ids) <= 4 for c in mixed[0])


async def test_stop_strings_trim_text_and_token_ids(engine: HFEngine) -> None:
    [[free]] = await engine.generate([_chat("What is 1 + 1?", max_tokens=24, temperature=0)])
    text = free.text
    assert len(text) > 6, "need some text to pick a stop string from"
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    [[stopped]] = await engine.generate([_chat("What is 1 + 1?", max_tokens=24, temperature=0, stop=[stop])])
    assert stopped.text == text[: text.find(stop)]
    assert stopped.finish_reason == FinishReason.STOP
    assert stopped.token_ids == free.token_ids[: len(stopped.token_ids)]
    assert len(stopped.token_ids) < len(free.token_ids)
    assert stop in engine.tokenizer.decode(stopped.token_ids)
    assert stopped.logprobs == free.logprobs[: len(stopped.token_ids)]


async def test_max_tokens_and_finish_reason(engine: HFEngine) -> None:
    [[c]] = await engine.generate([_chat("hello", max_tokens=5, temperature=0)])
    assert len(c.token_ids) <= 5
    ended_by_eos = bool(c.token_ids) and c.token_ids[-1] == engine.tokenizer.eos_token_id
    assert c.finish_reason == (FinishReason.STOP if ended_by_eos else FinishReason.LENGTH)


async def test_raw_prompt_skips_chat_template(engine: HFEngine) -> None:
    request = GenerationRequest(prompt="What is 3 + 4?", sampling=SamplingParams(max_tokens=3, temperature=0))
    [[c]] = await engine.generate([request])
    assert engine.tokenizer.decode(c.prompt_token_ids, skip_special_tokens=True) == "What is 3 + 4?"


async def test_prompt_too_long_names_both_lengths_and_the_fix(engine: HFEngine) -> None:
    long_prompt = "the quick brown fox " * 100
    with pytest.raises(PromptTooLongError) as err:
        await engine.generate([_chat(long_prompt, max_tokens=16)])
    n = len(engine.prompt_ids(_chat(long_prompt)))
    message = str(err.value)
    assert f"{n} tokens" in message and str(engine.context_length) in message
    assert "max_tokens" in message and "Shorten" in message


def test_invalid_sampling_parameters_name_the_field() -> None:
    with pytest.raises(ValidationError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValidationError, match="top_p"):
        GenerationRequest.chat("hi", top_p=0)
    with pytest.raises(ValidationError, match="max_tokens"):
        SamplingParams(max_tokens=0)


def test_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(EngineError, match=r"not a model folder.*config\.json.*strop models"):
        HFEngine(tmp_path)
    with pytest.raises(EngineError, match=r"no model folder.*strop models"):
        HFEngine(tmp_path / "missing")
    from strop.agents.models import NotAModelError

    with pytest.raises(NotAModelError, match=r"config\.json"):
        load_engine(str(tmp_path))


def test_unknown_backend_lists_the_valid_ones() -> None:
    with pytest.raises(EngineError, match="hf, openai, vllm"):
        load_engine("tiny", backend="onnx")


def test_unknown_model_id_names_the_command() -> None:
    from strop.agents.models import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="strop models"):
        load_engine("no-such-model-anywhere")


async def test_reload_swaps_the_version(random_tiny_path: Path) -> None:
    engine = HFEngine(random_tiny_path, model_version="v1")
    [[before]] = await engine.generate([_chat("hi", max_tokens=3, temperature=0)])
    await engine.reload(random_tiny_path, model_version="v2")
    [[after]] = await engine.generate([_chat("hi", max_tokens=3, temperature=0)])
    assert (before.model_version, after.model_version) == ("v1", "v2")
    assert before.token_ids == after.token_ids
    await engine.close()
    with pytest.raises(EngineError, match="closed"):
        await engine.generate([_chat("hi")])


async def test_lora_adapter_is_applied_and_swapped_by_reload(random_tiny_path: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(random_tiny_path)
    # init_lora_weights=False: a random (non-zero) update, so the adapter visibly changes the logits
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")

    request = _chat("What is 1 + 2?", max_tokens=4, temperature=0)
    engine = HFEngine(random_tiny_path, model_version="base")
    [[plain]] = await engine.generate([request])
    await engine.reload(random_tiny_path, adapter_path=tmp_path / "adapter", model_version="lora")
    [[adapted]] = await engine.generate([request])
    assert adapted.model_version == "lora"
    assert adapted.logprobs != plain.logprobs
    await engine.close()
    with pytest.raises(EngineError, match=r"adapter_config\.json"):
        HFEngine(random_tiny_path, adapter_path=tmp_path)


async def test_a_conversation_continues_from_the_exact_token_ids(engine: HFEngine) -> None:
    """A later turn reads the earlier turn's ids verbatim, then only the new turn's template text; for a turn
    that ended at EOS this is what rendering the whole conversation gives, without re-tokenizing the answer."""
    first = GenerationRequest.chat("What is 12 + 7?", max_tokens=12, temperature=0.0)
    [[c]] = await engine.generate([first])
    follow = [Message(role="user", content="Check your answer.")]
    cont = GenerationRequest(
        messages=follow,
        context_token_ids=[*c.prompt_token_ids, *c.token_ids],
        sampling=SamplingParams(max_tokens=8, temperature=0.0),
    )
    ids = engine.prompt_ids(cont)
    assert ids[: len(c.prompt_token_ids) + len(c.token_ids)] == [*c.prompt_token_ids, *c.token_ids]
    if c.finish_reason == FinishReason.STOP:
        whole = GenerationRequest(
            messages=[*first.messages, Message(role="assistant", content=c.text), *follow]
        )
        assert ids == engine.prompt_ids(whole)
    [[d]] = await engine.generate([cont])
    assert d.prompt_token_ids == ids
    # No new turn: generation continues right after the ids (a partial answer extended step by step).
    partial = [*c.prompt_token_ids, *c.token_ids[:3]]
    ext = GenerationRequest(messages=[], context_token_ids=partial, sampling=SamplingParams(max_tokens=4))
    [[e]] = await engine.generate([ext])
    assert e.prompt_token_ids == partial


def test_token_context_needs_new_turns_as_messages() -> None:
    with pytest.raises(ValidationError, match="context_token_ids"):
        GenerationRequest(prompt="hi", context_token_ids=[1, 2])
    with pytest.raises(ValidationError, match="context_token_ids"):
        GenerationRequest(messages=[], context_token_ids=[1, 2], continue_final=True)
    with pytest.raises(ValidationError, match="non-negative"):
        GenerationRequest(messages=[Message(role="user", content="x")], context_token_ids=[-1])


async def test_an_http_engine_refuses_token_context_naming_the_fix() -> None:
    from strop.agents.engines.openai import OpenAIEngine

    engine = OpenAIEngine("http://127.0.0.1:9/v1", "m")
    request = GenerationRequest(messages=[Message(role="user", content="x")], context_token_ids=[1])
    with pytest.raises(EngineError, match="token_context = false"):
        await engine.generate([request])


async def test_steps_and_rollouts_run_as_separate_batches_shortest_first(random_tiny_path: Path) -> None:
    """Static batches (admit_every=0) split by length class: the stop-at-newline steps do not wait for
    64-token rollouts. (With admission, every row leaves the running batch at its own step: test_hf_running.)"""
    engine = HFEngine(random_tiny_path, model_version="random-tiny", batch_wait_ms=20, admit_every=0)
    from strop.agents.engines.hf_rows import length_groups

    def row(max_tokens: int, stop: list[str]) -> object:
        from types import SimpleNamespace

        return SimpleNamespace(sampling=SimpleNamespace(max_tokens=max_tokens, stop=stop))

    rows = [row(64, []), row(32, ["\n"]), row(96, []), row(32, ["\n"]), row(8, [])]
    groups = length_groups(rows)  # type: ignore[arg-type]
    assert [[r.sampling.max_tokens for r in g] for g in groups] == [[8], [32, 32], [64, 96]]
    assert len(length_groups([row(48, []) for _ in range(5)])) == 1  # one kind of work stays one batch

    before = engine.stats.batches
    step, rollout = (
        _chat("What is 1 + 2?", n=3, max_tokens=24, stop=["\n"]),
        _chat("What is 3 + 4?", max_tokens=64),
    )
    out = await engine.generate([step, rollout])
    assert engine.stats.batches - before == 2 and len(out[0]) == 3 and len(out[1]) == 1
    await engine.close()
