"""The `openai` backend: any OpenAI-compatible server (`strop serve`, vLLM's server, llama.cpp, hosted APIs).

The official `openai` client already does timeouts and retries with exponential backoff; this module adds a
bound on concurrent requests (a server, or a rate limit, that sees 500 requests at once answers none of them
well) and turns the client's exceptions into EngineErrors that name the URL and what to check.

Token ids (`token_ids`, a setting): against a server that takes token-id prompts and returns token ids
(vLLM's `/v1/completions` with `return_token_ids`, `strop serve`), the engine renders every prompt itself with
the model's tokenizer, exactly as the in-process engines do, and sends the ids (openai_tokens.py). Completions
then carry the very ids sampled, `context_token_ids` works, and every loop (self-correction, MCTS, games)
runs against a remote server with the same stored ids as in-process. "auto" (the default) takes that path when
the model's tokenizer is on this machine (a strop cache name, a local folder, the Hugging Face cache) and
sends text otherwise (hosted APIs); "always" insists; "never" sends text. On the text path hosted APIs return
no ids: `token_ids` and `prompt_token_ids` are then empty, and anything that trains on those completions must
re-tokenize (with the drift that implies).
The API key is read from the environment variable named by `api_key_env` at construction and never stored
elsewhere or logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai

from strop.agents.engines.base import (
    Completion,
    EngineError,
    FinishReason,
    GenerationRequest,
    PromptTooLongError,
    as_requests,
    encode_prompt,
)
from strop.agents.engines.openai_tokens import (
    TOKEN_MODES,
    completions_from_token_response,
    extra_field,
    load_tokenizer,
)
from strop.agents.engines.openai_weights import (
    follows_itself,
    load_adapter,
    restart_needed,
    served_names,
    unload_adapter,
)


class OpenAIEngine:
    """Requests against an OpenAI-compatible `base_url`: token ids where the server takes them, else text.

    model: the name the server serves, and where the tokenizer is looked up (see `tokenizer`). token_ids:
    "auto", "always" or "never" (the module docstring says when each fits). tokenizer: a path, hub id or
    tokenizer object to render prompts with, when the served name is not one this machine can resolve.
    model_version: what `model_version` and the completions report (default: the server's answer).
    adapter_path: a LoRA version on `model`: loaded into the server before the first request and asked for
    by its name (`model_version`); `reload` follows later promotions the same way (openai_weights.py).
    """

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
        token_ids: str = "auto",
        tokenizer: Any = None,
        model_version: str | None = None,
        adapter_path: str | Path | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise EngineError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if token_ids not in TOKEN_MODES:
            raise EngineError(f"token_ids must be one of {', '.join(TOKEN_MODES)}, got {token_ids!r}")
        self.base_url = base_url
        self.model = model
        self.token_ids = token_ids
        self._version = model_version
        # a tokenizer object is used as given; a name (or the model's) is looked up on the first request
        by_name = tokenizer is None or isinstance(tokenizer, str | os.PathLike)
        self._tokenizer_name = str(tokenizer) if by_name and tokenizer is not None else None
        self._tokenizer: Any = None if by_name else tokenizer
        self._tokenizer_looked_up = self._tokenizer is not None or token_ids == "never"
        self._tokenizer_given = tokenizer is not None
        self._base = model  # the full weights the server serves under this name
        self._adapter_name: str | None = None  # the LoRA version requests name, once loaded
        self._follows = False  # the server follows the lineage `model` by itself (strop serve --follow)
        self._pending_adapter = (
            (model_version or Path(adapter_path).name, str(adapter_path)) if adapter_path else None
        )
        self._adapter_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
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
        return self._version or self.model

    def _answered(self, response: Any) -> str:
        """The version a completion reports: the one set by reload, unless the server follows by itself."""
        if self._version and not self._follows:
            return self._version
        return str(response.model or self.model)

    @property
    def tokenizer(self) -> Any:
        """The local tokenizer the token-id path renders prompts with (None: text only, or not looked up yet)."""
        return self._tokenizer

    async def _token_tokenizer(self) -> Any:
        """The tokenizer when requests go as token ids, else None; looked up once, off the event loop."""
        if not self._tokenizer_looked_up:
            name = self._tokenizer_name or self.model
            self._tokenizer = await asyncio.to_thread(
                load_tokenizer, name, required=self.token_ids == "always"
            )
            self._tokenizer_looked_up = True
        return self._tokenizer

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        sem = self._limits.get(loop)
        if sem is None:
            sem = self._limits[loop] = asyncio.Semaphore(self.max_concurrency)
        return sem

    async def reload(
        self,
        model_path: str | Path,
        *,
        adapter_path: str | Path | None = None,
        model_version: str | None = None,
    ) -> None:
        """Follow a promotion on the server: a LoRA version is loaded by its dynamic LoRA endpoint and named in
        the requests after it; a full-weights version must be served already (a restart; openai_weights.py).
        Requests in flight finish on the weights they named."""
        async with self._call():
            if await follows_itself(self._client, self._base):
                self._follows = True  # completions then report the version that answered
            elif adapter_path is not None:
                name = model_version or Path(adapter_path).name
                await load_adapter(self._client, name, str(adapter_path), self.base_url)
                self.model, self._adapter_name = name, name
            else:
                self.model = await self._served_base(str(model_path), model_version)
                self._adapter_name = None
        self._version = model_version

    async def _served_base(self, model_path: str, model_version: str | None) -> str:
        """The name the server serves a full-weights version under; after a LoRA on `strop serve` (one set of
        weights at a time) the adapter is unloaded first, which puts its base back."""
        same_base = Path(model_path).expanduser().resolve() == Path(self._base).expanduser().resolve()
        wanted = [n for n in (model_version, model_path, self._base if same_base else None) if n]
        names = await served_names(self._client)
        found = next((n for n in wanted if n in names), None)
        unloaded = found is None and self._adapter_name is not None
        if unloaded and await unload_adapter(self._client, self._adapter_name or ""):
            names = await served_names(self._client)
            found = next((n for n in wanted if n in names), None)
        if found is None:
            raise restart_needed(self.base_url, model_path, names)
        if not same_base:  # new weights: new base name, and their tokenizer where it was looked up by name
            self._base = found
            if not self._tokenizer_given and self.token_ids != "never":
                self._tokenizer_name, self._tokenizer, self._tokenizer_looked_up = model_path, None, False
        return found

    async def _load_pending_adapter(self) -> None:
        """The adapter given at construction, loaded once before the first request (concurrent callers wait)."""
        loop = asyncio.get_running_loop()
        lock = self._adapter_locks.get(loop)
        if lock is None:
            lock = self._adapter_locks[loop] = asyncio.Lock()
        async with lock:
            if self._pending_adapter is not None:
                name, path = self._pending_adapter
                await self.reload(self._base, adapter_path=path, model_version=name)
                self._pending_adapter = None

    async def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        requests = as_requests(requests)
        if self._pending_adapter is not None:
            await self._load_pending_adapter()
        tokenizer = await self._token_tokenizer()
        if any(r.sampling.top_logprobs for r in requests):
            raise EngineError(
                "the openai backend does not return top_logprobs (it keeps the sampled tokens' log-probs only): "
                "ask with top_logprobs=0, or use the hf or vllm engine"
            )
        if tokenizer is not None:  # token ids: prompts rendered here, tools included, as in-process
            return list(await asyncio.gather(*(self._one_ids(r, tokenizer) for r in requests)))
        if any(r.context_token_ids is not None for r in requests):
            raise EngineError(
                f"{self.base_url} is reached with text (token_ids={self.token_ids!r}: no local tokenizer for "
                f"{self._tokenizer_name or self.model!r}), so it cannot continue a conversation from token ids "
                "(`context_token_ids`). Pass tokenizer=PATH (the served model's tokenizer files) against vLLM or "
                "`strop serve`; or send the whole conversation as `messages` (multi-turn loops: set "
                "token_context = false); or use the hf or vllm engine."
            )
        if any(r.tools for r in requests):
            raise EngineError(
                "the openai backend does not forward `tools` (its completions carry text and token ids, not the "
                "remote server's parsed tool calls): serve the model with the hf or vllm engine, whose server "
                "renders the tools and parses the calls itself"
            )
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    def _common(self, request: GenerationRequest) -> dict[str, Any]:
        s = request.sampling
        common: dict[str, Any] = {
            "model": self.model,
            "n": 1 if s.greedy else s.n,  # greedy: one decode, copied (vLLM refuses n > 1 without sampling)
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
        }
        if s.stop:
            common["stop"] = s.stop
        if s.seed is not None:
            common["seed"] = s.seed
        return common

    async def _one_ids(self, request: GenerationRequest, tokenizer: Any) -> list[Completion]:
        """One request as token ids to /v1/completions: the prompt ids are the ones an in-process engine builds."""
        prompt_ids = encode_prompt(tokenizer, request, self._tokenizer_name or self.model)
        want = request.sampling.logprobs
        async with self._call():
            response = await self._client.completions.create(
                prompt=prompt_ids,
                logprobs=0 if want else None,  # the sampled tokens' own log-probs, no alternatives
                extra_body={**self.extra_body, "return_token_ids": True},
                **self._common(request),
            )
        version = self._answered(response)
        return _greedy_copies(
            request, completions_from_token_response(response, prompt_ids, want, version, self.base_url)
        )

    async def _one(self, request: GenerationRequest) -> list[Completion]:
        s = request.sampling
        common = self._common(request)
        extra = dict(self.extra_body)
        async with self._call():
            if request.messages is not None:
                if request.continue_final:  # vLLM's and strop's servers understand these
                    extra.update(continue_final_message=True, add_generation_prompt=False)
                response = await self._client.chat.completions.create(
                    messages=[m.model_dump() for m in request.messages],  # type: ignore[misc]
                    logprobs=s.logprobs,
                    extra_body=extra or None,
                    **common,
                )
                return _greedy_copies(request, self._from_chat(response, s.logprobs))
            response = await self._client.completions.create(
                prompt=request.prompt or "",
                logprobs=1 if s.logprobs else None,
                extra_body=extra or None,
                **common,
            )
            return _greedy_copies(request, self._from_text(response, s.logprobs))

    @contextlib.asynccontextmanager
    async def _call(self) -> AsyncIterator[None]:
        """One call to the server: within the concurrency bound, its exceptions as EngineErrors naming the URL
        and what to check."""
        try:
            async with self._semaphore():
                yield
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
        if code == "prompt_too_long" or (e.status_code == 400 and "maximum context length" in message):
            return PromptTooLongError(f"{where}: {message}")  # strop's code; vLLM's wording
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
        prompt_ids = extra_field(response, "prompt_token_ids") or []
        out = []
        for choice in sorted(response.choices, key=lambda c: c.index):
            logprobs = None
            if want_logprobs and choice.logprobs is not None and choice.logprobs.content is not None:
                logprobs = [t.logprob for t in choice.logprobs.content]
            out.append(
                Completion(
                    text=choice.message.content or "",
                    prompt_token_ids=list(prompt_ids),
                    token_ids=list(extra_field(choice, "token_ids") or []),
                    logprobs=logprobs,
                    finish_reason=_finish(choice.finish_reason),
                    model_version=self._answered(response),
                )
            )
        return out

    def _from_text(self, response: Any, want_logprobs: bool) -> list[Completion]:
        prompt_ids = extra_field(response, "prompt_token_ids") or []
        out = []
        for choice in sorted(response.choices, key=lambda c: c.index):
            logprobs = None
            if want_logprobs and choice.logprobs is not None and choice.logprobs.token_logprobs is not None:
                logprobs = [float(x) for x in choice.logprobs.token_logprobs]
            out.append(
                Completion(
                    text=choice.text,
                    prompt_token_ids=list(extra_field(choice, "prompt_token_ids") or prompt_ids),
                    token_ids=list(extra_field(choice, "token_ids") or []),
                    logprobs=logprobs,
                    finish_reason=_finish(choice.finish_reason),
                    model_version=self._answered(response),
                )
            )
        return out

    async def close(self) -> None:
        await self._client.close()


def _greedy_copies(request: GenerationRequest, completions: list[Completion]) -> list[Completion]:
    """A greedy request's n completions: the one decode asked for, n times (they are identical by definition)."""
    if not request.sampling.greedy or request.sampling.n == 1:
        return completions
    return [c.model_copy(deep=True) for c in completions for _ in range(request.sampling.n)]


def _finish(reason: str | None) -> FinishReason:
    return FinishReason.LENGTH if reason == "length" else FinishReason.STOP
