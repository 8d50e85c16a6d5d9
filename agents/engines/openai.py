"""The `openai` backend: any OpenAI-compatible server (`strop serve`, vLLM's server, llama.cpp, hosted APIs).

The official `openai` client already does timeouts and retries with exponential backoff; this module adds a
bound on concurrent requests (a server, or a rate limit, that sees 500 requests at once answers none of them
well) and turns the client's exceptions into EngineErrors that name the URL and what to check.

Token ids: hosted APIs do not return them. `strop serve` always does, and vLLM does when asked
(`extra_body={"return_token_ids": True}`); when absent, `token_ids` and `prompt_token_ids` are empty, and
anything that trains on those completions must re-tokenize (with the drift that implies).
The API key is read from the environment variable named by `api_key_env` at construction and never stored
elsewhere or logged.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from typing import Any

import openai

from strop.agents.engines.base import (
    Completion,
    EngineError,
    FinishReason,
    GenerationRequest,
    PromptTooLongError,
    as_requests,
)


class OpenAIEngine:
    """Chat (or completion, for raw prompts) requests against an OpenAI-compatible `base_url`."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 16,
        timeout_s: float = 60,
        max_retries: int = 3,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise EngineError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.extra_body = dict(extra_body or {})
        # Local servers need no key; the client insists on one, so send a placeholder when the env var is unset.
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=os.environ.get(api_key_env) or "no-key",
            timeout=timeout_s,
            max_retries=max_retries,
        )
        self._limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def model_version(self) -> str:
        return self.model

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        sem = self._limits.get(loop)
        if sem is None:
            sem = self._limits[loop] = asyncio.Semaphore(self.max_concurrency)
        return sem

    async def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        requests = as_requests(requests)
        if any(r.context_token_ids is not None for r in requests):
            raise EngineError(
                f"{self.base_url} is reached over HTTP, without the model's tokenizer, so it cannot continue a "
                "conversation from token ids (`context_token_ids`). Send the whole conversation as `messages` "
                "(multi-turn loops: set token_context = false), or use the hf or vllm engine."
            )
        if any(r.sampling.top_logprobs for r in requests):
            raise EngineError(
                "the openai backend does not return top_logprobs (it keeps the sampled tokens' log-probs only): "
                "ask with top_logprobs=0, or use the hf or vllm engine"
            )
        if any(r.tools for r in requests):
            raise EngineError(
                "the openai backend does not forward `tools` (its completions carry text and token ids, not the "
                "remote server's parsed tool calls): serve the model with the hf or vllm engine, whose server "
                "renders the tools and parses the calls itself"
            )
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, request: GenerationRequest) -> list[Completion]:
        s = request.sampling
        common: dict[str, Any] = {
            "model": self.model,
            "n": s.n,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
        }
        if s.stop:
            common["stop"] = s.stop
        if s.seed is not None:
            common["seed"] = s.seed
        extra = dict(self.extra_body)
        async with self._semaphore():
            try:
                if request.messages is not None:
                    if request.continue_final:  # vLLM's and strop's servers understand these
                        extra.update(continue_final_message=True, add_generation_prompt=False)
                    response = await self._client.chat.completions.create(
                        messages=[m.model_dump() for m in request.messages],  # type: ignore[misc]
                        logprobs=s.logprobs,
                        extra_body=extra or None,
                        **common,
                    )
                    return self._from_chat(response, s.logprobs)
                response = await self._client.completions.create(
                    prompt=request.prompt or "",
                    logprobs=1 if s.logprobs else None,
                    extra_body=extra or None,
                    **common,
                )
                return self._from_text(response, s.logprobs)
            except openai.APIStatusError as e:
                raise self._status_error(e) from e
            except (openai.APITimeoutError, openai.APIConnectionError) as e:
                raise EngineError(
                    f"no answer from {self.base_url} after {self.max_retries + 1} attempts "
                    f"({type(e).__name__}: {e}). Check that the server is running and reachable (for a strop "
                    f"model: `strop serve MODEL --port PORT`, then base_url='http://HOST:PORT/v1'), or raise "
                    f"timeout_s / max_retries."
                ) from e

    def _status_error(self, e: openai.APIStatusError) -> EngineError:
        body = e.body if isinstance(e.body, dict) else {}
        err = body.get("error", body) if isinstance(body, dict) else {}
        message = err.get("message", str(e)) if isinstance(err, dict) else str(e)
        code = err.get("code") if isinstance(err, dict) else None
        where = f"{self.base_url} answered {e.status_code}"
        if code == "prompt_too_long":
            return PromptTooLongError(f"{where}: {message}")
        if e.status_code == 401:
            return EngineError(
                f"{where} (unauthorized): set the API key in the environment variable {self.api_key_env}"
            )
        if e.status_code == 404:
            return EngineError(
                f"{where} (not found) for model {self.model!r}: check base_url (it usually ends in /v1) "
                f"and the model name (GET {self.base_url.rstrip('/')}/models lists them). {message}"
            )
        if e.status_code == 400:
            return EngineError(f"{where} (bad request): {message}")
        return EngineError(f"{where}: {message}")

    def _from_chat(self, response: Any, want_logprobs: bool) -> list[Completion]:
        prompt_ids = _extra(response, "prompt_token_ids") or []
        out = []
        for choice in sorted(response.choices, key=lambda c: c.index):
            logprobs = None
            if want_logprobs and choice.logprobs is not None and choice.logprobs.content is not None:
                logprobs = [t.logprob for t in choice.logprobs.content]
            out.append(
                Completion(
                    text=choice.message.content or "",
                    prompt_token_ids=list(prompt_ids),
                    token_ids=list(_extra(choice, "token_ids") or []),
                    logprobs=logprobs,
                    finish_reason=_finish(choice.finish_reason),
                    model_version=response.model or self.model,
                )
            )
        return out

    def _from_text(self, response: Any, want_logprobs: bool) -> list[Completion]:
        prompt_ids = _extra(response, "prompt_token_ids") or []
        out = []
        for choice in sorted(response.choices, key=lambda c: c.index):
            logprobs = None
            if want_logprobs and choice.logprobs is not None and choice.logprobs.token_logprobs is not None:
                logprobs = [float(x) for x in choice.logprobs.token_logprobs]
            out.append(
                Completion(
                    text=choice.text,
                    prompt_token_ids=list(_extra(choice, "prompt_token_ids") or prompt_ids),
                    token_ids=list(_extra(choice, "token_ids") or []),
                    logprobs=logprobs,
                    finish_reason=_finish(choice.finish_reason),
                    model_version=response.model or self.model,
                )
            )
        return out

    async def close(self) -> None:
        await self._client.close()


def _extra(obj: Any, name: str) -> Any:
    """A non-standard field (vLLM's and strop's token ids) from an openai response object."""
    value = getattr(obj, name, None)
    if value is None and getattr(obj, "model_extra", None):
        value = obj.model_extra.get(name)
    return value


def _finish(reason: str | None) -> FinishReason:
    return FinishReason.LENGTH if reason == "length" else FinishReason.STOP
