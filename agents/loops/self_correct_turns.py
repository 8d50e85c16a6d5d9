"""What the policy reads between self-correction turns: the kinds of feedback, the feedback text (an
instruction, a critique, the verifier's verdict or the code jail's output), the revision request continued
from the previous turn's exact token ids, and the conversation as chat messages (for text engines and SFT).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

from strop.agents.engines.base import GenerationRequest, Message
from strop.agents.loops.base import task_messages
from strop.critics.base import Critic, Critique
from strop.sandbox.tasks.base import Task

if TYPE_CHECKING:
    from strop.agents.loops.self_correct import SelfCorrectConfig

# SCoRe's self-correction instruction for MATH (its appendix), used between turns.
INTRINSIC_INSTRUCTION = (
    "There might be an error in the solution above because of lack of understanding of the question. "
    "Please correct the error, if any, and rewrite the solution."
)


class Feedback(StrEnum):
    """What the policy is told between turns."""

    INTRINSIC = "intrinsic"  # the instruction alone
    CRITIC = "critic"  # a critique from the critic role (a step-wise LLM critic)
    ORACLE = "oracle"  # the verifier's verdict, right or wrong (never the reference answer): an upper bound
    EXECUTION = "execution"  # code tasks: the jail's result of running the tests (the failing test's output)


async def feedback_for(
    cfg: SelfCorrectConfig, task: Task, answer: str, check: Critique, critic: Critic | None
) -> dict[str, Any]:
    """The text put between turns, and the critique it came from (stored with the episode)."""
    critique: Critique | None = None
    if cfg.feedback == Feedback.INTRINSIC:
        lead = ""
    elif cfg.feedback == Feedback.ORACLE:
        # The verdict only: the verifier's reason can quote the reference answer.
        critique = check
        lead = "Your final answer is correct." if check.correct else "Your final answer is wrong."
    elif cfg.feedback == Feedback.EXECUTION:
        if task.metadata.get("answer_type") != "code":
            raise ValueError(
                f"feedback = 'execution' runs code, but task {task.id} is not a code task; use "
                "intrinsic, critic or oracle feedback for it"
            )
        critique = check
        lead = (
            "All tests passed."
            if check.correct
            else f"Running the tests on your code gave:\n{check.text[: cfg.feedback_chars]}"
        )
    else:
        assert critic is not None
        critique = await critic.critique(task, answer)
        lead = f"A reviewer checked your solution:\n{critique.text.strip()[: cfg.feedback_chars]}"
    text = f"{lead}\n\n{cfg.instruction}" if lead else cfg.instruction
    return {"text": text, "critique": critique.model_dump(mode="json") if critique else None}


def revision_request(
    cfg: SelfCorrectConfig,
    task: Task,
    turns: list[dict[str, Any]],
    feedback: list[dict[str, Any]],
    conversation: int,
) -> GenerationRequest:
    """The next turn's request: the previous turn's exact ids plus the feedback (`token_context`), or the
    whole conversation as text."""
    sampling = cfg.sampling(task.id, conversation, len(turns))
    new = [Message(role="user", content=feedback[-1]["text"])]
    if cfg.token_context:
        last = turns[-1]
        return GenerationRequest(
            messages=new, sampling=sampling, context_token_ids=[*last["prompt_token_ids"], *last["token_ids"]]
        )
    return GenerationRequest(
        messages=conversation_messages(cfg, task, turns, feedback) + new, sampling=sampling
    )


def conversation_messages(
    cfg: SelfCorrectConfig, task: Task, turns: list[dict[str, Any]], feedback: list[dict[str, Any]]
) -> list[Message]:
    """The conversation as chat messages: task, then each turn and the feedback after it (for SFT and text engines)."""
    msgs = task_messages(task, cfg.system_prompt)
    for t, turn in enumerate(turns):
        msgs.append(Message(role="assistant", content=turn["text"]))
        if t < len(feedback) and t < len(turns) - 1:
            msgs.append(Message(role="user", content=feedback[t]["text"]))
    return msgs
