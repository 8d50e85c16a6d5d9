"""What every generated `strop train KIND` command does: settings from its options, the parent version, the
data (stored examples, or an on-line kind's loop and tasks), the training job and its one-line report.

Apart from `train` (which builds the commands) so building the commands stays separate from running one.
Typer and stdlib only at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from strop.cli.common import (
    fail,
    loop_config,
    loop_spec,
    one_line,
    parse_options,
    task_set,
    tasks_of,
    version,
)


def run_training(kind: Any, options: dict[str, tuple[str, bool]], values: dict[str, Any]) -> None:
    """Train `kind` with the command line's `values`; `options` maps settings fields to their parameters."""
    from strop.agents.models import model_cache_dir
    from strop.memory import Store
    from strop.memory.records import Role
    from strop.training.jobs import (
        JobFinishedError,
        JobRunningError,
        NothingToTrainError,
        job_id_for,
        train_candidate,
    )
    from strop.training.launch import LaunchError
    from strop.training.tracking import TrainHooks

    role = values.get("role", str(Role.POLICY))
    if role not in {str(r) for r in Role}:
        fail(f"--role {role}: no such role; give one of {', '.join(str(r) for r in Role)}")
    launch = None
    if not kind.online:
        launch = launch_settings(values["launcher"], values["num_processes"], values["accelerate_config"])
    settings = settings_from(kind, options, values)
    rollouts = (
        _rollouts(values) if kind.online else None
    )  # a bad loop or task set fails before the store opens
    store = Store(values["db"])
    parent = version(store, values["model"])
    run_ids = _derive(store, values) if values.get("derive_from") else None
    context: dict[str, Any] = {}
    if rollouts is not None:
        context = _context(store, rollouts, values)
    spec = job_spec(kind, parent.id, role, settings, run_ids, values)
    for _ in range(3):  # the job was settled between choosing its id and starting it: take the next attempt's
        job_id = job_id_for(store, spec)  # the same as a killed run's, so a rerun continues that job
        _say_continued(store, job_id)
        name = values["name"] or f"{parent.lineage}-{kind.name}-{job_id[:8]}"
        out = values["output_dir"] or model_cache_dir() / "versions" / name
        try:
            res = train_candidate(
                store,
                parent,
                kind=kind.name,
                output_dir=out,
                settings=settings,
                name=name,
                job_id=job_id,
                role=role,
                run_ids=run_ids,
                context=context or None,
                hooks=TrainHooks(progress=values["progress"], label=f"{kind.name} {name}"),
                launch=launch,
            )
        except JobFinishedError:
            continue
        except JobRunningError as e:
            fail(str(e))
        except LaunchError as e:
            fail(str(e))
        except NothingToTrainError as e:
            fail(_nothing_to_train(kind, role) or str(e))
        except ValueError as e:
            if not kind.online:
                raise
            # the rollouts refused the loop config (GRPO samples with its own n, temperature)
            fail(one_line(e))
        break
    else:
        fail(f"training job {job_id} kept finishing before this run could start it; run the command again")
    _report(kind, res)


# What `job_spec` leaves out: how the job is run or shown, not what it trains.
_NOT_THE_JOB = frozenset({"progress", "db", "launcher", "num_processes", "accelerate_config", "concurrency"})


def job_spec(
    kind: Any, parent_id: str, role: str, settings: Any, run_ids: list[str] | None, values: dict[str, Any]
) -> dict[str, Any]:
    """What defines a hand-run job, hashed into its id (`job_id_for`): the kind, the parent, the role, the
    validated settings, the data, the candidate's name and folder and an on-line kind's rollouts. Rerun with
    all of them unchanged, a killed `strop train` continues its job; change any and it is another job."""
    given = {
        k: v
        for k, v in values.items()
        if k not in _NOT_THE_JOB and not k.startswith("setting__") and k not in ("set_", "lora_r")
    }
    return {
        "kind": kind.name,
        "parent": parent_id,
        "role": role,
        "settings": settings.model_dump(mode="json"),
        "example_kinds": [str(k) for k in kind.example_kinds],
        "run_ids": run_ids,
        **given,
    }


def _say_continued(store: Any, job_id: str) -> None:
    """Tell the user when this run takes over a job a stopped run left running (its claims come with it)."""
    state = next((r for r in store.job_lease_report().running if r.job_id == job_id), None)
    if state is not None and state.lease != "live":
        typer.echo(
            f"continuing training job {job_id}, left running by a run that stopped ({state.holder or 'no lease'}); "
            f"it keeps the {state.claims} examples it had claimed"
        )


def launch_settings(launcher: str, num_processes: int | None, accelerate_config: Path | None) -> Any:
    """The `--launcher` options as `LaunchSettings`; a bad combination exits naming the option."""
    from pydantic import ValidationError

    from strop.training.launch import LaunchSettings

    try:
        return LaunchSettings(
            launcher=launcher,  # type: ignore[arg-type]
            num_processes=num_processes,
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
        fail(
            "; ".join(
                f"{names[str(err['loc'][0])] if err['loc'] else given}: "
                f"{str(err['msg']).removeprefix('Value error, ')}"
                for err in e.errors()
            )
        )


def settings_from(kind: Any, options: dict[str, tuple[str, bool]], values: dict[str, Any]) -> Any:
    """The kind's settings from its options, `--lora-r` and `--set`, validated as a recipe stage's are."""
    from pydantic import ValidationError

    from strop.training.recipe import format_validation_error

    given: dict[str, Any] = {}
    flags: dict[str, str] = {}  # field -> the option that gave it
    for field, (param, collapse) in options.items():
        value = values.get(param)
        if value is None or (isinstance(value, list | tuple) and not value):
            continue  # not given: the settings model's default applies
        if isinstance(value, list | tuple):
            value = value[0] if collapse and len(value) == 1 else list(value)
        given[field], flags[field] = value, f"--{field.replace('_', '-')}"
    rank = values.get("lora_r")
    if rank is not None:
        given["lora"], flags["lora"] = ({"r": rank, "alpha": 2 * rank} if rank > 0 else None), "--lora-r"
    try:
        pairs = parse_options(values.get("set_"), flag="--set", example="warmup_ratio=0.1")
    except typer.BadParameter as exc:
        fail(f"--set: {exc.message}")
    for key, value in pairs.items():
        top, _, rest = key.partition(".")
        if top in flags and not (rest and isinstance(given.get(top), dict)):
            fail(f"{flags[top]} and --set {key}=... both given; keep one")
        if not rest:
            given[top] = value
            continue
        node = given.setdefault(top, {})
        *path, last = rest.split(".")
        for part in path:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node
        if not isinstance(node, dict):
            fail(f"--set {key}: {top} is not a group of fields here (it was given as {given[top]!r})")
        node[last] = value
    try:
        return kind.parse_settings(given)
    except ValidationError as e:
        fail(
            f"invalid {kind.name} settings (checked as a recipe stage's train.settings; see "
            f"`strop train {kind.name} --help`):\n{format_validation_error(e)}"
        )


def _rollouts(values: dict[str, Any]) -> tuple[Any, Any, Any, list[Any], dict[str, Any]]:
    """An on-line kind's loop, loop config, task set, training tasks and task options, checked up front."""
    from strop.sandbox.tasks import Split

    spec = loop_spec(values["loop"])
    try:
        cfg = loop_config(spec, values["loop_config"], flag="--loop-config")
    except ValueError as exc:
        fail(one_line(exc))
    chosen = task_set(values["tasks"], values["option"])
    return (
        spec,
        cfg,
        chosen,
        tasks_of(chosen, Split.TRAIN, values["n_tasks"]),
        parse_options(values["option"]),
    )


def _context(store: Any, rollouts: tuple[Any, ...], values: dict[str, Any]) -> dict[str, Any]:
    """What a recipe stage hands an on-line trainer (training/evolve.py `_train`), from the command line."""
    from strop.agents.evaluation import task_set_label
    from strop.agents.runner import Runner
    from strop.memory.records import new_id

    spec, cfg, chosen, tasks, options = rollouts
    run_id = new_id()
    typer.echo(
        f"rollouts: {spec.name} on {len(tasks)} {task_set_label(values['tasks'], options)} tasks, "
        f"stored under run {run_id}"
    )
    return {
        "loop": spec,
        "loop_config": cfg,
        "task_set": chosen,
        "tasks": tasks,
        "run_id": run_id,
        "runner": Runner(store, concurrency=values["concurrency"], progress=values["progress"]),
    }


def _derive(store: Any, values: dict[str, Any]) -> list[str]:
    """`--derive-from RUN`: pairs from recorded best-of-N runs first; the job then trains on those runs only."""
    from strop.training.pairs import derive_pairs

    runs = list(values["derive_from"])
    try:
        got = derive_pairs(store, runs, max_pairs_per_task=values["max_pairs_per_task"])
    except ValueError as e:
        fail(str(e))
    typer.echo(
        f"derived {got.pairs} pairs from {got.with_pairs} of {got.episodes} episodes ({got.added} new)"
        + (f"; {got.skipped_no_prompt} episodes skipped: prompt unknown" if got.skipped_no_prompt else "")
    )
    return runs


def _nothing_to_train(kind: Any, role: str) -> str | None:
    """Where a kind's missing examples come from, when the CLI knows better than the generic message."""
    from strop.memory.records import ExampleKind

    if ExampleKind.PAIR not in kind.example_kinds:
        return None
    return (
        f"nothing to train: no unconsumed preference pairs of the {role}. Collect some with "
        "`strop run best_of_n --set emit_pairs=true`, or derive them from a recorded best-of-N run with "
        "`--derive-from RUN_ID`"
    )


def _report(kind: Any, res: Any) -> None:
    from strop.memory.records import ExampleKind

    metrics = res.job.metrics
    if "balance" in metrics:
        from strop.training.pairs import format_balance

        typer.echo(f"pairs: {format_balance(metrics['balance'])}")
    pairs = tuple(kind.example_kinds) == (ExampleKind.PAIR,)
    unit = "pairs" if pairs else "samples" if kind.online else "examples"
    margin = metrics.get("reward_margin")
    name = res.candidate.name
    typer.echo(
        f"candidate {name} ({res.candidate.id}): {res.examples} {unit}, loss {res.train_loss:.3f}"
        + (
            f", reward margin {margin:+.3f} (accuracy {metrics.get('reward_accuracy', 0):.0%})"
            if margin is not None
            else ""
        )
        + f", {res.seconds:.0f} s. Evaluate it with `strop eval --model {name}`, then "
        f"`strop models promote {name}`"
    )
