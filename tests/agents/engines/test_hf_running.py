"""Admission into a running batch (hf_running.py), through the real path: the pre-trained tiny Llama, rows
decoded in windows against an engine with static batches (`admit_every=0`, one `generate` per batch). Tests that
need a row to run its whole max_tokens use the random tiny Llama, which almost never draws its EOS."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from strop.agents.engines import EngineError, GenerationRequest, SamplingParams
from strop.agents.engines.base import Completion
from strop.agents.engines.hf import HFEngine

RULES = "Add the two numbers. Show each step, then the answer after ####.\n" * 2


@pytest.fixture(scope="module")
def windowed(tiny_model_path: Path) -> HFEngine:
    return HFEngine(tiny_model_path, model_version="tiny", batch_wait_ms=5, admit_every=3)


@pytest.fixture(scope="module")
def static(tiny_model_path: Path) -> HFEngine:
    return HFEngine(
        tiny_model_path, model_version="tiny", batch_wait_ms=20, admit_every=0, shared_prefixes=False
    )


def _raw(prompt: str, **sampling: object) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, sampling=SamplingParams(**sampling))  # type: ignore[arg-type]


def _requests(temperature: float) -> list[GenerationRequest]:
    """Rows of every shape: shared prefixes, n samples, stop strings, one-token and long max_tokens."""
    seeded: dict[str, object] = {"seed": 11, "logprobs": True} if temperature else {"logprobs": True}
    return [
        *(
            GenerationRequest.chat(
                RULES + f"What is {a} + {b}?", temperature=temperature, max_tokens=m, **seeded
            )
            for a, b, m in [(12, 34, 20), (56, 7, 5), (3, 88, 1)]
        ),
        GenerationRequest.chat("What is 21 + 43?", n=3, temperature=temperature, max_tokens=16, **seeded),
        GenerationRequest.chat("9 + 9", temperature=temperature, max_tokens=24, stop=["\n"], **seeded),
        _raw("1", temperature=temperature, max_tokens=6, **seeded),
    ]


async def _staggered(engine: HFEngine, requests: list[GenerationRequest]) -> list[list[Completion]]:
    """Requests that arrive while others decode, so most join a running batch at a window boundary."""

    async def late(i: int, r: GenerationRequest) -> list[Completion]:
        await asyncio.sleep(0.02 * i)
        [out] = await engine.generate([r])
        return out

    return list(await asyncio.gather(*(late(i, r) for i, r in enumerate(requests))))


@pytest.mark.parametrize("temperature", [0.0, 0.9])
async def test_rows_that_join_a_running_batch_decode_as_in_a_batch_of_their_own(
    windowed: HFEngine, static: HFEngine, temperature: float
) -> None:
    """Greedy tokens are the static path's; seeded rows keep their generator across windows, so sampled
    tokens are too (the tiny model in float32: no near-ties); log-probs agree to float rounding."""
    requests = _requests(temperature)
    got = await _staggered(windowed, requests)
    want = [await static.generate([r]) for r in requests]
    for mine, theirs in zip(got, want, strict=True):
        for a, b in zip(mine, theirs[0], strict=True):
            assert (a.token_ids, a.text, a.finish_reason) == (b.token_ids, b.text, b.finish_reason)
            assert a.logprobs is not None and b.logprobs is not None
            assert max((abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)), default=0) < 1e-4
    assert windowed.stats.windows > windowed.stats.batches  # rows did run across several windows


async def test_a_short_row_is_answered_and_its_follow_up_admitted_while_a_long_row_runs(
    random_tiny_path: Path,
) -> None:
    """The point of admission: the follow-up of a 2-token step joins the running batch and is back before the
    64-token row it started beside, where a static batch would hold both until the long row stops."""
    engine = HFEngine(random_tiny_path, model_version="tiny", batch_wait_ms=5, admit_every=2)
    order: list[str] = []
    long = _raw("1 + 1 = 2\n" * 4, temperature=0, max_tokens=64)

    async def run(name: str, request: GenerationRequest) -> None:
        await engine.generate([request])
        order.append(name)

    async def short_then_follow_up() -> None:
        await run("short", _raw("2 + 2 =", temperature=0, max_tokens=2))
        await run("follow-up", _raw("3 + 3 =", temperature=0, max_tokens=2))

    try:
        await asyncio.gather(run("long", long), short_then_follow_up())
        assert order == ["short", "follow-up", "long"]
        assert engine.stats.batches >= 2 and engine.stats.windows >= 32
    finally:
        await engine.close()


async def test_n_samples_share_their_prompt_and_the_plain_prefill_does_not(tiny_model_path: Path) -> None:
    """Eight samples of one prompt run it once (the rest of each row's prompt is its last token)."""
    request = GenerationRequest.chat(RULES + "What is 4 + 5?", n=8, temperature=0.8, seed=1, max_tokens=4)
    ratios = []
    for sharing in (True, False):
        engine = HFEngine(tiny_model_path, model_version="tiny", admit_every=4, shared_prefixes=sharing)
        try:
            await engine.generate([request])
            ratios.append(engine.stats.prefill_ratio)
        finally:
            await engine.close()
    assert ratios[0] < 0.2 and ratios[1] == 1.0


async def test_a_reload_waits_for_the_running_rows_which_keep_the_old_weights(random_tiny_path: Path) -> None:
    engine = HFEngine(random_tiny_path, model_version="v1", batch_wait_ms=5, admit_every=2)
    try:
        running = asyncio.ensure_future(engine.generate([_raw("7 + 1 =", temperature=0, max_tokens=24)]))
        await asyncio.sleep(0.05)  # decoding has begun
        await engine.reload(random_tiny_path, model_version="v2")
        [[before]] = await running
        [[after]] = await engine.generate([_raw("7 + 1 =", temperature=0, max_tokens=4)])
        assert (before.model_version, len(before.token_ids), after.model_version) == ("v1", 24, "v2")
    finally:
        await engine.close()


async def test_a_cancelled_caller_leaves_the_batch_and_the_others_finish(random_tiny_path: Path) -> None:
    engine = HFEngine(random_tiny_path, model_version="tiny", batch_wait_ms=5, admit_every=2)
    try:
        gone = asyncio.ensure_future(engine.generate([_raw("5 + 5 =", temperature=0, max_tokens=64)]))
        stays = asyncio.ensure_future(engine.generate([_raw("6 + 6 =", temperature=0, max_tokens=12)]))
        await asyncio.sleep(0.05)
        gone.cancel()
        [[done]] = await stays
        await asyncio.gather(gone, return_exceptions=True)
        assert len(done.token_ids) == 12 and gone.cancelled()
        assert engine.stats.tokens_generated < 64  # the cancelled row was never answered
    finally:
        await engine.close()


async def test_a_failing_step_fails_its_rows_with_the_cause_and_the_engine_goes_on(
    tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = HFEngine(tiny_model_path, model_version="tiny", batch_wait_ms=5, admit_every=2)
    try:
        forward = engine.model.forward
        monkeypatch.setattr(
            engine.model, "forward", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
        )
        with pytest.raises(EngineError, match="generation failed: RuntimeError\\('boom'\\)"):
            await engine.generate([_raw("1 + 2 =", temperature=0, max_tokens=4, n=2)])
        monkeypatch.setattr(engine.model, "forward", forward)
        [[ok]] = await engine.generate([_raw("1 + 2 =", temperature=0, max_tokens=4)])
        assert ok.token_ids
    finally:
        await engine.close()


async def test_streamed_rows_get_the_same_tokens_in_windows(windowed: HFEngine) -> None:
    request = GenerationRequest.chat(RULES + "What is 8 + 9?", n=2, temperature=0.7, seed=5, max_tokens=12)
    [want] = await windowed.generate([request])
    tokens: dict[int, list[int]] = {0: [], 1: []}
    ends = {}
    async for event in windowed.stream(request):
        tokens[event.index] += event.token_ids
        if event.completion is not None:
            ends[event.index] = event.completion
    assert [tokens[0], tokens[1]] == [c.token_ids for c in want] == [ends[0].token_ids, ends[1].token_ids]


def test_admit_every_must_not_be_negative(tiny_model_path: Path) -> None:
    with pytest.raises(EngineError, match="admit_every must be 0"):
        HFEngine(tiny_model_path, admit_every=-1)
