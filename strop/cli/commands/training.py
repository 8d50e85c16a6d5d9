"""Top-level `strop` commands for training: `strop train sft` and `strop evolve`.

Typer and stdlib only at module level: torch, trl and sqlalchemy load inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

ReportToOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--report-to",
        help="Experiment tracker for TRL's losses and strop's metrics, repeatable: tensorboard, mlflow, "
        "... (default: none). TensorBoard writes under OUTPUT_DIR/trainer/runs.",
    ),
]
ProgressOpt = Annotated[bool, typer.Option(help="A progress bar per training run (steps, loss, ETA).")]
LauncherOpt = Annotated[
    str,
    typer.Option(
        "--launcher",
        help="local: train in this process. accelerate: run the TRL job under `accelerate launch` "
        "(data parallel; this process still claims the examples and registers the candidate).",
    ),
]
NumProcessesOpt = Annotated[
    int | None,
    typer.Option(
        "--num-processes",
        help="With --launcher accelerate: processes to launch (GPUs on a GPU host, gloo on CPU).",
    ),
]
AccelerateConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--accelerate-config",
        help="With --launcher accelerate: an `accelerate config` YAML file (multi-GPU, "
        "DeepSpeed ZeRO-1/2, FSDP on one machine).",
    ),
]

train_app = typer.Typer(no_args_is_help=True, help="Fine-tune a model on the examples in the store.")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _first_error(exc: ValueError) -> str:
    """A pydantic ValidationError's messages on one line (another ValueError as it is)."""
    errors = getattr(exc, "errors", None)
    return "; ".join(str(e["msg"]) for e in errors()) if callable(errors) else str(exc)


def _launch_settings(launcher: str, num_processes: int | None, accelerate_config: Path | None) -> Any:
    """The `--launcher` options as `LaunchSettings`; a bad combination exits naming the option."""
    from pydantic import ValidationError

    from strop.training.launch import LaunchSettings

    try:
        return LaunchSettings(
            launcher=launcher,
            num_processes=num_processes,  # type: ignore[arg-type]
            accelerate_config=str(accelerate_config) if accelerate_config else None,
        )
    except ValidationError as e:
        names = {
            "launcher": "--launcher",
            "num_processes": "--num-processes",
            "accelerate_config": "--accelerate-config",
        }
        # A field's error names its option; the cross-field one (a process count without accelerate) the option given.
        given = "--num-processes" if num_processes is not None else "--accelerate-config"
        _fail(
            "; ".join(
                f"{names[str(err['loc'][0])] if err['loc'] else given}: "
                f"{str(err['msg']).removeprefix('Value error, ')}"
                for err in e.errors()
            )
        )


@train_app.command("sft")
def sft_cmd(
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="Model version to train from (registry name/id, cache name or folder)."
        ),
    ],
    epochs: Annotated[float, typer.Option(help="Passes over the examples.")] = 2.0,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 2e-4,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 8,
    lora_r: Annotated[int, typer.Option(help="LoRA rank; 0 for full fine-tuning.")] = 16,
    merge: Annotated[
        bool, typer.Option(help="Merge the LoRA adapter into a full model instead of keeping it.")
    ] = False,
    limit: Annotated[int | None, typer.Option(help="Train on at most this many examples.")] = None,
    role: Annotated[
        str,
        typer.Option(
            help="Whose examples: policy, or critic (e.g. the step-value examples an MCTS run writes with emit_values, "
            "which train a process reward model)."
        ),
    ] = "policy",
    name: Annotated[str | None, typer.Option(help="Name of the candidate version.")] = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Where to save it (default: the model cache).")
    ] = None,
    report_to: ReportToOpt = None,
    progress: ProgressOpt = True,
    launcher: LauncherOpt = "local",
    num_processes: NumProcessesOpt = None,
    accelerate_config: AccelerateConfigOpt = None,
    db: Annotated[str | None, typer.Option("--db", help="Store URL or SQLite path.")] = None,
) -> None:
    """SFT on the unconsumed SFT examples of a role; registers the result as a candidate with its lineage."""
    from strop.agents.models import ModelNotFoundError, model_cache_dir
    from strop.agents.runner import resolve_version
    from strop.memory import Store
    from strop.memory.records import Role, new_id
    from strop.training.jobs import NothingToTrainError, train_sft_candidate
    from strop.training.launch import LaunchError
    from strop.training.sft import LoraSettings, SFTSettings
    from strop.training.tracking import TrainHooks

    if role not in {str(r) for r in Role}:
        _fail(f"--role {role}: no such role; give one of {', '.join(str(r) for r in Role)}")
    launch = _launch_settings(launcher, num_processes, accelerate_config)
    store = Store(db)
    try:
        parent = resolve_version(store, model)
    except ModelNotFoundError as e:
        _fail(str(e))
    try:
        settings = SFTSettings(
            epochs=epochs,
            learning_rate=lr,
            batch_size=batch_size,
            merge=merge,
            lora=LoraSettings(r=lora_r, alpha=2 * lora_r) if lora_r > 0 else None,
            report_to=report_to or [],
        )
    except ValueError as e:
        _fail(_first_error(e))
    job_id = new_id()
    cand_name = name or f"{parent.lineage}-sft-{job_id[:8]}"
    out = output_dir or model_cache_dir() / "versions" / cand_name
    try:
        res = train_sft_candidate(
            store,
            parent,
            output_dir=out,
            settings=settings,
            name=cand_name,
            job_id=job_id,
            limit=limit,
            role=role,
            hooks=TrainHooks(progress=progress, label=f"sft {cand_name}"),
            launch=launch,
        )
    except (NothingToTrainError, LaunchError) as e:
        _fail(str(e))
    typer.echo(
        f"candidate {res.candidate.name} ({res.candidate.id}): {res.examples} examples, loss "
        f"{res.train_loss:.3f}, {res.seconds:.0f} s. Evaluate it with `strop eval --model {res.candidate.name}`, "
        f"then `strop models promote {res.candidate.name}`"
    )


@train_app.command("dpo")
def dpo_cmd(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="Model version to train from (registry name/id, cache name or folder); it is also the DPO reference.",
        ),
    ],
    beta: Annotated[float, typer.Option(help="KL strength toward the reference (the parent version).")] = 0.1,
    loss_type: Annotated[
        str, typer.Option(help="TRL DPO loss: sigmoid, ipo, hinge, robust, ... (see `DPOSettings`).")
    ] = "sigmoid",
    epochs: Annotated[float, typer.Option(help="Passes over the pairs.")] = 1.0,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 5e-5,
    batch_size: Annotated[int, typer.Option(help="Pairs per step.")] = 8,
    lora_r: Annotated[int, typer.Option(help="LoRA rank; 0 for full fine-tuning.")] = 16,
    merge: Annotated[
        bool, typer.Option(help="Merge the LoRA adapter into a full model instead of keeping it.")
    ] = False,
    limit: Annotated[int | None, typer.Option(help="Train on at most this many pairs.")] = None,
    derive_from: Annotated[
        list[str] | None,
        typer.Option(
            "--derive-from",
            help="Run id, repeatable: first derive pairs from these best-of-N runs' answers (for runs "
            "recorded without emit_pairs), then train on those runs' pairs only.",
        ),
    ] = None,
    max_pairs_per_task: Annotated[
        int, typer.Option(help="With --derive-from: most pairs derived per task.")
    ] = 4,
    name: Annotated[str | None, typer.Option(help="Name of the candidate version.")] = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Where to save it (default: the model cache).")
    ] = None,
    report_to: ReportToOpt = None,
    progress: ProgressOpt = True,
    launcher: LauncherOpt = "local",
    num_processes: NumProcessesOpt = None,
    accelerate_config: AccelerateConfigOpt = None,
    db: Annotated[str | None, typer.Option("--db", help="Store URL or SQLite path.")] = None,
) -> None:
    """DPO on the unconsumed preference pairs (correct over incorrect answers); registers a candidate."""
    from pydantic import ValidationError

    from strop.agents.models import ModelNotFoundError, model_cache_dir
    from strop.agents.runner import resolve_version
    from strop.memory import Store
    from strop.memory.records import new_id
    from strop.training.dpo import DPOSettings
    from strop.training.jobs import NothingToTrainError, train_candidate
    from strop.training.launch import LaunchError
    from strop.training.pairs import derive_pairs, format_balance
    from strop.training.sft import LoraSettings
    from strop.training.tracking import TrainHooks

    launch = _launch_settings(launcher, num_processes, accelerate_config)
    try:
        settings = DPOSettings(
            beta=beta,
            loss_type=loss_type,
            epochs=epochs,
            learning_rate=lr,
            batch_size=batch_size,
            merge=merge,
            lora=LoraSettings(r=lora_r, alpha=2 * lora_r) if lora_r > 0 else None,
            report_to=report_to or [],
        )
    except ValidationError as e:
        _fail("; ".join(err["msg"] for err in e.errors()))
    store = Store(db)
    try:
        parent = resolve_version(store, model)
    except ModelNotFoundError as e:
        _fail(str(e))
    if derive_from:
        try:
            got = derive_pairs(store, derive_from, max_pairs_per_task=max_pairs_per_task)
        except ValueError as e:
            _fail(str(e))
        typer.echo(
            f"derived {got.pairs} pairs from {got.with_pairs} of {got.episodes} episodes ({got.added} new)"
            + (f"; {got.skipped_no_prompt} episodes skipped: prompt unknown" if got.skipped_no_prompt else "")
        )
    job_id = new_id()
    cand_name = name or f"{parent.lineage}-dpo-{job_id[:8]}"
    out = output_dir or model_cache_dir() / "versions" / cand_name
    try:
        res = train_candidate(
            store,
            parent,
            kind="dpo",
            output_dir=out,
            settings=settings,
            name=cand_name,
            job_id=job_id,
            limit=limit,
            run_ids=derive_from or None,
            hooks=TrainHooks(progress=progress, label=f"dpo {cand_name}"),
            launch=launch,
        )
    except LaunchError as e:
        _fail(str(e))
    except NothingToTrainError:
        _fail(
            "nothing to train: no unconsumed preference pairs of the policy. Collect some with "
            "`strop run best_of_n --set emit_pairs=true`, or derive them from a recorded best-of-N run with "
            "`--derive-from RUN_ID`"
        )
    metrics = res.job.metrics
    if "balance" in metrics:
        typer.echo(f"pairs: {format_balance(metrics['balance'])}")
    margin = metrics.get("reward_margin")
    typer.echo(
        f"candidate {res.candidate.name} ({res.candidate.id}): {res.examples} pairs, loss {res.train_loss:.3f}"
        + (
            f", reward margin {margin:+.3f} (accuracy {metrics.get('reward_accuracy', 0):.0%})"
            if margin is not None
            else ""
        )
        + f", {res.seconds:.0f} s. Evaluate it with `strop eval --model {res.candidate.name}`, then "
        f"`strop models promote {res.candidate.name}`"
    )


def evolve_cmd(
    recipe: Annotated[
        Path, typer.Option("--recipe", "-r", help="Recipe TOML file, e.g. recipes/star-arithmetic.toml.")
    ],
    cycles: Annotated[
        int | None, typer.Option(help="Cycles to run (default: the recipe's `cycles`).")
    ] = None,
    db: Annotated[
        str | None, typer.Option("--db", help="Store URL or SQLite path (overrides the recipe's `db`).")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-o",
            help="Task-set option KEY=VALUE for every stage's task set (overrides the recipe's), "
            "repeatable: --option steps=2 --option word_problems=true.",
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="Run the next unfinished cycle, then exit (for cron, systemd timers, Kubernetes CronJobs). "
            "Ignores the recipe's `cycles`; with --cycles N, does nothing once cycle N is done.",
        ),
    ] = False,
    lease_ttl: Annotated[
        float,
        typer.Option(
            help="Seconds the recipe's lease outlives its last heartbeat (one every TTL/3): how soon a killed "
            "run's recipe can be taken over."
        ),
    ] = 60.0,
) -> None:
    """Run a recipe's cycles: each stage collects with its loop, trains a role, evaluates, promotes.

    Kill it at any point and run it again to continue where it stopped. One run of a recipe at a time: a
    second one (here or on another host on the same store) says who holds the recipe and exits with status 0;
    a killed run's hold expires after --lease-ttl seconds. Exit status: 0 done, nothing to do, or recipe busy;
    1 bad input, a failed cycle, or the hold taken over by another run (this one stalled past its TTL).
    """
    import warnings

    from strop.cli.commands._options import parse_options
    from strop.memory import Store
    from strop.memory.leases import LeaseHeldError, LeaseLostError
    from strop.training.cycle_lease import recipe_lease, run_cycles, target_cycle
    from strop.training.evolve import Evolution
    from strop.training.recipe import RecipeError, load_recipe

    try:
        r = load_recipe(recipe)
    except RecipeError as e:
        _fail(str(e))
    if cycles is not None and cycles < 1:
        _fail(f"--cycles must be at least 1, got {cycles}")
    if option:
        overrides = parse_options(option)
        for stage in r.stages:
            stage.tasks.options = {**stage.tasks.options, **overrides}
    # transformers 5 deprecations that TRL/PEFT trigger on every load; not ours to fix, only noise here.
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
    if lease_ttl <= 0:
        _fail(f"--lease-ttl must be above 0 seconds, got {lease_ttl:g}")
    store = Store(db or r.db)
    try:
        evo = Evolution(r, store, progress=progress)
    except RecipeError as e:  # a task set, task option or model the recipe names that does not exist
        _fail(str(e))
    try:
        with recipe_lease(store, r.name, ttl=lease_ttl) as keeper:
            if keeper.lease.previous is not None:
                p = keeper.lease.previous
                typer.echo(
                    f"took over recipe {r.name} from {p.holder}, gone since its last heartbeat at "
                    f"{p.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC (killed?); continuing its cycle"
                )
            target = target_cycle(evo, cycles=cycles, once=once)
            if target is None:
                typer.echo(f"{r.name}: all {cycles} cycles are done; nothing to do")
                return
            run_cycles(evo, target, keeper)
    except LeaseHeldError as e:
        held = e.lease
        typer.echo(
            f"{r.name} is being evolved by {held.holder} since {held.acquired_at:%Y-%m-%d %H:%M:%S} UTC "
            f"(lease expires {held.expires_at:%H:%M:%S} UTC unless renewed); not starting a second run"
        )
    except LeaseLostError as e:
        _fail(str(e))


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the root app."""
    app.add_typer(
        train_app, name="train", help="Fine-tune on the store's examples: `strop train sft --model M`."
    )
    app.command("evolve")(evolve_cmd)
