"""An OpenAI-compatible HTTP server over any strop engine, so any OpenAI-client agent can use a strop model.

Every choice also carries `token_ids`, and the response `prompt_token_ids` (the field names vLLM uses), so
a strop client (the `openai` backend) can train on exactly what was sampled. `/v1/completions` also takes
the prompt as token ids, as vLLM does, and its choices carry `prompt_token_ids` and `stop_reason` as vLLM's
do: that is the `openai` engine's token-exact path. Bad input answers 400 with an
OpenAI-style error naming the field; a prompt over the context window answers 400 with code
`prompt_too_long`, which the `openai` backend turns back into PromptTooLongError. A parameter strop does not
implement answers 400 naming it (server_api.py); a model name the server does not serve answers 404
`model_not_found`; a full queue answers 429 with Retry-After, so load sheds at the door instead of piling up.
`stream=true` streams from the engine's own decode loop (server_stream.py). With a `RegistryFollower`
(server_follow.py) the server follows a lineage's promoted version without a restart. A request's queue slot
is given back on every path it can end, and a client that goes away cancels its generation (server_slots.py);
an API key and a body limit guard every endpoint (server_auth.py). vLLM's dynamic LoRA endpoints, when
allowed, let an `openai` client follow promotions here as against vLLM (server_lora.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from strop.agents.capture.episodes import CaptureError, ClosedEpisodeError
from strop.agents.capture.hub import CaptureHub
from strop.agents.capture.recorder import Recorder
from strop.agents.capture.routes import add_episode_routes
from strop.agents.engines.base import Engine, EngineError, GenerationRequest, PromptTooLongError
from strop.agents.engines.streaming import StreamingEngine
from strop.agents.server_api import (
    ChatCompletionRequest,
    CompletionRequest,
    chat_response,
    error_body,
    text_response,
)
from strop.agents.server_auth import DEFAULT_MAX_BODY_BYTES, NetworkGuard
from strop.agents.server_lora import add_lora_routes, runtime_lora_allowed
from strop.agents.server_slots import Admission, ClientGone, Slot, unless_gone
from strop.agents.server_stream import SlotStreamingResponse, chunks
from strop.memory.records import EpisodeStatus

__all__ = ["ChatCompletionRequest", "CompletionRequest", "create_app"]


def _error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 429:
        kind = "rate_limit_error"
    return JSONResponse(
        status_code=status, content=error_body(message, kind=kind, param=param, code=code), headers=headers
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


def create_app(
    engine: Engine,
    *,
    aliases: tuple[str, ...] = (),
    max_queue: int = 256,
    follower: Any = None,
    owns_engine: bool = False,
    hub: CaptureHub | None = None,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    runtime_lora: bool | None = None,
) -> FastAPI:
    """The FastAPI app; `strop serve` runs it with uvicorn, tests run it in a thread or through ASGI.

    aliases: more names the model answers to (with --follow, the lineage, which always means "the current
    version"). max_queue: most rows queued or decoding before 429. follower: a RegistryFollower, started
    and stopped with the app. owns_engine: close the engine when the app shuts down (`strop serve`); the
    vllm engine's processes otherwise outlive a SIGTERM or Ctrl-C of the server. hub: where episode-scoped
    calls are recorded (agents/capture); default a memory-only hub (`strop serve --db` gives it the store).
    api_key: every endpoint (the episode endpoints too) answers 401 without `Authorization: Bearer KEY`;
    None leaves the server open (strop's own in-process servers, bound to 127.0.0.1). max_body_bytes: larger
    request bodies answer 413 (server_auth.py). runtime_lora: answer vLLM's /v1/load_lora_adapter and
    /v1/unload_lora_adapter (server_lora.py); None reads STROP_ALLOW_RUNTIME_LORA_UPDATING.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if follower is not None:
            await follower.start()
        try:
            yield
        finally:
            if follower is not None:
                await follower.stop()
            await capture.flush()  # steps written behind the replies (capture/writer.py) go in first
            if owns_engine:  # here, not after uvicorn.run: uvicorn re-raises SIGTERM once serving ends
                await engine.close()

    app = FastAPI(title="strop", description="OpenAI-compatible API over a strop engine.", lifespan=lifespan)
    app.add_middleware(NetworkGuard, api_key=api_key, max_body_bytes=max_body_bytes)
    admission = Admission(max_queue)
    app.state.admission = admission
    created = int(time.time())

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(list(exc.errors()))

    def names() -> list[str]:
        return [engine.model_version, *aliases]

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        root = aliases[0] if aliases else engine.model_version
        data = [
            {
                "id": engine.model_version,
                "object": "model",
                "created": created,
                "owned_by": "strop",
                "root": root,
            }
        ]
        return {"object": "list", "data": data}

    capture = hub if hub is not None else CaptureHub()
    app.state.hub = capture

    async def _run(
        body: ChatCompletionRequest | CompletionRequest,
        chat: bool,
        build: Any,
        episode_id: str | None = None,
        http: Request | None = None,
    ) -> Any:
        recorder = None
        if episode_id is not None:
            try:
                recorder = await Recorder.start(
                    capture, episode_id, body, chat, getattr(engine, "tokenizer", None)
                )
            except ClosedEpisodeError as e:
                # A late call on a finished episode's URL (a trailing summary call, a client reused after the
                # reward) is served unrecorded, as calls outside an episode are; it never changes what was
                # trained. An aborted, failed or orphaned episode's URL is a 404 naming it.
                if await capture.status(episode_id) != EpisodeStatus.FINISHED:
                    return _error(404, str(e), code="episode_closed")
            except CaptureError as e:
                return _error(404, str(e), code="episode_not_found")
        refused = body.refused()
        if refused is not None:
            return _error(
                400,
                f"unsupported parameter `{refused[0]}`: {refused[1]}",
                param=refused[0],
                code="unsupported_parameter",
            )
        try:
            request: GenerationRequest = build()
        except ValidationError as e:
            return _validation_response(list(e.errors()))
        want = request.sampling.logprobs  # what the client asked; a recorded call always keeps log-probs
        if recorder is not None and not want:
            request = request.model_copy(
                update={"sampling": request.sampling.model_copy(update={"logprobs": True})}
            )
        if body.stream and not isinstance(engine, StreamingEngine):
            return _error(
                400, f"the {type(engine).__name__} engine cannot stream: send stream=false", param="stream"
            )
        # under an episode any name is the episode's model: a user's agent keeps its hard-coded model name
        if episode_id is None and body.model is not None and body.model not in names():
            return _error(
                404,
                f"The model `{body.model}` does not exist: this server serves "
                f"{', '.join(repr(n) for n in names())} (see /v1/models)",
                param="model",
                code="model_not_found",
            )
        release = admission.enter(request.sampling.n)
        if release is None:
            return _error(
                429,
                f"the server's queue is full ({admission.rows} completions queued or decoding, limit "
                f"{admission.max_rows}): retry after {admission.retry_after_s} s, or start the server with a "
                "larger --max-queue",
                code="queue_full",
                headers={"Retry-After": str(admission.retry_after_s)},
            )
        tokenizer = getattr(engine, "tokenizer", None)
        receive = http.receive if http is not None else None  # a client that goes away cancels its generation
        if body.stream:
            return await _stream(body, chat, request, Slot(release), tokenizer, recorder, want, receive)
        try:
            [completions] = await unless_gone(receive, engine.generate([request]))
        except ClientGone as e:
            return _error(499, str(e), code="client_gone")  # nobody reads it; the access log shows 499
        except PromptTooLongError as e:
            return _error(400, str(e), param="messages" if chat else "prompt", code="prompt_too_long")
        except EngineError as e:
            return _error(500, str(e))
        finally:
            release()
        if recorder is not None:
            await recorder.done(request, completions)
        return (
            chat_response(completions, want, tokenizer, request=request)
            if chat
            else text_response(completions, want, tokenizer)
        )

    async def _stream(
        body: Any,
        chat: bool,
        request: GenerationRequest,
        slot: Slot,
        tokenizer: Any,
        recorder: Recorder | None,
        want: bool,
        receive: Callable[[], Any] | None,
    ) -> Any:
        events = engine.stream(request)  # type: ignore[attr-defined]
        if recorder is not None:
            events = recorder.watch(request, events)
        slot.events = events
        try:  # the first event before the status line, so a bad prompt is still a plain 400
            first = await unless_gone(receive, anext(events))
        except ClientGone as e:
            await slot.close()
            return _error(499, str(e), code="client_gone")
        except PromptTooLongError as e:
            await slot.close()
            return _error(400, str(e), param="messages" if chat else "prompt", code="prompt_too_long")
        except EngineError as e:
            await slot.close()
            return _error(500, str(e))
        except BaseException:
            await slot.close()
            raise
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return SlotStreamingResponse(
            chunks(
                first,
                events,
                chat=chat,
                logprobs=want,
                include_usage=include_usage,
                tokenizer=tokenizer,
                slot=slot,
                request=request,
            ),
            slot,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def serve_chat(
        body: ChatCompletionRequest, episode_id: str | None = None, http: Request | None = None
    ) -> Any:
        def build() -> GenerationRequest:
            if body.top_logprobs and not body.logprobs:
                raise _field_error("top_logprobs", "top_logprobs needs logprobs=true")
            return GenerationRequest(
                messages=body.messages,
                sampling=body.sampling(body.logprobs, body.top_logprobs or 0),
                continue_final=body.continue_final_message,
                tools=body.tools,
                tool_choice=body.tool_choice,
            )

        return await _run(body, True, build, episode_id, http)

    async def serve_text(
        body: CompletionRequest, episode_id: str | None = None, http: Request | None = None
    ) -> Any:
        def build() -> GenerationRequest:
            want = body.logprobs is not None
            sampling = body.sampling(want, body.logprobs or 0)
            if isinstance(body.prompt, str):
                return GenerationRequest(prompt=body.prompt, sampling=sampling)
            # Token ids (vLLM's form): continued verbatim, so a remote client is as token-exact as in-process.
            tokenizer = getattr(engine, "tokenizer", None)
            vocab = len(tokenizer) if tokenizer is not None else None
            if vocab is not None and max(body.prompt) >= vocab:
                raise _field_error(
                    "prompt", f"token id {max(body.prompt)} is out of the vocabulary ({vocab} tokens)"
                )
            return GenerationRequest(messages=[], context_token_ids=body.prompt, sampling=sampling)

        return await _run(body, False, build, episode_id, http)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest, http: Request) -> Any:
        return await serve_chat(body, None, http)

    @app.post("/v1/completions", response_model=None)
    async def complete(body: CompletionRequest, http: Request) -> Any:
        return await serve_text(body, None, http)

    add_episode_routes(app, capture, chat=serve_chat, complete=serve_text, models=models, error=_error)
    add_lora_routes(
        app, engine, enabled=runtime_lora_allowed(runtime_lora), following=follower is not None, error=_error
    )
    return app


def _field_error(field: str, message: str) -> ValidationError:
    return ValidationError.from_exception_data(
        "request",
        [{"type": "value_error", "loc": (field,), "input": None, "ctx": {"error": ValueError(message)}}],
    )
