"""The `vllm` backend: vLLM's async engine (`AsyncLLM`), with LoRA requests and weight reload after training.

vLLM is imported only inside this backend (this module, vllm_setup.py and vllm_outputs.py, always within a
function), and the backend only by `agents.engines.load_engine(..., backend="vllm")`, so the rest of strop
never pays for (or breaks on) a missing vLLM. On GPU machines install it with
`pip install 'strop[vllm]'`; on CPU machines `make test-vllm` builds `.venv-vllm` with the community CPU build.

Behaviour kept identical to the `hf` backend, so a run can switch backends without changing what is stored:
- Prompts: chat messages go through the tokenizer's chat template (transformers' `AutoTokenizer`, as in `hf`),
  and vLLM receives token ids, never text, so the stored `prompt_token_ids` are exactly what the model read.
- Token ids include the end-of-sequence token when the model emitted one; the text never includes it. With a
  stop string the text ends before it and the token ids end with the token that completed it.
- Log-probs are of the distribution the token was drawn from (vLLM's `processed_logprobs`: after temperature
  and top-p), which is what RL objectives want; greedy requests report the raw model distribution.
- `prompt + max_tokens` over the context window raises `PromptTooLongError` up front (vLLM would clip).

Reload (after a promotion), measured against restarting the engine, which on CPU costs tens of seconds:
- a new LoRA adapter on the same base: a new `LoRARequest` with a fresh integer id (vLLM caches adapters by
  id, so a reused id would silently keep serving the old adapter); the old one is unloaded. No restart.
- new full weights of the same architecture and tokenizer: vLLM's in-place reload (`reload_weights` over
  `collective_rpc`, the API RL frameworks use) after draining in-flight requests, then the prefix cache is
  cleared, because cached KV blocks were computed by the old weights.
- anything else (another architecture, another tokenizer, LoRA asked of an engine started without it): the
  engine is shut down and started again on the new folder.
Requests are drained before any reload and held until it is done, so each completion's `model_version` names
the weights that produced every one of its tokens.

Streaming (`stream`) uses vLLM's own per-step output (`RequestOutputKind.DELTA`); closing the stream aborts the
request in vLLM. On the CPU backend the KV cache is sized from what the run needs (`cpu_kv_cache_seqs`
sequences of `max_model_len` tokens) instead of `gpu_memory_utilization`, which there reserves that share of
the NUMA node's memory; `VLLM_CPU_KVCACHE_SPACE` (GiB), when set, wins. The CPU backend also defaults to float32
and eager mode (see `vllm_setup.cpu_defaults`).

This module is the engine: its lifecycle, reloads, admission around them and generation. Starting vLLM (the
import, folder checks, reload fingerprints, CPU sizing) is in vllm_setup.py, and the conversions to and from
vLLM's sampling parameters and outputs in vllm_outputs.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from strop.agents.engines.base import (
    Completion,
    EngineError,
    GenerationRequest,
    as_requests,
    check_prompt_length,
    encode_prompt,
)
from strop.agents.engines.streaming import StreamEvent
from strop.agents.engines.vllm_outputs import completion_of, sampling_params, top_of
from strop.agents.engines.vllm_setup import (
    check_adapter,
    cpu_defaults,
    cpu_kv_cache,
    fingerprint,
    import_vllm,
    model_folder,
)


class VLLMEngine:
    """The Engine protocol over vLLM's `AsyncLLM`. Construct it outside a hot path: it starts a process.

    Use one event loop for the engine's whole life: vLLM binds its output handler to the loop of the first
    `generate`.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        adapter_path: str | Path | None = None,
        max_lora_rank: int = 16,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        enable_lora: bool = False,
        model_version: str | None = None,
        cpu_kv_cache_seqs: int = 4,
        **engine_kwargs: Any,
    ) -> None:
        self._vllm = import_vllm()
        from transformers import AutoTokenizer

        self._auto_tokenizer = AutoTokenizer
        self._max_lora_rank = max_lora_rank
        self._gpu_memory_utilization = gpu_memory_utilization
        self._max_model_len = max_model_len
        self._enable_lora = enable_lora or adapter_path is not None
        if cpu_kv_cache_seqs < 1:
            raise EngineError(f"cpu_kv_cache_seqs must be at least 1, got {cpu_kv_cache_seqs}")
        self._cpu_kv_cache_seqs = cpu_kv_cache_seqs
        self._engine_kwargs = engine_kwargs
        self._lora_ids = itertools.count(1)
        self._lora: Any = None  # vllm.lora.request.LoRARequest of the adapter being served, if any
        self._llm: Any = None
        self._closed = False
        self._inflight = 0
        self._reloading = False
        self._cond: asyncio.Condition | None = None
        self._start(model_folder(model_path, "model", "config.json"))
        self._use_adapter_now(adapter_path)
        self._model_version = self._default_version(model_version)

    # ------------------------------------------------------------------------------------------ lifecycle
    def _start(self, model_path: Path) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        engine_kwargs = {**cpu_defaults(), **self._engine_kwargs}
        extra, kv_note = cpu_kv_cache(model_path, engine_kwargs, self._max_model_len, self._cpu_kv_cache_seqs)
        args = self._vllm.AsyncEngineArgs(
            model=str(model_path),
            tokenizer=str(model_path),
            gpu_memory_utilization=self._gpu_memory_utilization,
            max_model_len=self._max_model_len,
            enable_lora=self._enable_lora,
            max_lora_rank=self._max_lora_rank,
            logprobs_mode="processed_logprobs",
            **extra,
            **engine_kwargs,
        )
        try:
            self._llm = AsyncLLM.from_engine_args(args)
        except Exception as exc:  # vLLM raises many kinds; name the folder and keep the cause chained
            hint = (
                f" ({kv_note})"
                if kv_note and ("memory" in str(exc).lower() or "cache" in str(exc).lower())
                else ""
            )
            raise EngineError(
                f"vLLM could not start on {model_path}: {type(exc).__name__}: {exc}{hint}"
            ) from exc
        self.model_path = model_path
        self.tokenizer = self._auto_tokenizer.from_pretrained(str(model_path))
        self.context_length: int = int(self._llm.model_config.max_model_len)

    def _use_adapter_now(self, adapter_path: str | Path | None) -> None:
        """Point new requests at an adapter (or none); a fresh id makes vLLM load it rather than reuse a cache."""
        if adapter_path is None:
            self._lora = None
            self.adapter_path: Path | None = None
            return
        from vllm.lora.request import LoRARequest

        folder = check_adapter(adapter_path, self._max_lora_rank)
        lora_id = next(self._lora_ids)
        self._lora = LoRARequest(
            lora_name=f"{folder.name}-{lora_id}", lora_int_id=lora_id, lora_path=str(folder)
        )
        self.adapter_path = folder

    def _default_version(self, model_version: str | None) -> str:
        return model_version or str(self.adapter_path or self.model_path)

    @property
    def model_version(self) -> str:
        return self._model_version

    async def reload(
        self, model_path: str | Path, adapter_path: str | Path | None = None, model_version: str | None = None
    ) -> None:
        """Serve new weights (after a promotion); see the module docstring for which path each case takes."""
        self._check_open()
        new_model = model_folder(model_path, "model", "config.json")
        if adapter_path is not None:
            check_adapter(adapter_path, self._max_lora_rank)  # before touching the weights being served
        async with self._exclusive():
            old_lora = self._lora
            if new_model != self.model_path or (adapter_path is not None and not self._enable_lora):
                if adapter_path is not None:
                    self._enable_lora = True
                if fingerprint(new_model) == fingerprint(self.model_path) and (
                    self._enable_lora == bool(self._llm.vllm_config.lora_config)
                ):
                    await self._reload_in_place(new_model)
                else:
                    self._llm.shutdown()
                    try:
                        self._start(new_model)
                    except EngineError:
                        self._closed = True  # the old engine is gone; nothing can be served any more
                        raise
                    old_lora = None  # a new engine holds no adapters
            self._use_adapter_now(adapter_path)
            if old_lora is not None:
                await self._llm.remove_lora(old_lora.lora_int_id)
            self._model_version = self._default_version(model_version)

    async def _reload_in_place(self, new_model: Path) -> None:
        # "wait" lets nothing half-generated resume on new weights; clear_cache drops KV blocks of the old ones.
        await self._llm.pause_generation(mode="wait", clear_cache=True)
        try:
            await self._llm.collective_rpc("reload_weights", kwargs={"weights_path": str(new_model)})
        except Exception as exc:  # the worker's error comes back wrapped; keep it chained
            raise EngineError(
                f"vLLM could not reload weights from {new_model} in place ({type(exc).__name__}: {exc}); "
                "some layers may hold the new weights: reload again, or close this engine and load a new one"
            ) from exc
        finally:
            await self._llm.resume_generation()
        await self._llm.reset_prefix_cache()
        self.model_path = new_model

    async def close(self) -> None:
        """Shut the engine process down; later calls raise EngineError."""
        if self._closed:
            return
        self._closed = True
        if self._llm is not None:
            self._llm.shutdown()
            # Dropped now, not at interpreter exit, where its __del__ finds modules torn down.
            self._llm = None

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError(
                "this vLLM engine is closed: create a new one with agents.engines.load_engine(...)"
            )

    # ---------------------------------------------------------------------------- admission around reloads
    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    @contextlib.asynccontextmanager
    async def _shared(self) -> AsyncIterator[None]:
        """Held by each generate call; waits while a reload runs."""
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: not self._reloading)
            self._inflight += 1
        try:
            yield
        finally:
            async with cond:
                self._inflight -= 1
                cond.notify_all()

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """Held by reload: no new requests start, and the ones running finish first."""
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: not self._reloading)
            self._reloading = True
            await cond.wait_for(lambda: self._inflight == 0)
        try:
            yield
        finally:
            async with cond:
                self._reloading = False
                cond.notify_all()

    # --------------------------------------------------------------------------------------------- prompts
    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """Token ids of the prompt: the chat template for messages, the raw text (with BOS if any) for prompts."""
        return encode_prompt(self.tokenizer, request, self.model_path)

    def _check_length(self, prompt_len: int, max_tokens: int) -> None:
        check_prompt_length(prompt_len, max_tokens, self.context_length, self.model_version)

    # ------------------------------------------------------------------------------------------ generation
    async def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        """Submit every request at once; vLLM's scheduler batches them with whatever else is running."""
        self._check_open()
        requests = as_requests(requests)
        prompts = [self.prompt_ids(r) for r in requests]
        for ids, r in zip(prompts, requests, strict=True):
            self._check_length(len(ids), r.sampling.max_tokens)
        async with self._shared():
            return list(
                await asyncio.gather(*(self._one(ids, r) for ids, r in zip(prompts, requests, strict=True)))
            )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Each step's new tokens per choice, from vLLM's DELTA outputs (vLLM holds back text that may start a
        stop string); the choice's last event carries its Completion. Closing the iterator aborts the request."""
        self._check_open()
        [request] = as_requests([request])
        prompt_ids = self.prompt_ids(request)
        self._check_length(len(prompt_ids), request.sampling.max_tokens)
        want_lp, k = request.sampling.logprobs, request.sampling.top_logprobs
        async with self._shared():
            version, lora = self._model_version, self._lora
            acc: dict[int, SimpleNamespace] = {}
            outputs = self._llm.generate(
                self._vllm.TokensPrompt(prompt_token_ids=prompt_ids),
                sampling_params(self._vllm, request, delta=True),
                request_id=uuid.uuid4().hex,
                lora_request=lora,
            )
            async with contextlib.aclosing(outputs):
                async for out in outputs:
                    for o in out.outputs:
                        a = acc.setdefault(
                            o.index,
                            SimpleNamespace(
                                text="", token_ids=[], logprobs=[], finish_reason=None, stop_reason=None
                            ),
                        )
                        ids = list(o.token_ids)
                        steps = list(o.logprobs or []) if want_lp else []
                        a.text += o.text
                        a.token_ids += ids
                        a.logprobs += steps
                        completion = None
                        if o.finish_reason is not None:
                            a.finish_reason, a.stop_reason = o.finish_reason, o.stop_reason
                            completion = completion_of(a, prompt_ids, version, want_lp, k)
                        yield StreamEvent(
                            o.index,
                            version,
                            o.text,
                            ids,
                            [float(pos[t].logprob) for t, pos in zip(ids, steps, strict=True)]
                            if want_lp
                            else None,
                            [top_of(pos, k) for pos in steps] if k else None,
                            completion,
                        )

    async def _one(self, prompt_ids: list[int], request: GenerationRequest) -> list[Completion]:
        version, lora = self._model_version, self._lora  # fixed for this request: reloads wait for it
        final = None
        async for out in self._llm.generate(
            self._vllm.TokensPrompt(prompt_token_ids=prompt_ids),
            sampling_params(self._vllm, request),
            request_id=uuid.uuid4().hex,
            lora_request=lora,
        ):
            final = out
        if final is None or not final.finished:
            raise EngineError(
                f"vLLM returned no finished output for a request to {version}; see the vLLM log above"
            )
        s = request.sampling
        return [
            completion_of(o, prompt_ids, version, s.logprobs, s.top_logprobs)
            for o in sorted(final.outputs, key=lambda o: o.index)
        ]
