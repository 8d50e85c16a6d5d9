"""vLLM (CPU build) vs the hf engine on the same model and prompts, in one process: greedy tokens/s.

Run inside the vLLM environment that `make test-vllm` builds:
    .venv-vllm/bin/python bench/vllm_engine.py ~/.cache/strop/models/smollm2-135m --sizes 32x32 64x64 --rounds 3

Each measurement loads one engine, warms it up, times the whole batch `--timed` times (2; the best counts) and closes
it, so the two engines never share the cores. The order alternates between rounds (vllm, hf, then hf, vllm,
...) so a load that drifts during the run does not favour one engine; each round's ratio and the 1-minute
load average before it are printed, and the median ratio over the rounds is the figure to quote. Both engines
run float32 (the vllm engine's CPU default, as hf) with vLLM in eager mode and a KV cache sized for the batch.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

from strop.agents.engines.base import GenerationRequest


async def measure(engine: Any, reqs: list[GenerationRequest], timed: int = 2) -> float:
    await engine.generate(reqs[:2])  # warm-up
    best = 0.0
    for _ in range(timed):
        t = time.perf_counter()
        out = await engine.generate(reqs)
        dt = time.perf_counter() - t
        best = max(best, sum(len(c.token_ids) for r in out for c in r) / dt)
    return best


async def one(kind: str, model: str, reqs: list[GenerationRequest], max_tokens: int, timed: int) -> float:
    if kind == "hf":
        from strop.agents.engines.hf import HFEngine

        engine: Any = HFEngine(model, max_batch_size=len(reqs))
    else:
        from strop.agents.engines.vllm import VLLMEngine

        # The chat-templated prompts here are under 64 tokens: size the KV cache for the whole batch.
        engine = VLLMEngine(model, max_model_len=64 + max_tokens, cpu_kv_cache_seqs=len(reqs))
    try:
        return await measure(engine, reqs, timed)
    finally:
        await engine.close()


async def main(model: str, sizes: list[tuple[int, int]], rounds: int, timed: int) -> None:
    reserved = os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "default")
    print(
        f"model={model} rounds={rounds} timed={timed} cores={os.cpu_count()} VLLM_CPU_NUM_OF_RESERVED_CPU={reserved}"
    )
    for n, max_tokens in sizes:
        reqs = [
            GenerationRequest.chat(
                f"What is {10 + i} + {37 + 2 * i}?", temperature=0.0, max_tokens=max_tokens
            )
            for i in range(n)
        ]
        ratios = []
        for r in range(rounds):
            order = ("vllm", "hf") if r % 2 == 0 else ("hf", "vllm")
            got: dict[str, float] = {}
            loads = []
            for kind in order:
                loads.append(os.getloadavg()[0])
                got[kind] = await one(kind, model, reqs, max_tokens, timed)
            ratios.append(got["vllm"] / got["hf"])
            print(
                f"{n}x{max_tokens} round {r + 1} ({order[0]} first, load {loads[0]:.1f}/{loads[1]:.1f}): "
                f"vllm {got['vllm']:.1f} tok/s, hf {got['hf']:.1f} tok/s, vllm/hf {ratios[-1]:.2f}",
                flush=True,
            )
        print(
            f"{n}x{max_tokens} median vllm/hf over {rounds} rounds: {statistics.median(ratios):.2f}",
            flush=True,
        )


if __name__ == "__main__":  # vLLM's CPU build spawns its engine process
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a local Hugging Face model folder")
    parser.add_argument("--sizes", nargs="+", default=["32x32", "64x64"], help="PROMPTSxMAX_TOKENS")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--timed", type=int, default=2, help="timed batches per measurement (the best counts)"
    )
    args = parser.parse_args()
    parsed = [tuple(int(x) for x in s.split("x")) for s in args.sizes]
    asyncio.run(main(os.path.expanduser(args.model), parsed, args.rounds, args.timed))  # type: ignore[arg-type]
