"""Records for store tests: realistic shapes (token ids, log-probs, a tree, TRL payloads), cheap to make."""

from __future__ import annotations

import random

from strop.memory.records import (
    CritiqueRecord,
    EpisodeRecord,
    ExampleKind,
    ExampleRecord,
    Role,
    StepRecord,
)


def sft_payload(question: str, answer: str) -> dict[str, object]:
    return {
        "prompt": [{"role": "user", "content": question}],
        "completion": [{"role": "assistant", "content": answer}],
    }


def pair_payload(question: str, good: str, bad: str) -> dict[str, object]:
    return {
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": good}],
        "rejected": [{"role": "assistant", "content": bad}],
    }


def make_episode(
    run_id: str,
    *,
    task_id: str = "arith-1",
    n_steps: int = 4,
    n_tokens: int = 16,
    examples: int = 1,
    kind: ExampleKind = ExampleKind.SFT,
    role: Role = Role.POLICY,
    split: str = "train",
    verdict: str = "incorrect",
    seed: int = 0,
) -> EpisodeRecord:
    rng = random.Random(seed)
    steps: list[StepRecord] = []
    for i in range(n_steps):
        steps.append(
            StepRecord(
                parent_id=steps[i - 1].id if i else None,
                index=i,
                model_version="m0",
                text=f"Step {i + 1}: {rng.randint(1, 99)} + {rng.randint(1, 99)}",
                prompt_token_ids=[rng.randrange(50_000) for _ in range(8)],
                token_ids=[rng.randrange(50_000) for _ in range(n_tokens)],
                logprobs=[-rng.random() * 5 for _ in range(n_tokens)],
                reward=float(i == n_steps - 1),
                value=rng.random(),
                visits=rng.randrange(10),
                metadata={"depth": i},
            )
        )
    critiques = [
        CritiqueRecord(
            step_id=steps[-1].id if steps else None,
            critic_version="critic-v1",
            verdict=verdict,
            first_wrong_step=1 if verdict == "incorrect" else None,
            text=f"The carry in step 2 is wrong ({task_id}).",
            parsed=True,
            validated=True,
        )
    ]
    make = sft_payload if kind == ExampleKind.SFT else None
    payloads = [
        make(f"What is {i} + {seed}?", f"#### {i + seed}") if make else pair_payload(f"Q{i}", "good", "bad")
        for i in range(examples)
    ]
    return EpisodeRecord(
        run_id=run_id,
        task_id=task_id,
        loop="best_of_n",
        reward=1.0,
        outcome={"correct": 1, "n": n_steps},
        steps=steps,
        critiques=critiques,
        examples=[
            ExampleRecord(kind=kind, role=role, payload=p, task_id=task_id, split=split) for p in payloads
        ],
    )
