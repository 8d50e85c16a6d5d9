"""The self-correction episode, apart from its graph: SCoRe's shaped rewards and group baseline, every turn
as a step with its checks, the outcome (accuracy per turn, wrong-to-right and right-to-wrong changes), and the
training examples (`pg` advantages or the SFT-on-corrections baseline).

Pure functions of the loop's state (JSON), so the bookkeeping is tested without engines and a record node
run twice gives the same episode, ids included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from strop.agents.engines.base import Message
from strop.agents.loops.base import stable_id
from strop.agents.loops.self_correct_turns import Feedback, conversation_messages
from strop.critics.base import Critique
from strop.memory.records import (
    AdvantagePayload,
    CritiqueRecord,
    EpisodeRecord,
    ExampleKind,
    ExampleRecord,
    Role,
    StepRecord,
)
from strop.sandbox.tasks.base import Split, Task

if TYPE_CHECKING:
    from strop.agents.loops.self_correct import SelfCorrectConfig, SelfCorrectState


def shaped_rewards(rewards: list[float], *, stage: int, alpha: float) -> list[float]:
    """Per turn, the reward its action is trained on: r(y_1), then r(y_t) + alpha * (r(y_t) - r(y_t-1))
    (SCoRe's improvement bonus, stage 2; stage 1 uses r(y_t) alone)."""
    bonus = alpha if stage == 2 else 0.0
    return [r if t == 0 else r + bonus * (r - rewards[t - 1]) for t, r in enumerate(rewards)]


def group_advantages(shaped: list[list[float]]) -> list[list[float]]:
    """Each turn's reward minus the mean over the conversations that reached that turn (0 with a group of one
    would learn nothing, so a lone conversation keeps its raw reward: plain REINFORCE)."""
    out: list[list[float]] = []
    for rs in shaped:
        row = []
        for t, r in enumerate(rs):
            group = [other[t] for other in shaped if len(other) > t]
            row.append(r - sum(group) / len(group) if len(group) > 1 else r)
        out.append(row)
    return out


def episode_of(state: SelfCorrectState, cfg: SelfCorrectConfig, *, loop: str) -> EpisodeRecord:
    """The finished conversations: every turn as a step with its check (and critic feedback) as critiques,
    the accuracy per turn and the wrong-to-right changes, and the examples `emit` asks for."""
    task = Task.model_validate(state["task"])
    eid = state["episode_id"]
    train = task.split == Split.TRAIN
    steps: list[StepRecord] = []
    critiques: list[CritiqueRecord] = []
    rewards = [[Critique.model_validate(c).reward for c in checks] for checks in state["checks"]]
    right = [[Critique.model_validate(c).correct for c in checks] for checks in state["checks"]]
    shaped = [shaped_rewards(r, stage=cfg.stage, alpha=cfg.alpha) for r in rewards]
    advantages = group_advantages(shaped)
    examples: list[ExampleRecord] = []
    for i, turns in enumerate(state["turns"]):
        parent = None
        for t, turn in enumerate(turns):
            step_id = stable_id(eid, "turn", i, t)
            fb = state["feedback"][i][t] if t < len(state["feedback"][i]) else None
            steps.append(
                StepRecord(
                    id=step_id,
                    parent_id=parent,
                    index=i * cfg.turns + t,
                    role="assistant",
                    model_version=turn["model_version"],
                    text=turn["text"],
                    prompt_token_ids=turn["prompt_token_ids"],
                    token_ids=turn["token_ids"],
                    logprobs=turn["logprobs"],
                    reward=rewards[i][t],
                    metadata={
                        "conversation": i,
                        "turn": t + 1,
                        "finish_reason": turn["finish_reason"],
                        "correct": right[i][t],
                        "shaped_reward": shaped[i][t],
                        "advantage": advantages[i][t],
                        "feedback_after": fb["text"] if fb else None,
                    },
                )
            )
            check = Critique.model_validate(state["checks"][i][t])
            critiques.append(
                CritiqueRecord(
                    id=stable_id(eid, "check", i, t),
                    step_id=step_id,
                    critic_version=check.critic_version,
                    verdict=str(check.verdict),
                    text=check.text,
                    parsed=True,
                )
            )
            if fb and fb.get("critique") and cfg.feedback == Feedback.CRITIC:
                c = Critique.model_validate(fb["critique"])
                critiques.append(
                    CritiqueRecord(
                        id=stable_id(eid, "feedback", i, t),
                        step_id=step_id,
                        critic_version=c.critic_version,
                        verdict=str(c.verdict),
                        first_wrong_step=c.first_wrong_step,
                        text=c.text,
                        parsed=c.parsed,
                        corrected_solution=c.corrected_solution,
                    )
                )
            parent = step_id
            if train:
                examples += _turn_examples(
                    cfg, task, eid, i, t, state, advantages[i][t], shaped[i][t], right[i]
                )
    first = [r[0] for r in right]
    last = [r[-1] for r in right]
    n = len(right)
    return EpisodeRecord(
        id=eid,
        run_id=state["run_id"],
        task_id=task.id,
        loop=loop,
        reward=sum(r[-1] for r in rewards) / n if n else 0.0,
        # n/correct/pass feed the runner's totals: conversations and those right at their last turn.
        outcome={
            "n": n,
            "correct": sum(last),
            "pass": any(last),
            "examples": len(examples),
            "tokens": sum(len(s.token_ids or []) for s in steps),
            "feedback": str(cfg.feedback),
            "first_correct": sum(first),
            "last_correct": sum(last),
            "i2c": sum(not a and b for a, b in zip(first, last, strict=True)),
            "c2i": sum(a and not b for a, b in zip(first, last, strict=True)),
            "turns_taken": sum(len(r) for r in right),
            "correct_by_turn": [sum(r[min(t, len(r) - 1)] for r in right) for t in range(cfg.turns)],
        },
        steps=steps,
        critiques=critiques,
        examples=examples,
    )


def _turn_examples(
    cfg: SelfCorrectConfig,
    task: Task,
    eid: str,
    i: int,
    t: int,
    state: SelfCorrectState,
    advantage: float,
    shaped: float,
    right: list[bool],
) -> list[ExampleRecord]:
    """Turn t of conversation i as training data: one ADVANTAGE example (pg), or an SFT example of a
    revision that ends right (sft)."""
    turn = state["turns"][i][t]
    common = {"episode_id": eid, "task_id": task.id, "split": str(task.split)}
    if cfg.emit == "pg":
        anchor = cfg.stage == 1 and t == 0
        if anchor:
            if i >= cfg.anchors_per_task:
                return []
            advantage = 0.0
        elif advantage == 0.0 and cfg.skip_zero_advantage:
            return []
        if not turn["token_ids"] or turn["logprobs"] is None:
            return []  # an empty turn has no tokens to train
        payload = AdvantagePayload(
            prompt_ids=turn["prompt_token_ids"],
            completion_ids=turn["token_ids"],
            logprobs=turn["logprobs"],
            advantage=advantage,
            temperature=cfg.temperature or None,
            model_version=turn["model_version"],
            reward=shaped,
            completion=turn["text"],
            metadata={
                "turn": t + 1,
                "conversation": i,
                "stage": cfg.stage,
                "feedback": str(cfg.feedback),
                "anchor": anchor,
            },
        )
        return [
            ExampleRecord(
                id=stable_id(eid, "pg", i, t),
                kind=ExampleKind.ADVANTAGE,
                role=Role.POLICY,
                payload=payload.model_dump(mode="json"),
                **common,
            )
        ]
    if cfg.emit == "sft" and t > 0 and right[t] and (cfg.sft_keep_correct or not right[t - 1]):
        msgs = conversation_messages(cfg, task, state["turns"][i][:t], state["feedback"][i])
        msgs.append(Message(role="user", content=state["feedback"][i][t - 1]["text"]))
        return [
            ExampleRecord(
                id=stable_id(eid, "sft", i, t),
                kind=ExampleKind.SFT,
                role=Role.POLICY,
                payload={
                    "prompt": [m.model_dump() for m in msgs],
                    "completion": [{"role": "assistant", "content": turn["text"]}],
                    "metadata": {"turn": t + 1, "was_correct": right[t - 1]},
                },
                **common,
            )
        ]
    return []
