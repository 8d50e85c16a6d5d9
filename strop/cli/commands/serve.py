"""`strop serve MODEL` / `strop serve --follow LINEAGE`: an OpenAI-compatible HTTP server over a strop engine.

Only typer and the standard library at import; uvicorn, torch and the engine load inside the command.

For a network: it binds 127.0.0.1 unless --host says otherwise; --api-key (or $STROP_API_KEY) makes every
endpoint, the episode endpoints included, answer 401 without `Authorization: Bearer KEY`; bodies over
--max-body-bytes answer 413 (agents/server_auth.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from strop.cli.common import fail

ENGINES = ("hf", "vllm")
MAX_BODY_BYTES = (
    4 * 1024 * 1024
)  # agents/server_auth.DEFAULT_MAX_BODY_BYTES; not imported: --help stays instant


def serve(
    model: Annotated[
        str | None,
        typer.Argument(
            help="A cache name ('tiny', 'smollm2-135m') or a local HF model folder; omit with --follow."
        ),
    ] = None,
    follow: Annotated[
        str | None,
        typer.Option(
            help="Serve this registry lineage's promoted version and swap to each newly promoted one."
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            help="Store URL or SQLite path: calls made under an episode (POST /episodes) are recorded there, and "
            "--follow reads the registry there (default with --follow: $STROP_DB or ./strop.db). Without it, "
            "episodes are kept in memory only."
        ),
    ] = None,
    poll_s: Annotated[float, typer.Option(help="How often --follow checks the registry (seconds).")] = 2.0,
    engine: Annotated[str, typer.Option(help="hf (transformers) or vllm (where vLLM is installed).")] = "hf",
    host: Annotated[
        str,
        typer.Option(
            help="Interface to bind. The default answers this machine only; 0.0.0.0 exposes the server to the "
            "network: give it an --api-key there."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    adapter: Annotated[Path | None, typer.Option(help="A PEFT (LoRA) adapter folder to apply.")] = None,
    max_batch_size: Annotated[
        int, typer.Option(help="Most rows decoded together in one forward pass (hf).")
    ] = 64,
    batch_wait_ms: Annotated[
        float, typer.Option(help="How long to wait for more requests to batch (hf).")
    ] = 10,
    admit_every: Annotated[
        int,
        typer.Option(
            help="Decoding steps between admissions into the running batch (hf): a request that arrives while "
            "others decode joins them after at most this many steps, and a finished one leaves at once. 0: "
            "static batches, a new request waits for the whole batch in flight.",
            min=0,
        ),
    ] = 16,
    max_queue: Annotated[
        int, typer.Option(help="Most completions queued or decoding at once; more get 429 with Retry-After.")
    ] = 256,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="STROP_API_KEY",
            show_envvar=True,
            help="Every endpoint (the episode endpoints too) answers 401 without the header "
            "`Authorization: Bearer KEY`. Prefer the environment variable: a command line is visible to "
            "other users of the machine.",
        ),
    ] = None,
    max_body_bytes: Annotated[
        int, typer.Option(help="Request bodies larger than this answer 413.", min=1)
    ] = MAX_BODY_BYTES,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 ... (hf; default: cuda if available).")
    ] = None,
) -> None:
    """Serve at http://HOST:PORT/v1 (chat/completions, completions, models, streaming) for any OpenAI client."""
    if engine not in ENGINES:
        fail(f"unknown --engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if (model is None) == (follow is None):
        fail("give a MODEL to serve, or --follow LINEAGE to serve a registry lineage's promoted version")
    if follow is not None and adapter is not None:
        fail("--adapter and --follow exclude each other: the registry says which adapter to serve")
    if api_key is not None and not api_key.strip():
        fail("the API key is empty: give --api-key KEY (or set STROP_API_KEY), or leave both unset")
    import uvicorn

    from strop.agents.engines import EngineError, load_engine
    from strop.agents.models import ModelNotFoundError
    from strop.agents.server import create_app

    options: dict[str, Any] = (
        {
            "max_batch_size": max_batch_size,
            "batch_wait_ms": batch_wait_ms,
            "admit_every": admit_every,
            "device": device,
        }
        if engine == "hf"
        else {}
    )
    follower = None
    store: Any = None
    try:
        if follow is not None or db is not None:
            from strop.memory import Store

            store = Store(db)
        if follow is not None:
            from strop.agents.server_follow import RegistryFollower, current_version

            version = current_version(store, follow)
            if engine == "vllm":
                options["enable_lora"] = True  # later adapters swap in without a restart
            served = load_engine(
                version.path, engine, adapter_path=version.adapter_path, model_version=version.name, **options
            )
            follower = RegistryFollower(served, store, follow, version, poll_s=poll_s)
        else:
            assert model is not None
            served = load_engine(model, engine, adapter_path=adapter, **options)
    except (EngineError, ModelNotFoundError) as e:
        fail(str(e))
    aliases = (follow,) if follow else ()
    what = f"{served.model_version} (following {follow})" if follow else served.model_version
    if api_key:
        access = "API key required (Authorization: Bearer KEY)"
    elif host in ("127.0.0.1", "localhost", "::1"):
        access = "no API key asked (this machine only)"
    else:
        access = f"no API key asked: anyone who reaches {host}:{port} can use it (give --api-key)"
    typer.echo(
        f"serving {what} with the {engine} engine at http://{host}:{port}/v1; bound to {host}; {access}"
    )
    from strop.agents.capture.hub import CaptureHub, StoreSink
    from strop.memory.db import masked

    hub = CaptureHub(StoreSink(store) if store is not None else None)
    where = (
        f"recorded in {masked(store.url)}"
        if store is not None
        else "kept in memory only (give --db to record them)"
    )
    typer.echo(f"episodes: POST http://{host}:{port}/episodes; their calls are {where}")
    app = create_app(
        served,
        aliases=aliases,
        max_queue=max_queue,
        follower=follower,
        owns_engine=True,
        hub=hub,
        api_key=api_key,
        max_body_bytes=max_body_bytes,
    )
    uvicorn.run(app, host=host, port=port, log_level="info")


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the root app."""
    app.command("serve")(serve)
