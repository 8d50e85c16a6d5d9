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
each one's ratio and the prompt tokens the model ran ÷ those asked. `--admission both` does the same with two
engines, one admitting rows into its running batch every `--admit-every` decoding steps (agents/engines/
hf_running.py, the default) and one with static batches (one `generate` per batch).

    .venv/bin/python bench/search.py --model smollm2-135m --tasks 16 --budget 256 --answer-tokens 64 --pairs 2 --admission both
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


def _label(admit: int, shared: bool) -> str:
    return (
        f"admission {'every ' + str(admit) if admit else 'off'}, shared prefixes {'on' if shared else 'off'}"
    )


async def main(args: argparse.Namespace) -> None:
    ts = ArithmeticTaskSet(digits=1, steps=2)
    tasks = ts.tasks(Split.TRAIN, args.tasks)
    admits = {"on": [args.admit_every], "off": [0], "both": [args.admit_every, 0]}[args.admission]
    engines = {a: load_engine(args.model, admit_every=a) for a in admits}  # one engine per admission setting
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
        first = engines[admits[0]]
        tokens, _, _ = await _run(
            first, store, mcts.build_graph(first, verifier, search_cfg), tasks, args.tasks
        )
        n = max(1, round(tokens / len(tasks) / args.answer_tokens))  # best-of-N of about MCTS's tokens
        sample_cfg = best_of_n.BestOfNConfig(
            n=n,
            temperature=0.8,
            max_tokens=args.answer_tokens,
            system_prompt=system,
            emit_examples=False,
            seed=0,
        )
        graphs = {
            a: {
                "mcts": mcts.build_graph(e, verifier, search_cfg),
                "best-of-n": best_of_n.build_graph(e, verifier, sample_cfg),
            }
            for a, e in engines.items()
        }
        for a, e in engines.items():  # warm-up of each engine
            for g in graphs[a].values():
                await _run(e, store, g, tasks, args.tasks)
        shares = {"on": [True], "off": [False], "both": [True, False]}[args.prefixes]
        variants = [(a, shared) for a in admits for shared in shares]
        ratios: dict[tuple[int, bool], list[float]] = {v: [] for v in variants}
        tps: dict[tuple[int, bool, str], list[float]] = {}
        for p in range(args.pairs):
            for a, shared in variants if p % 2 == 0 else variants[::-1]:
                order = list(graphs[a].items())
                if p % 2:
                    order.reverse()
                rates = {}
                for name, graph in order:
                    tok, secs, ran = await _run(engines[a], store, graph, tasks, args.tasks, shared)
                    rates[name] = (tok / secs, tok, secs, ran)
                    tps.setdefault((a, shared, name), []).append(tok / secs)
                ratios[a, shared].append(rates["mcts"][0] / rates["best-of-n"][0])
                m, b = rates["mcts"], rates["best-of-n"]
                print(
                    f"pair {p + 1}, {_label(a, shared)}: "
                    f"mcts {m[0]:.0f} tok/s ({m[1]} tokens, {m[2]:.1f} s, prompt tokens run/asked {m[3]:.2f}), "
                    f"best-of-{n} {b[0]:.0f} tok/s ({b[1]} tokens, {b[2]:.1f} s, run/asked {b[3]:.2f}), "
                    f"ratio {ratios[a, shared][-1]:.3f}",
                    flush=True,
                )
    for e in engines.values():
        await e.close()
    for a, shared in variants:
        print(
            f"{_label(a, shared)}: median mcts {statistics.median(tps[a, shared, 'mcts']):.0f} "
            f"tok/s, best-of-{n} {statistics.median(tps[a, shared, 'best-of-n']):.0f} tok/s, "
            f"median ratio mcts / best-of-{n} tokens/s: {statistics.median(ratios[a, shared]):.3f} (target >= 0.8)"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", type=int, default=16, help="Tasks, all in flight at once.")
    ap.add_argument("--budget", type=int, default=512, help="MCTS generated-token budget per task.")
    ap.add_argument("--answer-tokens", type=int, default=96, help="max_tokens of each best-of-N answer.")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument(
        "--admission",
        default="on",
        choices=["on", "off", "both"],
        help="hf engine admission into its running batch: on (every --admit-every steps), off (static "
        "batches), or both (one engine each, in turn).",
    )
    ap.add_argument("--admit-every", type=int, default=16, help="Decoding steps between admissions (on).")
    ap.add_argument(
        "--prefixes",
        default="on",
        choices=["on", "off", "both"],
        help="hf engine shared prefixes: on (the default engine), off (every prompt in full), or both in turn.",
    )
    asyncio.run(main(ap.parse_args()))
