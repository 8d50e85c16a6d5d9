"""`strop serve MODEL`: an OpenAI-compatible HTTP server over the hf engine.

Only typer and the standard library at import; uvicorn, torch and the engine load inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def serve(
    model: Annotated[
        str, typer.Argument(help="A cache name ('tiny', 'smollm2-135m') or a local HF model folder.")
    ],
    host: Annotated[
        str, typer.Option(help="Interface to bind; 0.0.0.0 exposes it to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    adapter: Annotated[Path | None, typer.Option(help="A PEFT (LoRA) adapter folder to apply.")] = None,
    max_batch_size: Annotated[int, typer.Option(help="Most rows decoded together in one forward pass.")] = 64,
    batch_wait_ms: Annotated[float, typer.Option(help="How long to wait for more requests to batch.")] = 10,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")
    ] = None,
) -> None:
    """Serve MODEL at http://HOST:PORT/v1 (chat/completions, completions, models) for any OpenAI client."""
    import uvicorn

    from strop.agents.engines import EngineError, load_engine
    from strop.agents.models import ModelNotFoundError
    from strop.agents.server import create_app

    try:
        engine = load_engine(
            model,
            "hf",
            adapter_path=adapter,
            max_batch_size=max_batch_size,
            batch_wait_ms=batch_wait_ms,
            device=device,
        )
    except (EngineError, ModelNotFoundError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from e
    typer.echo(f"serving {engine.model_version} at http://{host}:{port}/v1")
    uvicorn.run(create_app(engine), host=host, port=port, log_level="info")


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the root app."""
    app.command("serve")(serve)
