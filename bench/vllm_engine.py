"""vLLM (CPU build) vs the hf engine on the same model, same prompts, one process: greedy tokens/s.

Run inside the vLLM environment that `make test-vllm` builds:
    .venv-vllm/bin/python bench/vllm_engine.py ~/.cache/strop/models/smollm2-135m 32 32
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from strop.agents.engines.base import GenerationRequest


async def run(engine, reqs, rounds: int) -> tuple[float, int]:
    await engine.generate(reqs[:2])  # warm-up
    best = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        out = await engine.generate(reqs)
        dt = time.perf_counter() - t
        toks = sum(len(c.token_ids) for r in out for c in r)
        best = max(best, toks / dt)
    return best, toks


async def main(model: str, n: int, max_tokens: int) -> None:
    from strop.agents.engines.hf import HFEngine
    from strop.agents.engines.vllm import VLLMEngine

    reqs = [
        GenerationRequest.chat(f"What is {10 + i} + {37 + 2 * i}?", temperature=0.0, max_tokens=max_tokens)
        for i in range(n)
    ]
    # hf first, then vLLM; swap the order between runs to see whether load drift explains the ratio
    h = HFEngine(model, max_batch_size=n)
    ht, htoks = await run(h, reqs, 2)
    await h.close()
    v = VLLMEngine(model, max_model_len=1024, dtype="float32", enforce_eager=True)
    vt, vtoks = await run(v, reqs, 2)
    await v.close()
    print(f"model={model} prompts={n} max_tokens={max_tokens} reserved_cpu={os.environ.get('VLLM_CPU_NUM_OF_RESERVED_CPU', 'default')}")
    print(f"vllm: {vt:.1f} tok/s ({vtoks} tokens)  hf: {ht:.1f} tok/s ({htoks} tokens)  ratio vllm/hf: {vt / ht:.2f}")


if __name__ == "__main__":  # vLLM's CPU build spawns its engine process
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
