"""An OpenAI-compatible HTTP server over any strop engine, so any OpenAI-client agent can use a strop model.

Every choice also carries `token_ids`, and the response `prompt_token_ids` (the field names vLLM uses), so
a strop client (the `openai` backend) can train on exactly what was sampled. Bad input answers 400 with an
OpenAI-style error naming the field; a prompt over the context window answers 400 with code
`prompt_too_long`, which the `openai` backend turns back into PromptTooLongError.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from strop.agents.engines.base import (
    Completion,
    Engine,
    EngineError,
    GenerationRequest,
    Message,
    PromptTooLongError,
    SamplingParams,
)


class _Sampling(BaseModel):
    """The OpenAI sampling fields strop honours; unknown fields (user, metadata...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, description="Ignored beyond echoing: the server serves one model.")
    n: int = Field(1, description="Completions per request.")
    temperature: float = Field(1.0, description="0 is greedy.")
    top_p: float = Field(1.0, description="Nucleus sampling mass.")
    max_tokens: int | None = Field(None, description="Most new tokens (default 256).")
    max_completion_tokens: int | None = Field(None, description="Newer name for max_tokens; wins if both.")
    stop: str | list[str] | None = Field(None, description="Stop strings.")
    seed: int | None = Field(None, description="Seed for reproducible sampling.")
    stream: bool = Field(False, description="Streaming is not supported; true answers 400.")

    def sampling(self, logprobs: bool) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        max_tokens = self.max_completion_tokens or self.max_tokens
        return SamplingParams(
            n=self.n,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
            seed=self.seed,
            logprobs=logprobs,
            **({"max_tokens": max_tokens} if max_tokens is not None else {}),
        )


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(description="The conversation.")
    logprobs: bool = Field(False, description="Return per-token log-probs in choices[].logprobs.content.")
    continue_final_message: bool = Field(
        False, description="Continue the last assistant message (vLLM field)."
    )
    add_generation_prompt: bool = Field(
        True, description="Accepted for vLLM compatibility; the turn is opened unless continue_final_message."
    )


class CompletionRequest(_Sampling):
    prompt: str = Field(description="Raw prompt text, used without chat template.")
    logprobs: int | None = Field(None, description="Any value returns the sampled tokens' log-probs.")


def _error(status: int, message: str, *, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": kind, "param": param, "code": code}},
    )


def _validation_response(errors: list[Any]) -> JSONResponse:
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = ".".join(loc) or None
    message = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
        for e in errors
    )
    return _error(400, f"invalid request: {message}", param=field)


def create_app(engine: Engine) -> FastAPI:
    """The FastAPI app; `strop serve` runs it with uvicorn, tests run it in a thread."""
    app = FastAPI(title="strop", description="OpenAI-compatible API over a strop engine.")
    created = int(time.time())

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(list(exc.errors()))

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": engine.model_version, "object": "model", "created": created, "owned_by": "strop"}
            ],
        }

    async def _run(body: _Sampling, build: Any) -> Any:
        if body.stream:
            return _error(
                400, "stream=true is not supported by strop serve: send stream=false", param="stream"
            )
        try:
            request = build()
            [completions] = await engine.generate([request])
        except ValidationError as e:
            return _validation_response(list(e.errors()))
        except PromptTooLongError as e:
            return _error(400, str(e), param="messages", code="prompt_too_long")
        except EngineError as e:
            return _error(500, str(e))
        return completions

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest) -> Any:
        def build() -> GenerationRequest:
            return GenerationRequest(
                messages=body.messages,
                sampling=body.sampling(body.logprobs),
                continue_final=body.continue_final_message,
            )

        result = await _run(body, build)
        if isinstance(result, JSONResponse):
            return result
        return _chat_response(engine, result, body.logprobs, _tokenizer(engine))

    @app.post("/v1/completions", response_model=None)
    async def complete(body: CompletionRequest) -> Any:
        want = body.logprobs is not None

        def build() -> GenerationRequest:
            return GenerationRequest(prompt=body.prompt, sampling=body.sampling(want))

        result = await _run(body, build)
        if isinstance(result, JSONResponse):
            return result
        return _text_response(engine, result, want, _tokenizer(engine))

    return app


def _tokenizer(engine: Engine) -> Any:
    return getattr(engine, "tokenizer", None)


def _token_strings(tokenizer: Any, ids: list[int]) -> list[str]:
    if tokenizer is None:
        return [str(i) for i in ids]
    return [tokenizer.decode([i]) for i in ids]


def _usage(completions: list[Completion]) -> dict[str, int]:
    prompt = len(completions[0].prompt_token_ids) if completions else 0
    generated = sum(len(c.token_ids) for c in completions)
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


def _chat_response(
    engine: Engine, completions: list[Completion], logprobs: bool, tokenizer: Any
) -> dict[str, Any]:
    choices = []
    for i, c in enumerate(completions):
        lp: dict[str, Any] | None = None
        if logprobs and c.logprobs is not None:
            tokens = _token_strings(tokenizer, c.token_ids)
            lp = {
                "content": [
                    {"token": t, "logprob": v, "bytes": list(t.encode()), "top_logprobs": []}
                    for t, v in zip(tokens, c.logprobs, strict=False)
                ]
            }
        choices.append(
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish_reason.value,
                "logprobs": lp,
                "token_ids": c.token_ids,
            }
        )
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": engine.model_version,
        "choices": choices,
        "usage": _usage(completions),
        "prompt_token_ids": completions[0].prompt_token_ids if completions else [],
    }


def _text_response(
    engine: Engine, completions: list[Completion], logprobs: bool, tokenizer: Any
) -> dict[str, Any]:
    choices: list[dict[str, Any]] = []
    for i, c in enumerate(completions):
        lp = None
        if logprobs and c.logprobs is not None:
            lp = {
                "tokens": _token_strings(tokenizer, c.token_ids),
                "token_logprobs": c.logprobs,
                "top_logprobs": None,
                "text_offset": None,
            }
        choices.append(
            {
                "index": i,
                "text": c.text,
                "finish_reason": c.finish_reason.value,
                "logprobs": lp,
                "token_ids": c.token_ids,
            }
        )
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": engine.model_version,
        "choices": choices,
        "usage": _usage(completions),
        "prompt_token_ids": completions[0].prompt_token_ids if completions else [],
    }
