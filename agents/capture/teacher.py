"""A teacher that plays the policy's part in a user's agent: demonstrations captured exactly as the agent
prompts the policy.

Why: a small base model (SmolLM2-135M) does not call tools at all, so rollouts of a tool-using agent give
the policy gradient nothing to work with. As the games' warm start does with a fixed teacher, the agent runs
unchanged against a server whose engine answers with a scripted reply (`reply(task, messages, tools)`); the
agent loop keeps each call of a successful rollout as an SFT example whose prompt is what the agent really
sent, rendered by the policy's own tokenizer and chat template (tools included), so supervised training
teaches the format the policy will be asked for.

The reply function sees the task: the engine finds it by its prompt text in the conversation's user
messages (`expect` registers the tasks in flight).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from strop.agents.engines.base import (
    Completion,
    Engine,
    EngineError,
    FinishReason,
    GenerationRequest,
    as_requests,
    encode_prompt,
)
from strop.sandbox.tasks.base import Task

Reply = Callable[[Task, list[dict[str, Any]], list[dict[str, Any]] | None], Any]


class TeacherEngine:
    """An engine whose replies come from `reply`; prompt ids from `base`'s tokenizer and chat template."""

    def __init__(self, base: Engine, reply: Reply, *, name: str = "teacher") -> None:
        self.base = base
        self.tokenizer: Any = getattr(base, "tokenizer", None)
        self.reply = reply
        self.name = name
        self._tasks: dict[str, Task] = {}

    @property
    def model_version(self) -> str:
        return self.name

    def expect(self, task: Task) -> None:
        """Register a task whose rollouts are about to ask for replies."""
        self._tasks[task.prompt] = task

    def _task_of(self, request: GenerationRequest) -> Task:
        texts = [m.content for m in request.messages or [] if m.role == "user"]
        if request.prompt is not None:
            texts.append(request.prompt)
        for prompt, task in self._tasks.items():
            if any(prompt in t for t in texts):
                return task
        raise EngineError("the teacher got a conversation about no task it expects: call expect(task) first")

    async def _resolve_tokenizer(self) -> Any:
        """The policy's tokenizer; an engine served lazily (an evolve cycle's) is asked to `resolve` first."""
        if self.tokenizer is None and hasattr(self.base, "resolve"):
            self.tokenizer = getattr(await self.base.resolve(), "tokenizer", None)
        if self.tokenizer is None:
            raise EngineError(
                f"a teacher needs the policy's tokenizer; the {type(self.base).__name__} engine has none "
                "(use the hf or vllm engine)"
            )
        return self.tokenizer

    async def generate(
        self, requests: list[GenerationRequest] | list[dict[str, Any]]
    ) -> list[list[Completion]]:
        await self._resolve_tokenizer()
        out: list[list[Completion]] = []
        for request in as_requests(requests):
            task = self._task_of(request)
            messages = [m.model_dump(mode="json", exclude_none=True) for m in request.messages or []]
            text = self.reply(task, messages, getattr(request, "tools", None))
            if inspect.isawaitable(text):
                text = await text
            prompt_ids = encode_prompt(self.tokenizer, request, self.name)
            ids = list(self.tokenizer(str(text), add_special_tokens=False)["input_ids"])
            if self.tokenizer.eos_token_id is not None:
                ids.append(int(self.tokenizer.eos_token_id))
            completion = Completion(
                text=str(text),
                prompt_token_ids=prompt_ids,
                token_ids=ids,
                logprobs=None,
                finish_reason=FinishReason.STOP,
                model_version=self.name,
            )
            out.append([completion] * request.sampling.n)
        return out

    async def close(self) -> None:
        """The base engine belongs to whoever made it."""
