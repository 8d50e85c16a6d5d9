"""The hf engine's batches: collecting concurrent rows within a short window, and decoding them in one call.

`collect_batch` runs on the event loop: it waits for a first row, then takes whatever arrives within
`batch_wait_s` (at most `max_batch_size`). `decode_batch` runs on the engine's one worker thread: one
`generate` call over rows of any mix of sampling parameters (RowSampler draws each row's token with its own
parameters and generator; RowStop ends each row on its own terms), then each row trimmed at its max_tokens,
first EOS or first stop string. See hf.py for the guarantees this gives.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import torch

from strop.agents.engines.base import Completion, EngineError, FinishReason
from strop.agents.engines.hf_prefix import PrefixCache, plan_batch
from strop.agents.engines.hf_rows import Row, RowSampler, RowStop, length_groups
from strop.agents.engines.hf_streaming import deliver


async def collect_batch(queue: asyncio.Queue[Row], max_batch_size: int, wait_s: float) -> list[Row]:
    """The next batch: the first row to arrive, then every row that arrives within `wait_s` after it."""
    loop = asyncio.get_running_loop()
    batch = [await queue.get()]
    deadline = loop.time() + wait_s
    while len(batch) < max_batch_size:
        if not queue.empty():
            batch.append(queue.get_nowait())
            continue
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            batch.append(await asyncio.wait_for(queue.get(), remaining))
        except TimeoutError:
            break
    return [r for r in batch if not r.future.done()]  # callers that were cancelled


async def run_static(engine: Any, queue: asyncio.Queue[Row]) -> None:
    """The hf engine's batcher without admission (`admit_every=0`, or a model without a plain cache): each
    batch is one `generate` call per length group, and rows that arrive meanwhile wait for the next batch."""
    loop = asyncio.get_running_loop()
    while True:
        batch = await collect_batch(queue, engine.max_batch_size, engine.batch_wait_s)
        for group in length_groups(batch):
            try:
                async with engine._gate_lock():
                    work = functools.partial(_run_group, engine, group)
                    results = await loop.run_in_executor(engine._executor, work)
            except Exception as e:  # handed to every waiting caller, never swallowed
                for row in group:
                    if not row.future.done():
                        row.future.set_exception(
                            e if isinstance(e, EngineError) else EngineError(f"generation failed: {e!r}")
                        )
                continue
            for row, completion in zip(group, results, strict=True):
                if not row.future.done():
                    row.future.set_result(completion)


def _run_group(engine: Any, rows: list[Row]) -> list[Completion]:
    """On the worker thread: one `generate` call over all rows, counted in the engine's `stats`."""
    completions, computed = decode_batch(
        engine.model,
        engine.tokenizer,
        rows,
        device=engine.device,
        eos_ids=engine._eos_ids,
        model_version=engine.model_version,
        stream_interval_s=engine.stream_interval_s,
        prefixes=engine.prefix_cache if engine.shared_prefixes and engine._prefixes_ok else None,
    )
    stats = engine.stats
    stats.prefill_tokens_requested += sum(len(r.prompt_ids) for r in rows)
    stats.prefill_tokens_computed += computed
    stats.batches += 1
    stats.rows += len(rows)
    stats.windows += 1  # a static batch is one window of its rows
    stats.window_rows += len(rows)
    stats.completions += len(rows)
    stats.tokens_generated += sum(len(c.token_ids) for c in completions)
    return completions


def cancel_rows(rows: list[Row]) -> None:
    """The caller went away: rows not started are skipped, rows being decoded stop at the next step."""
    for row in rows:
        row.cancelled = True
        row.future.cancel()


def decode_batch(
    model: Any,
    tokenizer: Any,
    rows: list[Row],
    *,
    device: torch.device,
    eos_ids: list[int],
    model_version: str,
    stream_interval_s: float,
    prefixes: PrefixCache | None = None,
) -> tuple[list[Completion], int]:
    """Runs on the worker thread: one `generate` call over all rows, one completion per row, and the prompt
    tokens the model ran for them (fewer than the prompts' when `prefixes` found shared ones: hf_prefix.py)."""
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    pad = tokenizer.pad_token_id
    layout, computed = None, 0
    if prefixes is not None:
        layout, computed = plan_batch(model, [r.prompt_ids for r in rows], prefixes, pad, device)
    if layout is not None:
        input_ids, attention, cache = layout.input_ids, layout.attention_mask, layout.cache
        width = input_ids.shape[1]
        computed += layout.computed
    else:
        width = max(len(r.prompt_ids) for r in rows)
        input_ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows])
        attention = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows])
        cache, computed = None, sum(len(r.prompt_ids) for r in rows)
    sampler = RowSampler(rows, device)
    emit = None
    if any(r.sink is not None for r in rows):
        loop = rows[0].future.get_loop()
        emit = functools.partial(loop.call_soon_threadsafe, deliver, model_version)
    stopper = RowStop(
        rows,
        width,
        tokenizer,
        device,
        sampler=sampler,
        eos_ids=set(eos_ids),
        emit=emit,
        interval_s=stream_interval_s,
    )
    config = GenerationConfig(
        max_new_tokens=max(r.sampling.max_tokens for r in rows),
        do_sample=False,  # RowSampler has already drawn the token; greedy just follows its mask
        num_beams=1,
        pad_token_id=pad,
        eos_token_id=eos_ids,
    )
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            generation_config=config,
            logits_processor=LogitsProcessorList([sampler]),
            stopping_criteria=StoppingCriteriaList([stopper]),
            **({"cache": cache} if cache is not None else {}),
        )
    stopper.flush()  # streamed tokens still pending go before the completions
    generated = out[:, width:].tolist()
    logprobs = torch.stack(sampler.logprobs, dim=1).tolist() if sampler.logprobs else [[] for _ in rows]
    tops = [[step.get(i, {}) for step in sampler.top] for i in range(len(rows))]
    completions = [
        finish_row(tokenizer, row, gen, lps, top, eos_ids=eos_ids, model_version=model_version)
        for row, gen, lps, top in zip(rows, generated, logprobs, tops, strict=True)
    ]
    return completions, computed


def finish_row(
    tokenizer: Any,
    row: Row,
    generated: list[int],
    logprobs: list[float],
    top: list[dict[int, float]],
    *,
    eos_ids: list[int],
    model_version: str,
) -> Completion:
    """Trim one row at its max_tokens, its first EOS or its first stop string."""
    s = row.sampling
    tokens = generated[: s.max_tokens]
    reason = FinishReason.LENGTH
    body = tokens
    for j, t in enumerate(tokens):
        if t in eos_ids:
            tokens, body, reason = tokens[: j + 1], tokens[:j], FinishReason.STOP
            break
    text = tokenizer.decode(body, skip_special_tokens=True)
    matched = None
    if s.stop:
        hits = [(text.find(stop), stop) for stop in s.stop if stop and stop in text]
        if hits:
            pos, matched = min(hits)
            text, reason = text[:pos], FinishReason.STOP
            tokens = body[: _tokens_through(tokenizer, body, pos + len(matched))]
    return Completion(
        text=text,
        prompt_token_ids=row.prompt_ids,
        token_ids=tokens,
        logprobs=logprobs[: len(tokens)] if s.logprobs else None,
        finish_reason=reason,
        model_version=model_version,
        matched_stop=matched,
        top_logprobs=top[: len(tokens)] if s.top_logprobs else None,
    )


def _tokens_through(tokenizer: Any, body: list[int], chars: int) -> int:
    """Fewest leading tokens of `body` whose text is at least `chars` long (binary search: length grows)."""
    lo, hi = 1, len(body)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(body[:mid], skip_special_tokens=True)) >= chars:
            hi = mid
        else:
            lo = mid + 1
    return lo
