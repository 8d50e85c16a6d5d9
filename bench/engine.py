"""Does the hf engine's request coalescing pay off? The same prompts, greedy, the same max_new_tokens, three ways:

  (a) the hf engine, one coroutine per prompt, all concurrent (what the loops do);
  (b) one bare batched `model.generate` over all prompts (the ceiling for (a));
  (c) one `model.generate` per prompt, one after another (what you get without batching).

Targets: a/b >= 0.9 (coalescing costs little) and a/c >= 4 (it is worth having). The machine is shared, so the
three run interleaved, `--repeats` rounds, each with `--pairs` alternated (a), (b) runs before (c);
the ratios come from the same rounds (a/b pair by pair).

    .venv/bin/python bench/engine.py --model tiny --prompts 64 --max-tokens 32 --repeats 3 --pairs 3

With `--best-of-n N` it measures shared prefixes instead (agents/engines/hf_prefix.py): `--prompts` requests of
N seeded samples each (best-of-N's shape), all concurrent, on one engine with shared prefixes on and off in turn
(`--pairs` alternated pairs, the LRU emptied before each run so only sharing within the batch counts). It
prints the prompt tokens the model ran ÷ those asked (the plain path runs them all: 1.0), tokens/s of each,
and whether both drew the same tokens (each row has its own seeded generator, so they should):

    .venv/bin/python bench/engine.py --model smollm2-135m --best-of-n 8 --prompts 8 --max-tokens 64 --pairs 5
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from typing import Any

import torch

from strop.agents.engines import GenerationRequest
from strop.agents.engines.hf import HFEngine
from strop.agents.models import resolve_model


def _prompts(count: int) -> list[GenerationRequest]:
    rng = random.Random(0)
    return [
        GenerationRequest.chat(f"What is {rng.randint(10, 99)} + {rng.randint(10, 99)}?", temperature=0)
        for _ in range(count)
    ]


def _useful(row: list[int], eos: set[int], max_tokens: int) -> list[int]:
    """Generated tokens up to and including the first EOS, as the engine reports them."""
    row = row[:max_tokens]
    for j, t in enumerate(row):
        if t in eos:
            return row[: j + 1]
    return row


def _bare(engine: HFEngine, prompts: list[list[int]], max_tokens: int) -> tuple[float, list[list[int]]]:
    tok, model = engine.tokenizer, engine.model
    eos = set(engine._eos_ids)
    width = max(map(len, prompts))
    pad = tok.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=engine.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=engine.device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=sorted(eos),
        )
    elapsed = time.perf_counter() - start
    return elapsed, [_useful(r, eos, max_tokens) for r in out[:, width:].tolist()]


def _run_a(
    engine: HFEngine, requests: list[GenerationRequest], loop: asyncio.AbstractEventLoop
) -> tuple[float, list[list[int]]]:
    """One coroutine per request on a long-lived loop, as a runner drives episodes (loop start-up not timed)."""

    async def go() -> list[Any]:
        return list(await asyncio.gather(*(engine.generate([r]) for r in requests)))

    start = time.perf_counter()
    results = loop.run_until_complete(go())
    elapsed = time.perf_counter() - start
    return elapsed, [r[0][0].token_ids for r in results]


def _prefix_run(
    engine: HFEngine, requests: list[GenerationRequest], loop: asyncio.AbstractEventLoop, shared: bool
) -> tuple[float, int, int, int, list[list[int]]]:
    """(seconds, tokens generated, prompt tokens asked, prompt tokens run, token ids) of one run."""
    engine.shared_prefixes = shared
    engine.prefix_cache.clear()  # only what the batch itself shares: no prefix kept from the run before
    st = engine.stats
    before = st.tokens_generated, st.prefill_tokens_requested, st.prefill_tokens_computed

    async def go() -> list[Any]:
        return list(await asyncio.gather(*(engine.generate([r]) for r in requests)))

    start = time.perf_counter()
    results = loop.run_until_complete(go())
    elapsed = time.perf_counter() - start
    ids = [c.token_ids for r in results for c in r[0]]
    return (
        elapsed,
        st.tokens_generated - before[0],
        st.prefill_tokens_requested - before[1],
        st.prefill_tokens_computed - before[2],
        ids,
    )


def prefix_bench(args: argparse.Namespace) -> None:
    """Best-of-N's requests with shared prefixes on and off, alternated; see the module docstring."""
    n = args.best_of_n
    requests = [
        r.model_copy(
            update={
                "sampling": r.sampling.model_copy(
                    update={"max_tokens": args.max_tokens, "n": n, "temperature": 0.8, "seed": i}
                )
            }
        )
        for i, r in enumerate(_prompts(args.prompts))
    ]
    engine = HFEngine(resolve_model(args.model), max_batch_size=args.prompts * n, batch_wait_ms=10)
    loop = asyncio.new_event_loop()
    for shared in (True, False):  # warm-up
        _prefix_run(engine, requests, loop, shared)
    rates: dict[bool, list[float]] = {True: [], False: []}
    ratios, prefill, same = [], [], []
    for p in range(args.pairs):
        got = {}
        for shared in (True, False) if p % 2 == 0 else (False, True):
            secs, toks, asked, ran, ids = _prefix_run(engine, requests, loop, shared)
            got[shared] = (toks / secs, ran / asked, ids)
            rates[shared].append(toks / secs)
        ratios.append(got[True][0] / got[False][0])
        prefill.append(got[True][1])
        same.append(sum(a == b for a, b in zip(got[True][2], got[False][2], strict=True)) / len(got[True][2]))
        print(
            f"pair {p + 1}: shared {got[True][0]:.0f} tok/s (prompt tokens run / asked {got[True][1]:.3f}), "
            f"plain {got[False][0]:.0f} tok/s ({got[False][1]:.3f}), ratio {ratios[-1]:.2f}, "
            f"same tokens for {same[-1]:.0%} of rows",
            flush=True,
        )
    loop.run_until_complete(engine.close())
    loop.close()
    print(
        f"\nmodel {args.model}, {args.prompts} prompts x n={n}, max_tokens {args.max_tokens}, "
        f"torch threads {torch.get_num_threads()}, {args.pairs} alternated pairs"
    )
    print("| path | prompt tokens run / asked | tokens/s (median) |")
    print("|---|---|---|")
    print(f"| shared prefixes | {statistics.median(prefill):.3f} | {statistics.median(rates[True]):.0f} |")
    print(f"| plain (every prompt in full) | 1.000 | {statistics.median(rates[False]):.0f} |")
    print(
        f"shared / plain tokens/s = {statistics.median(ratios):.2f} (median of {len(ratios)} pairs); "
        f"same tokens for {min(same):.0%} of rows or more"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny", help="a cache name (tiny, smollm2-135m) or a model folder")
    parser.add_argument("--prompts", type=int, default=64, help="how many prompts (and concurrent requests)")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_new_tokens for every method")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of (a), (b), (c)")
    parser.add_argument("--pairs", type=int, default=3, help="alternated (a), (b) runs per round")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--best-of-n", type=int, default=0, help="measure shared prefixes: N samples per prompt, on vs off"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.best_of_n:
        prefix_bench(args)
        return

    requests = [
        r.model_copy(update={"sampling": r.sampling.model_copy(update={"max_tokens": args.max_tokens})})
        for r in _prompts(args.prompts)
    ]
    engine = HFEngine(resolve_model(args.model), max_batch_size=args.prompts, batch_wait_ms=10)
    prompts = [engine.prompt_ids(r) for r in requests]
    _bare(engine, prompts[:4], 4)  # warm-up: first-call allocations and lazy inits

    loop = asyncio.new_event_loop()
    rows: list[dict[str, float]] = []
    all_pairs: list[float] = []
    best_a: list[float] = []
    best_b: list[float] = []
    for round_ in range(args.repeats):
        # (a) and (b) alternate `--pairs` times: their ratio is the sensitive one, so it is taken pair by pair.
        pair_ratios, ta, tb = [], [], []
        for _ in range(args.pairs):
            t_a, toks_a = _run_a(engine, requests, loop)
            t_b, toks_b = _bare(engine, prompts, args.max_tokens)
            n_a, n_b = sum(map(len, toks_a)), sum(map(len, toks_b))
            pair_ratios.append((n_a / t_a) / (n_b / t_b))
            ta.append(n_a / t_a)
            tb.append(n_b / t_b)
        t_c, toks_c = 0.0, []
        for p in prompts:
            t, [toks] = _bare(engine, [p], args.max_tokens)
            t_c += t
            toks_c.append(toks)
        same = sum(x == y for x, y in zip(toks_a, toks_b, strict=True)) / len(prompts)
        all_pairs.extend(pair_ratios)
        best_a.append(max(ta))
        best_b.append(max(tb))
        row = {
            "a_tps": statistics.median(ta),
            "b_tps": statistics.median(tb),
            "c_tps": sum(map(len, toks_c)) / t_c,
            "a/b": statistics.median(pair_ratios),
            "same_as_b": same,
        }
        row["a/c"] = row["a_tps"] / row["c_tps"]
        rows.append(row)
        print(
            f"round {round_ + 1}: (a) {row['a_tps']:.0f} tok/s | (b) {row['b_tps']:.0f} tok/s | (c) "
            f"{row['c_tps']:.0f} tok/s in {t_c:.1f}s | a/b per pair {[round(r, 2) for r in pair_ratios]} "
            f"| a/c {row['a/c']:.2f} | (a) tokens == (b) tokens for {same:.0%} of prompts",
            flush=True,
        )

    loop.run_until_complete(engine.close())
    loop.close()
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(
        f"\nmodel {args.model}, {args.prompts} prompts, max_tokens {args.max_tokens}, {args.repeats} rounds, "
        f"torch threads {torch.get_num_threads()}, engine batches {engine.stats.batches}, "
        f"mean batch size {engine.stats.mean_batch_size:.1f}"
    )
    print("| method | tokens/s (median) |")
    print("|---|---|")
    print(f"| (a) hf engine, {args.prompts} concurrent requests | {med['a_tps']:.0f} |")
    print(f"| (b) one batched `model.generate` | {med['b_tps']:.0f} |")
    print(f"| (c) {args.prompts} sequential `model.generate` | {med['c_tps']:.0f} |")
    print(
        f"a/b = {statistics.median(all_pairs):.2f} (median of {len(all_pairs)} pairs; target >= 0.9), "
        f"a/c = {med['a/c']:.2f} (target >= 4); "
        f"per round a/b {[round(r['a/b'], 2) for r in rows]}, a/c {[round(r['a/c'], 2) for r in rows]}"
    )
    # The fastest run of each is the one least disturbed by other jobs on the shared cores (timeit's rule).
    print(f"best-of-runs a/b = {max(best_a) / max(best_b):.2f}")


if __name__ == "__main__":
    main()
