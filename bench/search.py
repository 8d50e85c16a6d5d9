"""Search throughput: generated tokens/s during MCTS against best-of-N on the same engine (target >= 0.8x).

Both run through the same runner on the same tasks with the same concurrency (`--tasks` episodes in flight):

  (a) mcts:      the MCTS loop, `--budget` generated tokens per task (k-way expansions and rollouts);
  (b) best-of-N: the best-of-N loop with N answers per task, N chosen so its tokens are about the same.

MCTS issues many small requests (one expansion per tree per iteration, then k rollouts), each continued from
token ids, where best-of-N issues one request of N samples per task; the ratio says what the tree's
bookkeeping, its per-iteration checkpoints and its smaller batches cost. Tokens are counted from the
engine's own `stats.tokens_generated`. One warm-up of each, then `--pairs` interleaved pairs (alternating
which goes first: the machine is shared); the headline is the median of the per-pair ratios.

    .venv/bin/python bench/search.py --model smollm2-135m --tasks 16 --budget 512 --pairs 3

`--prefixes both` runs every pair twice, with the hf engine's shared prefixes (agents/engines/hf_prefix.py)
on and off in turn (which goes first alternates too; the prefix LRU is emptied before each run), and prints
each one's ratio and the prompt tokens the model ran ÷ those asked.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from strop.agents.engines import load_engine
from strop.agents.loops import best_of_n, mcts
from strop.agents.runner import Runner
from strop.critics.verifier import VerifierCritic
from strop.memory import Store
from strop.memory.records import RunRecord, new_id
from strop.sandbox.tasks import Split
from strop.sandbox.tasks.arithmetic import ArithmeticTaskSet


async def _run(
    engine: Any, store: Store, graph: Any, tasks: list[Any], concurrency: int, shared: bool = True
) -> tuple[int, float, float]:
    """(tokens generated, seconds, prompt tokens run / asked) of one run."""
    engine.shared_prefixes = shared
    engine.prefix_cache.clear()  # each run starts cold: no prefix kept from the run before
    st = engine.stats
    before = st.tokens_generated, st.prefill_tokens_requested, st.prefill_tokens_computed
    started = time.perf_counter()
    await Runner(store, concurrency=concurrency, progress=False).run(
        graph, tasks, RunRecord(id=new_id(), loop="bench")
    )
    secs = time.perf_counter() - started
    ran = (st.prefill_tokens_computed - before[2]) / max(1, st.prefill_tokens_requested - before[1])
    return st.tokens_generated - before[0], secs, ran


async def main(args: argparse.Namespace) -> None:
    ts = ArithmeticTaskSet(digits=1, steps=2)
    tasks = ts.tasks(Split.TRAIN, args.tasks)
    engine = load_engine(args.model)
    system = None if args.model == "tiny" else mcts.MCTSConfig().system_prompt
    search_cfg = mcts.MCTSConfig(
        budget_tokens=args.budget,
        k=3,
        max_step_tokens=32,
        rollout_max_tokens=64,
        system_prompt=system,
        emit_pairs=False,
        seed=0,
    )
    verifier = VerifierCritic(ts)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'bench.db'}")
        search = mcts.build_graph(engine, verifier, search_cfg)
        tokens, _, _ = await _run(engine, store, search, tasks, args.tasks)  # warm-up, and the per-task cost
        n = max(1, round(tokens / len(tasks) / args.answer_tokens))
        sample = best_of_n.build_graph(
            engine,
            verifier,
            best_of_n.BestOfNConfig(
                n=n,
                temperature=0.8,
                max_tokens=args.answer_tokens,
                system_prompt=system,
                emit_examples=False,
                seed=0,
            ),
        )
        await _run(engine, store, sample, tasks, args.tasks)
        settings = {"on": [True], "off": [False], "both": [True, False]}[args.prefixes]
        ratios: dict[bool, list[float]] = {s: [] for s in settings}
        tps: dict[tuple[bool, str], list[float]] = {}
        for p in range(args.pairs):
            for shared in settings if p % 2 == 0 else settings[::-1]:
                order = [("mcts", search), ("best-of-n", sample)]
                if p % 2:
                    order.reverse()
                rates = {}
                for name, graph in order:
                    tok, secs, ran = await _run(engine, store, graph, tasks, args.tasks, shared)
                    rates[name] = (tok / secs, tok, secs, ran)
                    tps.setdefault((shared, name), []).append(tok / secs)
                ratios[shared].append(rates["mcts"][0] / rates["best-of-n"][0])
                m, b = rates["mcts"], rates["best-of-n"]
                print(
                    f"pair {p + 1}, shared prefixes {'on' if shared else 'off'}: "
                    f"mcts {m[0]:.0f} tok/s ({m[1]} tokens, {m[2]:.1f} s, prompt tokens run/asked {m[3]:.2f}), "
                    f"best-of-{n} {b[0]:.0f} tok/s ({b[1]} tokens, {b[2]:.1f} s, run/asked {b[3]:.2f}), "
                    f"ratio {ratios[shared][-1]:.3f}",
                    flush=True,
                )
    await engine.close()
    for shared in settings:
        print(
            f"shared prefixes {'on' if shared else 'off'}: median mcts {statistics.median(tps[shared, 'mcts']):.0f} "
            f"tok/s, best-of-{n} {statistics.median(tps[shared, 'best-of-n']):.0f} tok/s, "
            f"median ratio mcts / best-of-{n} tokens/s: {statistics.median(ratios[shared]):.3f} (target >= 0.8)"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", type=int, default=16, help="Tasks, all in flight at once.")
    ap.add_argument("--budget", type=int, default=512, help="MCTS generated-token budget per task.")
    ap.add_argument("--answer-tokens", type=int, default=96, help="max_tokens of each best-of-N answer.")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument(
        "--prefixes",
        default="on",
        choices=["on", "off", "both"],
        help="hf engine shared prefixes: on (the default engine), off (every prompt in full), or both in turn.",
    )
    asyncio.run(main(ap.parse_args()))
