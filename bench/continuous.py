"""Admission designs side by side: 64 prompts x 64 forced tokens (EOS suppressed, every row runs to the end),
greedy, four ways on one model:

  (a) static `model.generate` over all prompts, one call (the ceiling for a batch that arrives at once);
  (b) transformers' continuous batching, `model.generate_batch` (paged attention, `paged|sdpa` on CPU);
  (c) the hf engine with admission (agents/engines/hf_running.py: a running batch decoded by hand in windows of
      `--admit-every` steps), one coroutine per prompt;
  (d) the hf engine with static batches (`admit_every=0`: one `generate` per batch), one coroutine per prompt.

All at once is the case where admission has nothing to win (every row arrives together and runs as long), so
this measures what each design costs per token; the loops' own benches (bench/games.py, bench/search.py,
bench/serve.py with `--admission both`) measure what admission wins when rows arrive while others decode.
`--pairs` rounds, the order rotating each round (the machine is shared); medians of each and of its ratio to
(a) within the round.

    .venv/bin/python bench/continuous.py --model smollm2-135m --prompts 64 --max-tokens 64 --pairs 3
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from strop.agents.engines import GenerationRequest
from strop.agents.engines.hf import HFEngine
from strop.agents.models import resolve_model


def _requests(count: int, max_tokens: int) -> list[GenerationRequest]:
    rng = random.Random(0)
    return [
        GenerationRequest.chat(
            f"What is {rng.randint(10, 99)} + {rng.randint(10, 99)}?", temperature=0, max_tokens=max_tokens
        )
        for _ in range(count)
    ]


def _static(model: Any, pad: int, prompts: list[list[int]], max_tokens: int) -> int:
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,  # EOS suppressed: every row runs max_tokens
            do_sample=False,
            pad_token_id=pad,
        )
    return int(out[:, width:].numel())


def _continuous(model: Any, pad: int, prompts: list[list[int]], max_tokens: int) -> int:
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    config = GenerationConfig(
        max_new_tokens=max_tokens,
        min_new_tokens=max_tokens,
        do_sample=False,
        pad_token_id=pad,
        eos_token_id=None,  # as forced as (a): no row stops early
    )
    with torch.inference_mode():
        out = model.generate_batch(
            inputs=prompts,
            generation_config=config,
            # sized for these rows: left to itself on CPU it sizes the paged cache from free memory (10 GB here)
            continuous_batching_config=ContinuousBatchingConfig(
                page_size=64,
                num_blocks=len(prompts) * (-(-(max(map(len, prompts)) + max_tokens) // 64)) + 8,
                max_batch_tokens=2048,
            ),
            progress_bar=False,
        )
    return sum(len(o.generated_tokens) for o in out.values())


def _engine(engine: HFEngine, requests: list[GenerationRequest], loop: asyncio.AbstractEventLoop) -> int:
    async def go() -> list[Any]:
        return list(await asyncio.gather(*(engine.generate([r]) for r in requests)))

    return sum(len(r[0][0].token_ids) for r in loop.run_until_complete(go()))


def main(args: argparse.Namespace) -> None:
    requests = _requests(args.prompts, args.max_tokens)
    kw = {"max_batch_size": args.prompts, "batch_wait_ms": 10}
    windowed = HFEngine(resolve_model(args.model), admit_every=args.admit_every, **kw)
    static = HFEngine(resolve_model(args.model), admit_every=0, **kw)
    for e in (windowed, static):
        e._eos_ids = []  # forced tokens, as in (a): the bench's only reach into the engine
    model, pad = static.model, static.tokenizer.pad_token_id
    prompts = [static.prompt_ids(r) for r in requests]
    loop = asyncio.new_event_loop()
    ways: dict[str, Callable[[], int]] = {
        "(a) static generate": lambda: _static(model, pad, prompts, args.max_tokens),
        "(b) generate_batch (continuous, paged|sdpa)": lambda: _continuous(
            model, pad, prompts, args.max_tokens
        ),
        f"(c) hf engine, admission every {args.admit_every}": lambda: _engine(windowed, requests, loop),
        "(d) hf engine, static batches": lambda: _engine(static, requests, loop),
    }
    for name, run in ways.items():  # warm-up: allocations, kernel selection, the paged cache
        started = time.perf_counter()
        run()
        print(f"warm-up {name}: {time.perf_counter() - started:.1f} s", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in ways}
    ratios: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for p in range(args.pairs):
        order = names[p % len(names) :] + names[: p % len(names)]
        got = {}
        for name in order:
            started = time.perf_counter()
            tokens = ways[name]()
            got[name] = tokens / (time.perf_counter() - started)
            rates[name].append(got[name])
        for name in names:
            ratios[name].append(got[name] / got[names[0]])
        print(f"round {p + 1}: " + ", ".join(f"{n} {got[n]:.0f} tok/s" for n in names), flush=True)
    loop.run_until_complete(windowed.close())
    loop.run_until_complete(static.close())
    loop.close()
    print(
        f"\nmodel {args.model}, {args.prompts} prompts x {args.max_tokens} forced tokens, greedy, "
        f"torch threads {torch.get_num_threads()}, {args.pairs} rounds"
    )
    print("| way | tokens/s (median) | ÷ (a), median of rounds |")
    print("|---|---:|---:|")
    for name in names:
        print(f"| {name} | {statistics.median(rates[name]):.0f} | {statistics.median(ratios[name]):.2f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=3, help="Rounds of all four, the order rotating.")
    ap.add_argument("--admit-every", type=int, default=16, help="(c)'s decoding steps between admissions.")
    main(ap.parse_args())
