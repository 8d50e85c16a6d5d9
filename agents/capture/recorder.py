"""Turning one served request into a captured call: what `strop serve` does for a call under an episode.

The recorder starts before the request is validated (so the call gets its index, and its default seed, in
arrival order) and records after the engine answered, streamed or not. A request that fails (a bad field, a
prompt too long) records nothing: no tokens were sampled.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from strop.agents.capture.episodes import CapturedCall, CapturedEpisode, ChoiceRecord
from strop.agents.capture.hub import CaptureHub
from strop.agents.engines.base import Completion, GenerationRequest
from strop.agents.engines.streaming import StreamEvent
from strop.agents.engines.tools import call_prefix, template_messages
from strop.agents.server_api import parse_reply


class Recorder:
    """Records one request made under an episode."""

    def __init__(
        self,
        hub: CaptureHub,
        episode: CapturedEpisode,
        index: int,
        body: Any,
        chat: bool,
        tokenizer: Any = None,
    ) -> None:
        self.hub = hub
        self.episode = episode
        self.index = index
        self.body = body
        self.chat = chat
        self.tokenizer = tokenizer
        self.started = time.time()

    @classmethod
    async def start(
        cls, hub: CaptureHub, episode_id: str, body: Any, chat: bool, tokenizer: Any = None
    ) -> Recorder:
        """Reserve the call's index; a call that sends no seed gets the episode's (reproducible agents)."""
        episode = await hub.get(episode_id)
        index = episode.reserve_call()
        seed = episode.call_seed(index)
        if body.seed is None and seed is not None:
            body.seed = seed
        return cls(hub, episode, index, body, chat, tokenizer)

    async def done(self, request: GenerationRequest, completions: list[Completion]) -> None:
        choices = []
        for c in completions:
            parsed = parse_reply(c, request, self.tokenizer)
            calls = list(parsed.tool_calls) if parsed is not None else []
            invalid = bool(parsed.invalid) if parsed is not None else False
            choices.append(
                ChoiceRecord(
                    text=c.text,
                    prompt_token_ids=c.prompt_token_ids,
                    token_ids=c.token_ids,
                    logprobs=c.logprobs,
                    finish_reason=str(c.finish_reason),
                    model_version=c.model_version,
                    tool_calls=calls,
                    invalid_tool_call=invalid,
                )
            )
        sft_prompt, sft_tools, prefill = None, None, ""
        if self.chat and self.tokenizer is not None and request.messages is not None:
            dicts, extra = template_messages(
                self.tokenizer, request.messages, request.tools, request.tool_choice
            )
            sft_prompt, sft_tools = dicts, extra.get("tools")
            prefill = call_prefix(self.tokenizer, request.tools, request.tool_choice)
        call = CapturedCall(
            sft_prompt=sft_prompt,
            sft_tools=sft_tools,
            prefill=prefill,
            index=self.index,
            endpoint="chat" if self.chat else "text",
            messages=[m.model_dump(mode="json", exclude_none=True) for m in request.messages or []]
            if self.chat
            else None,
            prompt=request.prompt,
            tools=request.tools,
            temperature=request.sampling.temperature,
            top_p=request.sampling.top_p,
            choices=choices,
            started_at=self.started,
            latency_s=time.time() - self.started,
        )
        await self.hub.record(self.episode.id, call)

    async def watch(
        self, request: GenerationRequest, events: AsyncIterator[StreamEvent]
    ) -> AsyncIterator[StreamEvent]:
        """Pass a stream through and record it once every choice finished (before `[DONE]` is sent)."""
        finished: dict[int, Completion] = {}
        try:
            async for ev in events:
                if ev.completion is not None:
                    finished[ev.index] = ev.completion
                yield ev
            await self.done(request, [finished[i] for i in sorted(finished)])
        finally:
            await events.aclose()  # type: ignore[attr-defined]  # the engine's stream frees its rows
