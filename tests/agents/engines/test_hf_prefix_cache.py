"""Shared prefixes in the hf engine (hf_prefix.py), through the real path: the pre-trained tiny Llama, real
`generate`, an engine with prefixes shared against one that runs every prompt in full."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from strop.agents.engines import GenerationRequest, SamplingParams
from strop.agents.engines.hf import HFEngine
from strop.agents.engines.hf_prefix import PrefixCache, choose_prefixes

RULES = "Add the two numbers. Show each step, then the answer after ####.\n" * 3


@pytest.fixture(scope="module")
def on(tiny_model_path: Path) -> HFEngine:
    return HFEngine(tiny_model_path, model_version="tiny", batch_wait_ms=20, prefix_cache_tokens=4096)


@pytest.fixture(scope="module")
def off(tiny_model_path: Path) -> HFEngine:
    return HFEngine(tiny_model_path, model_version="tiny", batch_wait_ms=20, shared_prefixes=False)


def _ids(results: list[list[object]]) -> list[list[list[int]]]:
    return [[c.token_ids for c in r] for r in results]  # type: ignore[attr-defined]


def _mixed() -> list[GenerationRequest]:
    """Prompts sharing a long prefix, the n samples of one prompt, and prompts that share nothing."""
    return [
        *(
            GenerationRequest.chat(RULES + f"What is {a} + {b}?", temperature=0, max_tokens=10)
            for a, b in [(12, 34), (56, 7), (3, 88)]
        ),
        GenerationRequest.chat("What is 21 + 43?", n=4, temperature=0, max_tokens=10),
        GenerationRequest.chat("9 + 9", temperature=0, max_tokens=10),
        GenerationRequest(prompt="7", sampling=SamplingParams(temperature=0, max_tokens=10)),
    ]


async def test_prefix_greedy_tokens_and_logprobs_match_the_plain_path(on: HFEngine, off: HFEngine) -> None:
    on.prefix_cache.clear()
    before = on.stats.prefill_tokens_requested, on.stats.prefill_tokens_computed
    shared = await on.generate(_mixed())  # one call: every row in one batch
    plain = await off.generate(_mixed())
    assert _ids(shared) == _ids(plain)
    for s, p in zip(shared, plain, strict=True):
        for a, b in zip(s, p, strict=True):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
            assert a.prompt_token_ids == b.prompt_token_ids
    asked = on.stats.prefill_tokens_requested - before[0]
    ran = on.stats.prefill_tokens_computed - before[1]
    assert asked == sum(len(c.prompt_token_ids) for r in plain for c in r)
    assert ran < asked * 0.7, f"the shared rules and the 4 samples ran {ran} of {asked} prompt tokens"
    assert off.stats.prefill_tokens_computed == off.stats.prefill_tokens_requested


async def test_prefix_n_samples_run_the_prompt_once(on: HFEngine, off: HFEngine) -> None:
    request = GenerationRequest.chat(RULES + "What is 31 + 5?", n=8, temperature=0, max_tokens=8)
    on.prefix_cache.clear()
    before = on.stats.prefill_tokens_computed
    [shared] = await on.generate([request])
    [plain] = await off.generate([request])
    assert [c.token_ids for c in shared] == [c.token_ids for c in plain]
    prompt = len(shared[0].prompt_token_ids)
    # the prompt once (all but its last token) and the last token for each of the 8 rows
    assert on.stats.prefill_tokens_computed - before == prompt - 1 + 8


async def test_prefix_lru_reuses_the_last_prefix_on_the_next_call(on: HFEngine, off: HFEngine) -> None:
    """MCTS's next iteration continues a child of the node it expanded: only the new step's tokens run."""
    on.prefix_cache.clear()
    expand = GenerationRequest.chat(RULES + "What is 40 + 2?", n=3, temperature=0, max_tokens=6)
    [children] = await on.generate([expand])
    child = children[0]
    context = [*child.prompt_token_ids, *child.token_ids]
    step = GenerationRequest(
        messages=[], context_token_ids=context, sampling=SamplingParams(n=3, temperature=0, max_tokens=6)
    )
    before = on.stats.prefill_tokens_computed
    [shared] = await on.generate([step])
    ran = on.stats.prefill_tokens_computed - before
    assert ran == len(child.token_ids) + 3, f"ran {ran} prompt tokens of {len(context)}"
    [plain] = await off.generate([step])
    assert [c.token_ids for c in shared] == [c.token_ids for c in plain]
    # one row alone reuses the cached prefix as well
    before = on.stats.prefill_tokens_computed
    single = GenerationRequest(
        messages=[], context_token_ids=context, sampling=SamplingParams(temperature=0, max_tokens=6)
    )
    [[alone]] = await on.generate([single])
    assert on.stats.prefill_tokens_computed - before == 1
    assert alone.token_ids == plain[0].token_ids


async def test_prefix_sampling_with_a_seed_is_reproducible(on: HFEngine, off: HFEngine) -> None:
    request = GenerationRequest.chat(RULES + "What is 17 + 26?", n=4, temperature=1.0, seed=5, max_tokens=10)
    on.prefix_cache.clear()
    [first] = await on.generate([request])  # prefix computed in this batch
    [again] = await on.generate([request])  # prefix from the LRU
    [plain] = await off.generate([request])
    assert [c.token_ids for c in first] == [c.token_ids for c in again] == [c.token_ids for c in plain]
    assert len({tuple(c.token_ids) for c in first}) > 1, "4 samples at temperature 1 should differ"


async def test_prefix_streamed_rows_get_the_same_tokens(on: HFEngine) -> None:
    request = GenerationRequest.chat(RULES + "What is 8 + 8?", n=2, temperature=0, max_tokens=8)
    [whole] = await on.generate([request])
    streamed: dict[int, list[int]] = {0: [], 1: []}
    ended: dict[int, list[int]] = {}
    async for event in on.stream(request):
        streamed[event.index] += event.token_ids
        if event.completion is not None:
            ended[event.index] = event.completion.token_ids
    assert [streamed[0], streamed[1]] == [ended[0], ended[1]] == [c.token_ids for c in whole]


async def test_prefix_lru_evicts_least_recent_by_size(tiny_model_path: Path) -> None:
    engine = HFEngine(tiny_model_path, model_version="tiny", batch_wait_ms=0, prefix_cache_tokens=80)
    prompts = [
        GenerationRequest.chat(RULES[:60] + f"What is {i} + 1?", n=2, temperature=0, max_tokens=2)
        for i in range(3)
    ]
    for p in prompts:  # one batch each: each computes and keeps its own prefix
        await engine.generate([p])
    cache = engine.prefix_cache
    assert cache.tokens <= 80 and cache.evictions >= 1
    first = tuple(engine.prompt_ids(prompts[0])[:-1])
    last = tuple(engine.prompt_ids(prompts[2])[:-1])
    assert last in cache and first not in cache
    await engine.close()


def test_prefix_cache_bounds_and_order() -> None:
    kv = [(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))]
    cache = PrefixCache(10)
    cache.put((1, 2, 3, 4), kv)
    cache.put((5, 6, 7, 8), kv)
    assert cache.longest([1, 2, 3, 4, 9], 10) == (1, 2, 3, 4)  # now the most recent
    cache.put((9, 9, 9), kv)  # 11 tokens: the least recent, (5, 6, 7, 8), goes
    assert (5, 6, 7, 8) not in cache and (1, 2, 3, 4) in cache and cache.tokens == 7
    cache.put(tuple(range(11)), kv)  # longer than the whole cache: not kept
    assert cache.tokens == 7
    assert cache.longest([1, 2, 3], 10) == ()  # an entry longer than the ids is no prefix of them
    # within a batch: the n samples share all but the last token, others the longest common start
    prompts = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], [7, 7, 7, 7, 7, 1], [7, 7, 7, 7, 7, 2], [8, 1]]
    assert choose_prefixes(prompts, PrefixCache(0)) == [
        (1, 2, 3, 4, 5),
        (1, 2, 3, 4, 5),
        (7, 7, 7, 7, 7),
        (7, 7, 7, 7, 7),
        (),
    ]


async def test_prefix_sharing_off_and_lru_off(tiny_model_path: Path, off: HFEngine) -> None:
    """shared_prefixes=False runs every prompt in full; prefix_cache_tokens=0 shares within a batch, keeps none."""
    request = GenerationRequest.chat(RULES + "What is 2 + 2?", n=3, temperature=0, max_tokens=4)
    before = off.stats.prefill_tokens_requested, off.stats.prefill_tokens_computed
    [plain] = await off.generate([request])
    assert off.stats.prefill_tokens_computed - before[1] == off.stats.prefill_tokens_requested - before[0]
    assert len(off.prefix_cache) == 0
    no_lru = HFEngine(tiny_model_path, model_version="tiny", batch_wait_ms=0, prefix_cache_tokens=0)
    [shared] = await no_lru.generate([request])
    assert [c.token_ids for c in shared] == [c.token_ids for c in plain]
    assert no_lru.stats.prefill_tokens_computed < no_lru.stats.prefill_tokens_requested
    assert len(no_lru.prefix_cache) == 0
    await no_lru.generate([request])  # nothing kept: the prompt runs once more
    assert no_lru.stats.prefill_tokens_computed == 2 * (len(plain[0].prompt_token_ids) - 1 + 3)
    await no_lru.close()
