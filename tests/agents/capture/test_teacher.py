"""The teacher engine: demonstrations prompted exactly as the policy is, also behind a lazily served engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from strop.agents.capture.teacher import TeacherEngine
from strop.agents.engines.base import EngineError, GenerationRequest
from strop.agents.engines.hf import HFEngine
from strop.sandbox.tasks.base import Task

TASK = Task(id="t/1", set_name="t", split="train", prompt="What is 2 + 3?", answer="5")


class _Lazy:
    """Like an evolve stage's engine: no tokenizer until it is resolved."""

    def __init__(self, engine: HFEngine) -> None:
        self.engine = engine
        self.model_version = engine.model_version

    async def resolve(self) -> Any:
        return self.engine


async def test_teacher_replies_with_the_policys_prompt_ids(tiny_model_path: Path) -> None:
    policy = HFEngine(tiny_model_path, model_version="tiny")
    seen: list[Any] = []

    def reply(task: Task, messages: list[dict[str, Any]], tools: Any) -> str:
        seen.append((task.id, messages[-1]["content"], tools))
        return f"#### {task.answer}"

    teacher = TeacherEngine(_Lazy(policy), reply)  # type: ignore[arg-type]
    teacher.expect(TASK)
    request = GenerationRequest.chat(TASK.prompt, n=2)
    [[a, b]] = await teacher.generate([request])
    [[sampled]] = await policy.generate([GenerationRequest.chat(TASK.prompt, max_tokens=2)])
    assert a.prompt_token_ids == sampled.prompt_token_ids  # the policy's own chat template and tokenizer
    assert a.text == b.text == "#### 5" and a.logprobs is None and a.model_version == "teacher"
    assert a.token_ids[-1] == policy.tokenizer.eos_token_id
    assert seen == [("t/1", TASK.prompt, None)]
    with pytest.raises(EngineError, match="no task it expects"):
        await teacher.generate([GenerationRequest.chat("something else")])
    await policy.close()


async def test_teacher_without_a_tokenizer_says_so() -> None:
    class _NoTokenizer:
        model_version = "remote"

    teacher = TeacherEngine(_NoTokenizer(), lambda *a: "x")  # type: ignore[arg-type]
    teacher.expect(TASK)
    with pytest.raises(EngineError, match="needs the policy's tokenizer"):
        await teacher.generate([GenerationRequest.chat(TASK.prompt)])
