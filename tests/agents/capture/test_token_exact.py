"""Token exactness: `pg` training from an agent's captured calls equals `pg` training from the same samples made by
strop's own best-of-N loop, on the tiny model.

The agent loop's entry below sends exactly what best-of-N sends (the task's messages, the same temperature and
max_tokens) through an episode's base URL; with the same seed, rollout k's one call samples with best-of-N's
sample k seed. So the two loops must give identical prompt and completion ids per sample, the same log-probs
(up to batching round-off), the same group-relative advantages, and one `pg` step on either example set must
give the same weights. Anything the capture path re-tokenized, re-rendered or re-sampled would break one of these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from strop.agents.episode import run_episode
from strop.agents.loops import agent as agent_loop
from strop.agents.loops import best_of_n
from strop.agents.loops.base import task_messages
from strop.critics import VerifierCritic
from strop.memory.records import EpisodeRecord, ExampleKind, ExampleRecord
from strop.sandbox.tasks import ArithmeticTaskSet, Split, Task

TS = ArithmeticTaskSet()
N, SEED, TEMPERATURE, MAX_TOKENS = 4, 11, 0.8, 32


async def same_as_best_of_n(task: Task, client: Any) -> str:
    """The agent: best-of-N's request, one sample, through the episode's client."""
    r = await client.chat.completions.create(
        model="whatever-the-user-wrote",
        messages=[m.model_dump() for m in task_messages(task, None)],
        temperature=TEMPERATURE,
        max_tokens=MAX_TOKENS,
    )
    return r.choices[0].message.content or ""


def _actions(ep: EpisodeRecord) -> list[ExampleRecord]:
    """The episode's pg actions, in sample order (by completion ids, which the two loops share)."""
    actions = [ex for ex in ep.examples if ex.kind == ExampleKind.ADVANTAGE]
    return sorted(actions, key=lambda ex: (ex.payload["completion_ids"], ex.payload["advantage"]))


async def _episodes(engine: Any, task: Task) -> tuple[EpisodeRecord, EpisodeRecord]:
    bon = best_of_n.BestOfNConfig(
        n=N,
        seed=SEED,
        temperature=TEMPERATURE,
        max_tokens=MAX_TOKENS,
        emit_examples=False,
        emit_advantages=True,
    )
    ref = await run_episode(best_of_n.build_graph(engine, VerifierCritic(TS), bon), task, "bon")
    cfg = agent_loop.AgentLoopConfig(entry=f"{__name__}:same_as_best_of_n", n=N, seed=SEED)
    got = await run_episode(agent_loop.build_graph(engine, VerifierCritic(TS), cfg), task, "agent")
    return ref, got


@pytest.mark.slow
async def test_captured_agent_calls_train_exactly_like_best_of_n(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    from strop.agents.engines.hf import HFEngine

    engine = HFEngine(tiny_model_path, model_version="tiny")
    try:
        # the first train task whose samples are neither all right nor all wrong (else no advantage to train)
        for task in TS.tasks(Split.TRAIN, 24):
            ref, got = await _episodes(engine, task)
            if 0 < ref.outcome["correct"] < N:
                break
        else:
            pytest.fail("no task among 24 had mixed rewards; the tiny model changed")
    finally:
        await engine.close()

    # the same samples: ids equal, log-probs equal up to batching round-off, rewards equal
    by_rollout = {s.metadata["rollout"]: s for s in got.steps}
    assert sorted(by_rollout) == list(range(N)) and len(got.steps) == N
    for k, s in enumerate(ref.steps):
        mine = by_rollout[k]
        assert mine.prompt_token_ids == s.prompt_token_ids, k
        assert mine.token_ids == s.token_ids, k
        assert mine.logprobs == pytest.approx(s.logprobs, abs=1e-5), k
        assert mine.text == s.text and mine.reward == s.reward, k
        assert mine.metadata["temperature"] == TEMPERATURE
    assert got.outcome["correct"] == ref.outcome["correct"]

    # the same pg actions: ids, log-probs, temperature, group-relative advantages
    a, b = _actions(ref), _actions(got)
    assert a and len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in ("prompt_ids", "completion_ids", "temperature", "advantage"):
            assert x.payload[key] == y.payload[key], key
        assert y.payload["logprobs"] == pytest.approx(x.payload["logprobs"], abs=1e-5)

    # one pg step from each set: the same weights
    from transformers import AutoModelForCausalLM

    from strop.training.pg import PGSettings, build_dataset, run_pg

    cfg = PGSettings(
        epochs=1,
        batch_size=len(a),
        learning_rate=1e-3,
        optimizer="sgd",
        lora=None,
        max_grad_norm=1e6,
        temperature=TEMPERATURE,
    )
    paths = []
    for name, examples in (("bon", a), ("agent", b)):
        out = run_pg(
            build_dataset(examples, cfg), model_path=tiny_model_path, output_dir=tmp_path / name, settings=cfg
        )
        assert out.steps == 1
        paths.append(out.path)
    import torch

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_path)).state_dict()
    one, two = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in paths)
    moved = max((one[k] - base[k]).abs().max().item() for k in base)
    assert moved > 0  # the step changed the weights
    for k in base:
        assert torch.allclose(one[k], two[k], atol=1e-6, rtol=1e-5), k
