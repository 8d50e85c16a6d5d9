"""Self-play throughput: policy moves/s with 64 games in flight against one game at a time (target >= 4x).

Both run the self-play loop (agents/loops/selfplay.py) through the runner on TicTacToe tasks of the `games`
task set, on the same engine, temperature 1.0, `--max-tokens` per move, RAE on with its in-memory baseline
table (build_graph's default; nothing reaches a shared store), into a temporary SQLite store:

  (a) in flight: `--rounds` x `--games` games, by default one per episode, `--games` in flight (runner
      concurrency = `--games`; more episodes than slots, so a game that ends is replaced at once and about
      `--games` stay live), and the hf engine coalesces the moves of the live games into batched `generate`
      calls; with `--games-per-task` g > 1, episodes play g games side by side each (one batched call per move
      per episode) and the concurrency is `--games` / g;
  (b) serial:    `--serial-games` episodes of one game each, runner concurrency 1: one move in flight.

(b) plays fewer games, since moves/s (policy moves / wall seconds, moves counted from the stored episodes'
outcomes) does not depend on how many are played. TicTacToe games end early on an illegal or unparseable
reply, so the moves per game differ from run to run; the rate is still per move. The mean engine batch of each
run is printed too. One warm-up of each (one round of (a), two games of (b)), then
`--pairs` interleaved pairs (alternating which goes first: the machine is shared); the headline is the median
of the per-pair ratios. The loop always sends the game's rules as a system message (there is no option to
drop it), also to the tiny model, which was pre-trained without one: its moves are mostly illegal, so its
games are short, but the cost per move is what is measured.

    .venv/bin/python bench/games.py --model smollm2-135m --games 64 --rounds 2 --serial-games 8 --pairs 3
    .venv-vllm/bin/python bench/games.py --backend vllm --model smollm2-135m --games 64 --rounds 2 ...

On hf, `--prefixes both` runs every pair twice, with the engine's shared prefixes (agents/engines/hf_prefix.py:
the rules every game's prompt starts with run once per batch) on and off in turn, which goes first alternating
too, the prefix LRU emptied before each run; each run also prints the prompt tokens the model ran ÷ asked.
`--admission both` does the same with two engines: one admitting moves into its running batch every
`--admit-every` decoding steps (agents/engines/hf_running.py, the default), one with static batches.
The mean batch is the rows decoded together per step.

The vLLM run needs `make test-vllm`'s venv plus the loop's own dependencies, pinned to that venv's torch and
transformers (strop is installed there without its dependencies):

    .venv-vllm/bin/pip freeze | grep -iE '^(torch|transformers)==' > /tmp/c.txt
    .venv-vllm/bin/pip install -c /tmp/c.txt langgraph langgraph-checkpoint-sqlite sqlalchemy alembic \
        'textarena>=0.7.4,<0.8' math-verify typer rich
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
from strop.agents.loops import selfplay
from strop.agents.runner import Runner
from strop.memory import Store
from strop.memory.records import RunRecord, new_id
from strop.sandbox.tasks import Split
from strop.sandbox.tasks.games import GameTaskSet


async def _run(
    engine: Any, store: Store, graph: Any, tasks: list[Any], concurrency: int, shared: bool = True
) -> tuple[int, float, float, float]:
    """(policy moves, wall seconds, mean engine batch size, prompt tokens run / asked) of one run."""
    stats = getattr(engine, "stats", None)  # the hf engine counts its batches; vLLM schedules per step
    if stats:
        engine.shared_prefixes = shared
        engine.prefix_cache.clear()  # each run starts cold: no prefix kept from the run before
    rows, batches = (stats.window_rows, stats.windows) if stats else (0, 0)
    asked, ran = (stats.prefill_tokens_requested, stats.prefill_tokens_computed) if stats else (0, 0)
    started = time.perf_counter()
    res = await Runner(store, concurrency=concurrency, progress=False).run(
        graph, tasks, RunRecord(id=new_id(), loop="bench")
    )
    secs = time.perf_counter() - started
    # rows decoded together per step: per window with admission, per batch without (windows count both)
    batch = (stats.window_rows - rows) / max(1, stats.windows - batches) if stats else float("nan")
    share = (
        (stats.prefill_tokens_computed - ran) / max(1, stats.prefill_tokens_requested - asked)
        if stats
        else float("nan")
    )
    return res.samples, secs, batch, share


def _label(backend: str, admit: int, shared: bool) -> str:
    if backend != "hf":
        return ""
    return (
        f"admission {'every ' + str(admit) if admit else 'off'}, shared prefixes {'on' if shared else 'off'}"
    )


async def main(args: argparse.Namespace) -> None:
    if args.games % args.games_per_task:
        raise SystemExit("--games must be a multiple of --games-per-task")
    episodes = args.games // args.games_per_task
    ts = GameTaskSet(games=("tictactoe",))
    tasks = ts.tasks(Split.TRAIN, max(episodes * args.rounds, args.serial_games))
    # vLLM (the CPU build in .venv-vllm): continuous batching and prefix caching; its CPU KV cache is sized
    # for the games in flight. On hf, one engine per admission setting.
    if args.backend == "vllm":
        admits = [0]
        engines = {0: load_engine(args.model, "vllm", cpu_kv_cache_seqs=args.games, max_model_len=2048)}
    else:
        admits = {"on": [args.admit_every], "off": [0], "both": [args.admit_every, 0]}[args.admission]
        engines = {a: load_engine(args.model, admit_every=a) for a in admits}

    def graph(engine: Any, games_per_task: int) -> Any:
        return selfplay.build_graph(
            engine,
            selfplay.SelfPlayConfig(
                games_per_task=games_per_task, temperature=1.0, max_tokens=args.max_tokens, rae=True
            ),
        )

    modes = {
        a: {
            "in-flight": (graph(e, args.games_per_task), tasks[: episodes * args.rounds], episodes),
            "serial": (graph(e, 1), tasks[: args.serial_games], 1),
        }
        for a, e in engines.items()
    }
    warm = {"in-flight": episodes, "serial": 2}
    shares = {"on": [True], "off": [False], "both": [True, False]}[args.prefixes]
    if args.backend != "hf":
        shares = [True]  # shared prefixes are the hf engine's; vLLM has its own prefix caching
    variants = [(a, s) for a in admits for s in shares]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'bench.db'}")
        for a, e in engines.items():  # warm-up
            for name, (g, ts_, conc) in modes[a].items():
                moves, secs, batch, _ = await _run(e, store, g, ts_[: warm[name]], conc)
                print(f"warm-up {name}: {moves} moves in {secs:.1f} s (mean batch {batch:.1f})", flush=True)
        all_ratios: dict[tuple[int, bool], list[float]] = {v: [] for v in variants}
        for p in range(args.pairs):
            for a, shared in variants if p % 2 == 0 else variants[::-1]:
                order = list(modes[a]) if p % 2 == 0 else list(reversed(modes[a]))
                got = {}
                for name in order:
                    g, ts_, conc = modes[a][name]
                    moves, secs, batch, share = await _run(engines[a], store, g, ts_, conc, shared)
                    got[name] = (moves / secs, moves, secs, batch, share)
                all_ratios[a, shared].append(got["in-flight"][0] / got["serial"][0])
                print(
                    f"pair {p + 1} {_label(args.backend, a, shared)}: "
                    + ", ".join(
                        f"{n} {r:.2f} moves/s ({m} moves, {s:.1f} s, mean batch {b:.1f}, "
                        f"prompt tokens run/asked {sh:.2f})"
                        for n, (r, m, s, b, sh) in got.items()
                    )
                    + f", ratio {all_ratios[a, shared][-1]:.2f}",
                    flush=True,
                )
    for e in engines.values():
        await e.close()
    how = (
        f"{episodes} episodes x {args.games_per_task} games"
        if args.games_per_task > 1
        else f"{episodes} episodes of 1 game"
    )
    for (a, shared), ratios in all_ratios.items():
        print(
            f"{_label(args.backend, a, shared)}: median ratio {args.games} games in flight ({how}) / one game at "
            f"a time, moves/s: {statistics.median(ratios):.2f} (target >= 4)"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--games", type=int, default=64, help="Games in flight in (a).")
    ap.add_argument(
        "--rounds", type=int, default=2, help="(a) plays rounds x --games games, --games at a time."
    )
    ap.add_argument(
        "--games-per-task", type=int, default=1, help="Games per episode in (a) (default: one each)."
    )
    ap.add_argument("--serial-games", type=int, default=8, help="Games played one at a time in (b).")
    ap.add_argument("--max-tokens", type=int, default=48, help="Most new tokens per move.")
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
    ap.add_argument(
        "--backend",
        default="hf",
        choices=["hf", "vllm"],
        help="Engine backend (vllm: run with .venv-vllm/bin/python, `make test-vllm` builds it).",
    )
    asyncio.run(main(ap.parse_args()))
