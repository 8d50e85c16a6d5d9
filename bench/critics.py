"""What does the critic layer cost over the bare engine? Critic throughput against plain prompts of the same length.

The same engine, the same 64 (`--items`) inputs, greedy, the same `max_tokens`, two ways:

  (a) critic: `critique_all(StepwiseCritic(engine, ...), items)`, 64 concurrent critiques through the critic
      (render the template, build the request, generate, parse the reply into a `Critique`);
  (b) plain:  the same engine answering 64 plain chat prompts, one `engine.generate` per prompt, all in one
      `asyncio.gather` (the same concurrency). The prompts are exactly the critic's prompts
      (`critic.messages(task, solution)`), so the prompt tokens are the same; nothing is parsed.

The inputs are held-out two-step arithmetic tasks (`ArithmeticTaskSet(steps=2, ops=("+", "*"))`) with solutions
rendered from their reference steps; every other one has its last number corrupted, so the critic sees a
realistic mix of right and wrong solutions. Greedy decoding with the same prompts and `max_tokens` makes the token
work identical: the bench checks that (a) and (b) generate the same text for every item and the same number of
tokens in total (the engine's `stats.tokens_generated`). Target: critiques/s ÷ plain answers/s >= 0.9.

One warm-up run of each, then `--pairs` interleaved pairs (alternating which goes first, since the machine is
shared); the headline is the median of the per-pair ratios.

    .venv/bin/python bench/critics.py --model smollm2-135m --items 64 --max-tokens 64 --pairs 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import time
from collections import Counter
from typing import Any

import torch

from strop.agents.engines import GenerationRequest, SamplingParams, load_engine
from strop.critics.base import Critique
from strop.critics.llm import CriticSampling, StepwiseCritic, chat_request, critique_all
from strop.critics.steps import render_solution
from strop.sandbox.tasks import Split
from strop.sandbox.tasks.arithmetic import ArithmeticTaskSet
from strop.sandbox.tasks.base import Task

_LAST_NUMBER = re.compile(r"(-?\d+)\s*$")


def _items(count: int) -> list[tuple[Task, str]]:
    """Held-out two-step problems with their reference solutions; every odd one has a wrong last number."""
    rng = random.Random(0)
    tasks = ArithmeticTaskSet(steps=2, ops=("+", "*")).tasks(Split.HELDOUT, count)
    items = []
    for i, task in enumerate(tasks):
        steps, answer = list(task.reference_steps), task.answer
        if i % 2:
            wrong = int(answer) + rng.choice([-1, 1]) * rng.randint(1, 9)
            steps[-1] = _LAST_NUMBER.sub(str(wrong), steps[-1])
            answer = str(wrong)  # the wrong result is carried into the final answer, as a model would
        items.append((task, render_solution(steps, answer)))
    return items


def _run_critic(
    critic: StepwiseCritic, items: list[tuple[Task, str]], loop: asyncio.AbstractEventLoop
) -> tuple[float, float, int, list[Critique]]:
    """Wall seconds, CPU seconds of this process (all threads), generated tokens, the critiques."""
    engine: Any = critic.engine
    before = engine.stats.tokens_generated
    cpu, start = time.process_time(), time.perf_counter()
    critiques = loop.run_until_complete(critique_all(critic, items))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return elapsed, cpu, engine.stats.tokens_generated - before, critiques


def _run_plain(
    engine: Any, requests: list[GenerationRequest], loop: asyncio.AbstractEventLoop
) -> tuple[float, float, int, list[str]]:
    """Wall seconds, CPU seconds of this process (all threads), generated tokens, the texts."""

    async def go() -> list[Any]:
        return list(await asyncio.gather(*(engine.generate([r]) for r in requests)))

    before = engine.stats.tokens_generated
    cpu, start = time.process_time(), time.perf_counter()
    results = loop.run_until_complete(go())
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return elapsed, cpu, engine.stats.tokens_generated - before, [r[0][0].text for r in results]


def _critic_work(critic: StepwiseCritic, items: list[tuple[Task, str]], replies: list[str]) -> float:
    """Seconds of the critic's own work for one run, without the engine: render and validate every request,
    parse every reply (median of 5). It is what (a) adds to (b), measured apart from the noisy generation."""
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for (task, solution), text in zip(items, replies, strict=True):
            GenerationRequest.model_validate(
                chat_request(critic.messages(task, solution), critic.sampling, 1, task.id, solution, 0)
            )
            critic.read(text, solution)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny", help="a cache name (tiny, smollm2-135m) or a model folder")
    parser.add_argument(
        "--items", type=int, default=64, help="critiques (and plain prompts) per run, all concurrent"
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens for both paths")
    parser.add_argument(
        "--pairs", type=int, default=5, help="interleaved (critic, plain) pairs after the warm-up"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    engine: Any = load_engine(
        args.model, model_version=args.model, max_batch_size=args.items, batch_wait_ms=10
    )
    critic = StepwiseCritic(engine, sampling=CriticSampling(max_tokens=args.max_tokens, temperature=0))
    items = _items(args.items)
    requests = [
        GenerationRequest(
            messages=critic.messages(task, solution),
            sampling=SamplingParams(max_tokens=args.max_tokens, temperature=0),
        )
        for task, solution in items
    ]
    prompt_tokens = [len(engine.prompt_ids(r)) for r in requests]

    loop = asyncio.new_event_loop()
    _run_critic(critic, items, loop)  # warm-up of each: first-call allocations, lazy inits, the batcher task
    _run_plain(engine, requests, loop)

    ratios: list[float] = []
    cpu_ratios: list[
        float
    ] = []  # plain CPU s / critic CPU s: the same ratio in CPU time, less swayed by load
    critic_rates: list[float] = []
    plain_rates: list[float] = []
    tokens: set[tuple[int, int]] = set()
    same_text: list[float] = []
    critiques: list[Critique] = []
    for i in range(args.pairs):
        if i % 2 == 0:
            t_a, c_a, n_a, critiques = _run_critic(critic, items, loop)
            t_b, c_b, n_b, texts = _run_plain(engine, requests, loop)
        else:
            t_b, c_b, n_b, texts = _run_plain(engine, requests, loop)
            t_a, c_a, n_a, critiques = _run_critic(critic, items, loop)
        rate_a, rate_b = len(items) / t_a, len(items) / t_b
        same = sum(c.text == t for c, t in zip(critiques, texts, strict=True)) / len(items)
        ratios.append(rate_a / rate_b)
        cpu_ratios.append(c_b / c_a)
        critic_rates.append(rate_a)
        plain_rates.append(rate_b)
        tokens.add((n_a, n_b))
        same_text.append(same)
        print(
            f"pair {i + 1} ({'critic' if i % 2 == 0 else 'plain'} first): critic {rate_a:.2f} critiques/s "
            f"({t_a:.2f}s, {n_a} tokens) | plain {rate_b:.2f} answers/s ({t_b:.2f}s, {n_b} tokens) | "
            f"ratio {rate_a / rate_b:.3f} (CPU time {c_b / c_a:.3f}) | same text for {same:.0%} of items | "
            f"load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )

    loop.run_until_complete(engine.close())
    loop.close()
    work = _critic_work(critic, items, texts)
    plain_time = len(items) / statistics.median(plain_rates)
    token_a = sorted({a for a, _ in tokens})
    token_b = sorted({b for _, b in tokens})
    match = all(a == b for a, b in tokens)
    verdicts = Counter(c.verdict.value for c in critiques)
    print(
        f"\nmodel {args.model}, {args.items} items, max_tokens {args.max_tokens}, {args.pairs} pairs, "
        f"torch threads {torch.get_num_threads()}, prompt tokens {min(prompt_tokens)}-{max(prompt_tokens)} "
        f"(mean {statistics.mean(prompt_tokens):.0f}), engine batches {engine.stats.batches}, "
        f"mean batch size {engine.stats.mean_batch_size:.1f}; last critiques: {dict(verdicts)}"
    )
    print("| path | per second (median) | generated tokens per run |")
    print("|---|---|---|")
    print(
        f"| (a) `critique_all`, {args.items} concurrent critiques | {statistics.median(critic_rates):.2f} "
        f"critiques/s | {', '.join(map(str, token_a))} |"
    )
    print(
        f"| (b) {args.items} concurrent plain `generate` | {statistics.median(plain_rates):.2f} "
        f"answers/s | {', '.join(map(str, token_b))} |"
    )
    print(
        f"ratio (a)/(b) = {statistics.median(ratios):.3f} (median of {len(ratios)} pairs "
        f"{[round(r, 3) for r in ratios]}; target >= 0.9); tokens (a) == (b) in every pair: {match}; "
        f"same text for {min(same_text):.0%} of items (worst pair)"
    )
    # The fastest run of each is the one least disturbed by other jobs on the shared cores (timeit's rule).
    print(
        f"best-of-runs ratio = {max(critic_rates) / max(plain_rates):.3f}; in CPU time (critiques per CPU "
        f"second / answers per CPU second) = {statistics.median(cpu_ratios):.3f} "
        f"{[round(r, 3) for r in cpu_ratios]}"
    )
    print(
        f"the critic's own work (render + validate {args.items} requests, parse {args.items} replies) = "
        f"{work * 1e3:.1f} ms per run, {work / plain_time:.2%} of a median plain run ({plain_time:.2f}s): "
        f"the ceiling it sets on the ratio is {plain_time / (plain_time + work):.3f}"
    )


if __name__ == "__main__":
    main()
