"""The vllm backend against transformers on the same weights: tokens, log-probs, stop strings, LoRA, reload.

These run where vLLM imports (`make test-vllm` builds .venv-vllm with the CPU build); elsewhere they skip
with that reason. The models are tiny random Llamas written here (head size 32, which vLLM's CPU attention
supports), so the test owns every weight it compares and needs no model cache. The engine runs in vLLM's
engine-core subprocess; one engine serves the whole module, on one event loop, because vLLM binds its output
handler to the loop of the first request.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import math
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from strop.agents.engines.base import (
    EngineError,
    FinishReason,
    GenerationRequest,
    PromptTooLongError,
    SamplingParams,
)

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
VLLM_MARKS = (
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(
        not HAVE_VLLM,
        reason="vllm is not importable in this environment: run `make test-vllm` (CPU build) "
        "or `pip install 'strop[vllm]'` on a GPU machine",
    ),
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(600),
)


def vllm_case(fn: Callable[..., Any]) -> Callable[..., Any]:
    for mark in VLLM_MARKS:
        fn = mark(fn)
    return fn


CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
CORPUS = ["What is 98 + 69? Step 1: 98 + 69 = 167\n#### 167", "<user>hello\n<assistant>the answer is 42"] * 20


def write_tiny_llama(folder: Path, *, seed: int, layers: int = 2) -> Path:
    """A random Llama (hidden 64, two heads of 32) with a byte-level BPE tokenizer and a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.3,  # peaked distributions, so greedy choices are not near-ties
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(folder)
    hf_tok.save_pretrained(folder)
    return folder


def write_lora(base: Path, folder: Path, *, seed: int) -> Path:
    """A rank-4 LoRA with random A and B, so it visibly changes the base model's outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(folder)
    return folder


def reference_logprobs(
    model_dir: Path, prompt_ids: list[int], token_ids: list[int], adapter: Path | None = None
):
    """transformers' log-probs of `token_ids` after `prompt_ids` (teacher forcing), and the best per position."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + token_ids])).logits[0, len(prompt_ids) - 1 : -1]
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp[torch.arange(len(token_ids)), torch.tensor(token_ids)]
    return chosen.tolist(), logp.max(dim=-1).values.tolist()


def assert_matches_reference(completion: Any, model_dir: Path, adapter: Path | None = None) -> None:
    chosen, best = reference_logprobs(model_dir, completion.prompt_token_ids, completion.token_ids, adapter)
    assert completion.logprobs == pytest.approx(chosen, abs=2e-3)
    # Greedy: every token vLLM picked is transformers' argmax too (up to float noise).
    assert chosen == pytest.approx(best, abs=2e-3)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vllm-models")
    base = write_tiny_llama(root / "base", seed=1)
    return {
        "base": base,
        "lora_a": write_lora(base, root / "lora-a", seed=2),
        "lora_b": write_lora(base, root / "lora-b", seed=3),
        "same_shape": write_tiny_llama(root / "same-shape", seed=4),  # same tokenizer training: same vocab
        "deeper": write_tiny_llama(root / "deeper", seed=5, layers=3),
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(models: dict[str, Path]) -> AsyncIterator[Any]:
    # No dtype, enforce_eager or KV size given: the engine's CPU defaults (float32, eager, a KV cache sized
    # for cpu_kv_cache_seqs sequences of max_model_len tokens) are what is under test.
    from strop.agents.engines.vllm import VLLMEngine

    eng = VLLMEngine(
        models["base"], enable_lora=True, max_lora_rank=8, max_model_len=256, model_version="base-v0"
    )
    yield eng
    await eng.close()


GREEDY = SamplingParams(temperature=0.0, max_tokens=12)
PROMPT = GenerationRequest(prompt="What is 98 + 69?", sampling=GREEDY)


@vllm_case
async def test_cpu_defaults_size_the_kv_cache_from_the_run(engine: Any, models: dict[str, Path]) -> None:
    """On CPU, vLLM gets float32 (as hf), eager mode and a KV cache of 4 x 256 tokens, not 85% of the RAM."""
    from strop.agents.engines.vllm_setup import kv_cache_bytes

    config = engine._llm.vllm_config
    assert str(config.model_config.dtype) == "torch.float32" and config.model_config.enforce_eager
    if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):  # set, it wins (vLLM's own setting)
        assert config.cache_config.kv_cache_memory_bytes == kv_cache_bytes(models["base"], 256, 4)[0]


@vllm_case
async def test_a_kv_cache_that_cannot_fit_names_the_fix(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused before vLLM starts, with the knobs that fix it."""
    from strop.agents.engines.vllm import VLLMEngine

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    with pytest.raises(EngineError, match=r"max_model_len.*cpu_kv_cache_seqs.*VLLM_CPU_KVCACHE_SPACE"):
        VLLMEngine(models["base"], max_model_len=256, cpu_kv_cache_seqs=10**7)


@vllm_case
async def test_chat_n_samples_have_tokens_and_logprobs(engine: Any) -> None:
    req = GenerationRequest.chat("What is 98 + 69?", n=3, temperature=1.0, max_tokens=10, seed=7)
    [completions] = await engine.generate([req])
    assert len(completions) == 3
    for c in completions:
        assert c.prompt_token_ids == engine.prompt_ids(req)
        assert (
            c.prompt_token_ids[-len(engine.tokenizer("<assistant>")["input_ids"]) :]
            == engine.tokenizer("<assistant>")["input_ids"]
        )  # the chat template's generation prompt
        assert 1 <= len(c.token_ids) <= 10
        assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
        assert all(lp <= 0.0 and math.isfinite(lp) for lp in c.logprobs)
        assert c.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
        assert c.model_version == "base-v0"
    # Same seed, same samples: what makes a run reproducible.
    [again] = await engine.generate([req])
    assert [c.token_ids for c in again] == [c.token_ids for c in completions]


@vllm_case
async def test_greedy_matches_transformers(engine: Any, models: dict[str, Path]) -> None:
    [[c]] = await engine.generate([PROMPT])
    assert c.prompt_token_ids == engine.tokenizer("What is 98 + 69?")["input_ids"]
    assert_matches_reference(c, models["base"])
    no_lp = GenerationRequest(
        prompt="What is 98 + 69?", sampling=GREEDY.model_copy(update={"logprobs": False})
    )
    [[plain]] = await engine.generate([no_lp])
    assert plain.logprobs is None and plain.token_ids == c.token_ids


@vllm_case
async def test_stop_string_ends_text_before_it(engine: Any) -> None:
    long = GenerationRequest(prompt="hello", sampling=GREEDY.model_copy(update={"max_tokens": 24}))
    [[full]] = await engine.generate([long])
    text = full.text
    # Pick a stop string that first occurs a few characters in, so something is left before it.
    cut = next(
        (i for i in range(2, len(text) - 2) if text.find(text[i : i + 2]) == i and text[i : i + 2].strip()),
        None,
    )
    assert cut is not None, f"greedy output too short or repetitive to pick a stop string: {text!r}"
    stop = text[cut : cut + 2]
    req = GenerationRequest(
        prompt="hello", sampling=GREEDY.model_copy(update={"max_tokens": 24, "stop": [stop]})
    )
    [[c]] = await engine.generate([req])
    assert c.text == text[:cut]
    assert c.finish_reason == FinishReason.STOP
    decoded = engine.tokenizer.decode(c.token_ids)
    assert decoded.startswith(text[:cut]) and stop in decoded  # ids end with the token completing the stop
    assert len(c.logprobs) == len(c.token_ids)


@vllm_case
async def test_prompt_too_long_is_refused_up_front(engine: Any) -> None:
    req = GenerationRequest(prompt="hello " * 200, sampling=SamplingParams(max_tokens=200))
    with pytest.raises(PromptTooLongError, match="max_tokens"):
        await engine.generate([req])


@vllm_case
async def test_concurrent_callers(engine: Any) -> None:
    import asyncio

    reqs = [GenerationRequest(prompt=p, sampling=GREEDY) for p in ("hello", "What is", "the answer")]
    together = await asyncio.gather(*(engine.generate([r]) for r in reqs))
    alone = [await engine.generate([r]) for r in reqs]
    assert [t[0][0].token_ids for t in together] == [a[0][0].token_ids for a in alone]


@vllm_case
async def test_lora_swap_then_full_weight_reloads(engine: Any, models: dict[str, Path]) -> None:
    [[base]] = await engine.generate([PROMPT])

    # A LoRA adapter on the same base: a LoRARequest, no restart; outputs are the PEFT model's.
    await engine.reload(models["base"], adapter_path=models["lora_a"], model_version="lora-a")
    llm = engine._llm
    [[a]] = await engine.generate([PROMPT])
    assert a.model_version == "lora-a"
    assert a.logprobs != pytest.approx(base.logprobs, abs=1e-2)
    assert_matches_reference(a, models["base"], models["lora_a"])

    # A second adapter gets a fresh LoRA id, so vLLM does not keep serving the first from its cache.
    first_id = engine._lora.lora_int_id
    await engine.reload(models["base"], adapter_path=models["lora_b"], model_version="lora-b")
    assert engine._lora.lora_int_id != first_id
    [[b]] = await engine.generate([PROMPT])
    assert_matches_reference(b, models["base"], models["lora_b"])
    assert set(await llm.list_loras()) == {engine._lora.lora_int_id}  # the first adapter was unloaded

    # Back to the plain base model.
    await engine.reload(models["base"])
    [[again]] = await engine.generate([PROMPT])
    assert again.token_ids == base.token_ids and again.model_version == str(models["base"])

    # New full weights of the same shape: reloaded in place, same engine process, prefix cache not stale.
    await engine.reload(models["same_shape"], model_version="v1")
    assert engine._llm is llm
    [[v1]] = await engine.generate([PROMPT])
    assert v1.model_version == "v1"
    assert_matches_reference(v1, models["same_shape"])

    # Another architecture (3 layers): the engine restarts on the new folder.
    await engine.reload(models["deeper"], model_version="v2")
    assert engine._llm is not llm
    [[v2]] = await engine.generate([PROMPT])
    assert v2.model_version == "v2"
    assert_matches_reference(v2, models["deeper"])


@vllm_case
async def test_stream_equals_generate_and_gives_top_logprobs(engine: Any) -> None:
    """vLLM's own DELTA outputs: the streamed pieces add up to the non-streamed completion of the same seed."""
    req = GenerationRequest.chat(
        "What is 98 + 69?", n=2, temperature=1.0, max_tokens=16, seed=5, top_logprobs=3
    )
    [full] = await engine.generate([req])
    texts, ids, finals = ["", ""], [[], []], {}
    async for ev in engine.stream(req):
        texts[ev.index] += ev.text
        ids[ev.index] += ev.token_ids
        assert ev.top_logprobs is not None and all(len(t) == 3 for t in ev.top_logprobs)
        if ev.completion is not None:
            finals[ev.index] = ev.completion
    assert texts == [c.text for c in full] and ids == [c.token_ids for c in full]
    assert [finals[i].token_ids for i in (0, 1)] == [c.token_ids for c in full]
    for c in full:
        assert c.top_logprobs is not None and len(c.top_logprobs) == len(c.token_ids)
        for lp, top in zip(c.logprobs, c.top_logprobs, strict=True):
            assert max(top.values()) >= lp - 1e-4


@vllm_case
async def test_a_closed_stream_is_aborted(engine: Any) -> None:
    req = GenerationRequest(
        prompt="What is", sampling=SamplingParams(temperature=1.0, max_tokens=200, seed=1)
    )
    stream = engine.stream(req)
    await anext(stream)
    await stream.aclose()  # aborts the request in vLLM
    [[after]] = await engine.generate([PROMPT])  # the engine still serves
    assert after.token_ids


@vllm_case
async def test_served_through_the_openai_api_with_streaming(engine: Any) -> None:
    """strop serve --engine vllm: the same app, streamed chunks equal to the non-streamed answer."""
    import httpx
    import openai

    from strop.agents.server import create_app

    app = create_app(engine, max_queue=8)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://strop")
    client = openai.AsyncOpenAI(base_url="http://strop/v1", api_key="unused", http_client=http, max_retries=0)
    args: dict[str, Any] = dict(
        model=engine.model_version, prompt="What is 98 + 69?", max_tokens=12, temperature=0
    )
    full = await client.completions.create(**args)
    streamed = ""
    async for chunk in await client.completions.create(**args, stream=True):
        streamed += chunk.choices[0].text
        assert chunk.model == engine.model_version
    assert streamed == full.choices[0].text
    with pytest.raises(openai.NotFoundError):
        await client.completions.create(**{**args, "model": "nope"})
    await client.close()


@vllm_case
async def test_closed_engine_refuses(engine: Any) -> None:
    """Last in the module: `strop serve`'s app (owns_engine) closes the shared engine at shutdown, and vLLM's
    engine processes exit with it rather than outliving the server."""
    import psutil

    from strop.agents.server import create_app

    def vllm_children() -> list[str]:
        """Live ones: vLLM kills but does not reap them, so exited ones stay as zombies until pytest exits."""
        live = []
        for p in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):  # one may exit while we look
                if p.name().startswith("VLLM") and p.status() != psutil.STATUS_ZOMBIE:
                    live.append(p.name())
        return live

    assert vllm_children()
    app = create_app(engine, owns_engine=True)
    async with app.router.lifespan_context(app):
        pass
    with pytest.raises(EngineError, match="closed"):
        await engine.generate([PROMPT])
    for _ in range(50):  # shutdown signals the processes; give them a moment to exit
        if not vllm_children():
            break
        await asyncio.sleep(0.2)
    assert not vllm_children()


def test_missing_vllm_names_the_install_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs everywhere: without vLLM the backend says how to get it instead of an ImportError."""
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    from strop.agents.engines.vllm import VLLMEngine

    with pytest.raises(EngineError, match=r"pip install 'strop\[vllm\]'.*make test-vllm"):
        VLLMEngine("/nonexistent")


def test_cpu_kv_cache_is_sized_from_the_run() -> None:
    """Runs everywhere: the KV bytes the CPU backend asks for, from the model's config, not a share of RAM."""
    import json
    import tempfile

    from strop.agents.engines.vllm_setup import kv_cache_bytes

    with tempfile.TemporaryDirectory() as d:
        config = {
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "hidden_size": 576,
            "max_position_embeddings": 8192,
            "torch_dtype": "bfloat16",
        }
        (Path(d) / "config.json").write_text(json.dumps(config))
        need, tokens = kv_cache_bytes(Path(d), None, 4)
        assert tokens == 8192 and need == 2 * 30 * 3 * 64 * 2 * 8192 * 4
        need, tokens = kv_cache_bytes(Path(d), 1024, 2, dtype="float32")
        assert tokens == 1024 and need == 2 * 30 * 3 * 64 * 4 * 1024 * 2


def test_no_bench_script_shadows_a_package() -> None:
    """`python bench/X.py` puts bench/ first on sys.path: a bench/vllm.py made `import vllm` find itself."""
    bench = Path(__file__).resolve().parents[3] / "bench"
    shadowing = {"vllm", "torch", "transformers", "trl", "peft", "datasets", "openai", "fastapi", "uvicorn"}
    assert not {p.stem for p in bench.glob("*.py")} & shadowing


# ------------------------------------------------------------------ the openai engine against `vllm serve`
# After test_closed_engine_refuses: the module's engine is closed, so vLLM's own server has the cores.


@contextlib.contextmanager
def _vllm_server(model: Path, log: Path, *extra: str) -> Iterator[str]:
    """vLLM's own OpenAI server (`vllm serve`), as users run it, with the engine's CPU settings (float32, eager,
    so greedy ids agree with transformers') and runtime LoRA loading allowed; its base URL."""
    import signal
    import socket
    import subprocess
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": "1"}
    # The module form of `vllm serve`: the `vllm` console script asks for the distribution "vllm", and the CPU
    # build is installed as "vllm-cpu".
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
    ]
    cmd += ["--port", str(port), "--dtype", "float32", "--enforce-eager", *extra]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 400
        while True:
            assert proc.poll() is None, f"vllm serve exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"vllm serve did not start: {log.read_text()[-3000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            time.sleep(1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):  # its engine-core process is in the same session
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def vllm_serve(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`vllm serve` on the random base, LoRA on."""
    log = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    with _vllm_server(
        models["base"], log, "--max-model-len", "256", "--enable-lora", "--max-lora-rank", "8"
    ) as url:
        yield url


@pytest.fixture(scope="module")
def vllm_serve_tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`vllm serve` on strop's pre-trained `tiny` (head size 32), for the loops: a random model samples stray
    bytes, and vLLM's detokenizer, given a token-id prompt that ends inside a character, renders the prompt's
    own text into the completion's and matches stop strings in it (the step ends early); valid text does not."""
    from strop.agents.models import ModelNotFoundError, resolve_model

    try:
        tiny = resolve_model("tiny")
    except ModelNotFoundError as e:
        pytest.skip(f"{e} (`make test` builds it)")
    log = tmp_path_factory.mktemp("vllm-serve-tiny") / "serve.log"
    with _vllm_server(tiny, log, "--served-model-name", "tiny", "--max-model-len", "1024") as url:
        yield url


async def _two_turns_and_a_step(engine: Any) -> list[Any]:
    """Self-correction's shape (a new turn on the first one's ids), then MCTS's (continue ids to a newline)."""
    from strop.agents.engines.base import Message

    [[a]] = await engine.generate([GenerationRequest.chat("What is 98 + 69?", temperature=0, max_tokens=12)])
    turn = GenerationRequest(
        messages=[Message(role="user", content="hello")],
        context_token_ids=a.prompt_token_ids + a.token_ids,
        sampling=GREEDY,
    )
    [[b]] = await engine.generate([turn])
    step = GenerationRequest(
        messages=[],
        context_token_ids=b.prompt_token_ids,
        sampling=SamplingParams(temperature=0.0, max_tokens=24, stop=["\n"]),
    )
    [[c]] = await engine.generate([step])
    # ids, not text: this random model samples stray bytes, which vLLM's incremental detokenizer may render
    # differently from one decode of the whole; what is stored for training is the ids
    return [(x.prompt_token_ids, x.token_ids, x.matched_stop) for x in (a, b, c)]


@vllm_case
async def test_openai_engine_is_token_exact_against_vllm_serve(
    vllm_serve: str, models: dict[str, Path]
) -> None:
    """The same stored ids through vLLM's server as in-process (hf, the same float32 weights), greedy."""
    from strop.agents.engines.hf import HFEngine
    from strop.agents.engines.openai import OpenAIEngine

    remote = OpenAIEngine(vllm_serve, str(models["base"]), token_ids="always")
    local = HFEngine(models["base"])
    try:
        through_vllm = await _two_turns_and_a_step(remote)
        assert through_vllm == await _two_turns_and_a_step(local)
        [[c]] = await remote.generate(
            [GenerationRequest.chat("What is 98 + 69?", temperature=0, max_tokens=12)]
        )
        assert_matches_reference(c, models["base"])  # vLLM's log-probs, read back over HTTP
    finally:
        await remote.close()
        await local.close()


@vllm_case
async def test_openai_engine_follows_a_lora_promotion_on_vllm_serve(
    vllm_serve: str, models: dict[str, Path]
) -> None:
    """/v1/load_lora_adapter, then requests name the version; a second load of it is fine; full weights the
    server does not serve name the restart."""
    from strop.agents.engines.openai import OpenAIEngine

    remote = OpenAIEngine(vllm_serve, str(models["base"]))
    ask = GenerationRequest.chat("What is 98 + 69?", temperature=0, max_tokens=12)
    try:
        [[base]] = await remote.generate([ask])
        await remote.reload(models["base"], adapter_path=models["lora_a"], model_version="lora-a")
        await remote.reload(models["base"], adapter_path=models["lora_a"], model_version="lora-a")  # loaded
        [[a]] = await remote.generate([ask])
        assert remote.model == "lora-a" and a.model_version == "lora-a"
        assert_matches_reference(a, models["base"], models["lora_a"])
        assert a.logprobs != pytest.approx(base.logprobs, abs=1e-2)
        await remote.reload(models["base"], model_version="base")  # the rollback: vLLM still serves the base
        [[again]] = await remote.generate([ask])
        assert again.token_ids == base.token_ids
        with pytest.raises(EngineError, match="restarted on them"):
            await remote.reload(models["deeper"], model_version="v2")
    finally:
        await remote.close()


@vllm_case
async def test_openai_mcts_and_self_correction_against_vllm_serve(vllm_serve_tiny: str) -> None:
    """The loops themselves, where .venv-vllm has their dependencies (strop goes in with --no-deps)."""
    pytest.importorskip("langgraph", reason="the loops need langgraph in .venv-vllm: pip install langgraph")
    pytest.importorskip("sqlalchemy", reason="the runner's store needs sqlalchemy in .venv-vllm")
    from strop.agents.engines.hf import HFEngine
    from strop.agents.engines.openai import OpenAIEngine
    from strop.agents.loops import mcts
    from strop.agents.loops import self_correct as sc
    from strop.agents.loops.base import episode_input
    from strop.agents.loops.registry import LoopResources
    from strop.agents.models import resolve_model
    from strop.critics import VerifierCritic
    from strop.memory.records import EpisodeRecord
    from strop.sandbox.tasks import ArithmeticTaskSet, Split

    ts = ArithmeticTaskSet()
    tasks = ts.tasks(Split.TRAIN, 4)
    search_cfg = mcts.MCTSConfig(
        system_prompt=None, k=2, budget_tokens=200, max_step_tokens=24, rollout_max_tokens=32, temperature=0.0
    )
    sc_cfg = sc.SelfCorrectConfig(n=1, max_tokens=24, feedback="oracle", temperature=0.0, seed=0)
    search = mcts.build_graph
    correct = sc.SPEC.make

    async def episodes(engine: Any) -> list[Any]:
        """Each task's MCTS tree, then its self-correction conversation: every step's ids and text."""
        out = []
        for task in tasks:
            searched = (
                await search(engine, VerifierCritic(ts), search_cfg)
                .compile()
                .ainvoke(episode_input(task, "mcts-vllm"))
            )
            graph = correct(LoopResources(engines={"policy": engine}, task_set=ts), sc_cfg).compile()
            corrected = await graph.ainvoke(episode_input(task, "sc-vllm"))
            for state in (searched, corrected):
                steps = EpisodeRecord.model_validate(state["episode"]).steps
                out.append([(s.prompt_token_ids, s.token_ids, s.text) for s in steps])
        return out

    remote = OpenAIEngine(vllm_serve_tiny, "tiny", token_ids="always")
    local = HFEngine(resolve_model("tiny"))
    try:
        through_vllm = await episodes(remote)
        assert through_vllm == await episodes(local)
        assert all(len(steps) >= 2 for steps in through_vllm)  # a root and a step; an attempt and a revision
    finally:
        await remote.close()
        await local.close()
