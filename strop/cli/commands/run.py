"""`strop run LOOP`: episodes of any registered loop on training tasks, recorded in the store.

Every loop comes from the loop registry (`strop.agents.loops.registry`), so a new loop, built in or added by
another package through the `strop.loops` entry-point group, is runnable here with no change to this file.

Typer and stdlib only at module level: torch, transformers and sqlalchemy load inside the command.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from strop.cli.common import (
    DbOpt,
    ModelOpt,
    OptionOpt,
    TasksOpt,
    complete_loop,
    fail,
    loop_config,
    loop_spec,
    one_line,
    parse_options,
    task_set,
    tasks_of,
    version,
)

_SHORTCUTS_PANEL = "Shortcuts (each sets the loop config field of the same name, like --set)"
_SCALE_PANEL = "Scale-out (docs/scale.md)"


def run_cmd(
    loop: Annotated[
        str,
        typer.Argument(
            help="A registered loop (`strop loops list`), e.g. best-of-n.", autocompletion=complete_loop
        ),
    ],
    model: ModelOpt,
    tasks: TasksOpt = "arithmetic",
    option: OptionOpt = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            metavar="FIELD=VALUE",
            help="Loop config field, repeatable (e.g. --set n=4 --set temperature=1.0); "
            "the fields: `strop loops show LOOP`.",
        ),
    ] = None,
    critic: Annotated[
        str | None,
        typer.Option(
            "--critic",
            help="Model playing the critic role, for loops that declare one "
            "(default: the policy model itself, i.e. self-critique).",
        ),
    ] = None,
    episodes: Annotated[int, typer.Option(min=1, help="Episodes (one per training task).")] = 64,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Episodes in flight (the engine batches across them).")
    ] = 64,
    run_id: Annotated[
        str | None, typer.Option(help="Resume this run id (printed at the start of every run).")
    ] = None,
    db: DbOpt = None,
    n: Annotated[
        int | None,
        typer.Option(
            "--n", help="= --set n=N (best-of-n: answers sampled per task).", rich_help_panel=_SHORTCUTS_PANEL
        ),
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="= --set temperature=T.", rich_help_panel=_SHORTCUTS_PANEL)
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="= --set max_tokens=K.", rich_help_panel=_SHORTCUTS_PANEL)
    ] = None,
    system: Annotated[
        str | None,
        typer.Option("--system", help="= --set system_prompt=TEXT.", rich_help_panel=_SHORTCUTS_PANEL),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=0,
            rich_help_panel=_SCALE_PANEL,
            help="Rollout workers pulling episodes from the store's queue: local "
            "processes, or Ray actors with --ray (0: this process).",
        ),
    ] = 0,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="auto|local|ADDRESS",
            rich_help_panel=_SCALE_PANEL,
            help="Start the workers as actors on this Ray cluster (needs "
            "strop[ray] and, across hosts, a PostgreSQL --db).",
        ),
    ] = None,
    actor_cpus: Annotated[
        float, typer.Option(min=0.0, rich_help_panel=_SCALE_PANEL, help="CPUs Ray reserves per worker actor.")
    ] = 1.0,
    actor_gpus: Annotated[
        float, typer.Option(min=0.0, rich_help_panel=_SCALE_PANEL, help="GPUs Ray reserves per worker actor.")
    ] = 0.0,
    external_workers: Annotated[
        bool,
        typer.Option(
            "--external-workers",
            rich_help_panel=_SCALE_PANEL,
            help="Start no workers: enqueue and wait for `strop worker` processes started elsewhere.",
        ),
    ] = False,
    lease_ttl: Annotated[
        float,
        typer.Option(
            min=1.0,
            rich_help_panel=_SCALE_PANEL,
            help="Seconds a dead worker's episodes wait before others re-run them.",
        ),
    ] = 60.0,
) -> None:
    """Run episodes of any registered loop on training tasks and record them in the store.

    The loop's config comes from [bold]--set FIELD=VALUE[/bold] (its fields, types and defaults:
    [bold]strop loops show LOOP[/bold]); the task set's from [bold]--option KEY=VALUE[/bold]. The shortcuts
    --n, --temperature, --max-tokens and --system set the config fields of the same names (system_prompt),
    so [bold]strop run best-of-n --model M --tasks T --n 8[/bold] means [bold]--set n=8[/bold].

    Each role the loop declares gets an engine: policy from --model, critic from --critic (default: the
    policy model, self-critique); any other role plays with the policy model.

    With [bold]--workers N[/bold] the episodes go to the store's work queue and N worker processes (or Ray
    actors with [bold]--ray auto[/bold]) run them, each with its own engine; more can join from other hosts
    with [bold]strop worker --db URL[/bold].

    Example: [bold]strop run best-of-n -m tiny -t arithmetic -o digits=1 --set n=4 --episodes 32[/bold]
    """
    from strop.agents.evaluation import task_set_label
    from strop.agents.loops.registry import LoopResources
    from strop.agents.runner import Runner, load_version_engine
    from strop.memory import Store
    from strop.memory.records import Role, RunRecord, new_id
    from strop.sandbox.tasks import Split

    spec = loop_spec(loop)
    shortcuts = {
        "n": ("--n", n),
        "temperature": ("--temperature", temperature),
        "max_tokens": ("--max-tokens", max_tokens),
        "system_prompt": ("--system", system),
    }
    try:
        cfg = loop_config(spec, set_, shortcuts)
    except ValueError as exc:
        fail(one_line(str(exc)))
    roles = [str(r) for r in spec.needed_roles(cfg)] or [str(Role.POLICY)]
    if critic is not None and str(Role.CRITIC) not in roles:
        fail(f"--critic: loop {spec.name!r} has no critic role (its roles: {', '.join(roles)})")
    chosen_set = task_set(tasks, option)
    options = parse_options(option)
    task_list = tasks_of(chosen_set, Split.TRAIN, episodes)
    store = Store(db)
    versions = {str(Role.POLICY): version(store, model)}
    for role in roles:
        if role == str(Role.CRITIC) and critic is not None:
            versions[role] = version(store, critic, "--critic")
        else:
            versions.setdefault(role, versions[str(Role.POLICY)])
    policy = versions[str(Role.POLICY)]
    model_ids = list(dict.fromkeys(v.id for v in versions.values()))
    run = RunRecord(
        id=run_id or new_id(),
        loop=spec.name,
        model_ids=model_ids,
        config={
            "task_set": chosen_set.name,
            "task_options": options,
            "loop": cfg.model_dump(mode="json"),
            "roles": {r: versions[r].id for r in roles},
        },
    )
    with_critic = f", critic {versions[str(Role.CRITIC)].name}" if str(Role.CRITIC) in roles else ""
    typer.echo(
        f"run {run.id}: {spec.name} with {policy.name}{with_critic} on {episodes} {chosen_set.name} tasks "
        f"(resume with --run-id {run.id})"
    )

    if ray is not None and workers < 1:
        fail("--ray starts --workers N actors: give --workers (e.g. --workers 4)")
    if workers or external_workers:
        res = _run_on_workers(
            store,
            spec,
            cfg,
            run,
            versions,
            task_list,
            tasks,
            options,
            workers=workers,
            ray=ray,
            actor_cpus=actor_cpus,
            actor_gpus=actor_gpus,
            lease_ttl=lease_ttl,
            concurrency=concurrency,
            external=external_workers,
        )
        _print_result(spec, cfg, res)
        return

    async def go():  # type: ignore[no-untyped-def]
        loaded: dict[
            str, Any
        ] = {}  # version id -> engine: one engine per distinct model, shared by its roles
        # A loop with no roles (game_demos: fixed players only) gets no engine: no weights are loaded for it.
        wanted = versions if spec.needed_roles(cfg) else {}
        try:
            for version in wanted.values():
                if version.id not in loaded:
                    loaded[version.id] = load_version_engine(version)
            engines = {role: loaded[wanted[role].id] for role in wanted}
            graph = spec.make(
                LoopResources(
                    engines=engines, task_set=chosen_set, store=store, label=task_set_label(tasks, options)
                ),
                cfg,
            )
            return await Runner(store, concurrency=concurrency).run(graph, task_list, run)
        finally:
            for engine in loaded.values():
                await engine.close()

    _print_result(spec, cfg, asyncio.run(go()))


def _print_result(spec: Any, cfg: Any, res: Any) -> None:
    k = getattr(cfg, "n", None)
    kinds = "/".join(str(kind).upper() for kind in spec.example_kinds)
    typer.echo(
        f"{res.episodes} episodes, {res.samples} answers, {res.correct} correct ({res.accuracy:.1%}), "
        f"pass{'@' + str(k) if isinstance(k, int) else ''} {res.pass_rate:.1%}, "
        f"{res.examples} {kinds + ' ' if kinds else ''}examples; {res.seconds:.0f} s"
    )
    if getattr(res, "failed", 0):  # items the runner skipped (agents/runner.py): not counted as wrong answers
        typer.echo(f"{res.skipped_line()} (not scored)")
        for kind, reason in res.failure_reasons.items():
            typer.echo(f"  {kind}, e.g.: {reason}")


def _run_on_workers(
    store: Any,
    spec: Any,
    cfg: Any,
    run: Any,
    versions: dict[str, Any],
    task_list: list[Any],
    tasks: str,
    options: dict[str, Any],
    *,
    workers: int,
    ray: str | None,
    actor_cpus: float,
    actor_gpus: float,
    lease_ttl: float,
    concurrency: int,
    external: bool,
) -> Any:
    """`strop run --workers N`: the episodes go through the store's queue to N workers with their own engines."""
    from strop.agents.evaluation import task_set_label
    from strop.agents.scale import ScaleError, ScaleSettings, run_on_workers
    from strop.agents.work_spec import RoleModel, WorkSpec

    scale = ScaleSettings(
        workers=workers,
        ray=ray,
        actor_cpus=actor_cpus,
        actor_gpus=actor_gpus,
        lease_ttl=lease_ttl,
        external=external,
    )
    work = WorkSpec(
        loop=spec.name,
        config=cfg.model_dump(mode="json"),
        task_set=tasks,
        task_options=options,
        label=task_set_label(tasks, options),
        roles={r: RoleModel(version=v.id, lineage=v.lineage) for r, v in versions.items()},
    )
    try:
        return asyncio.run(run_on_workers(store, run, work, task_list, scale, concurrency=concurrency))
    except ScaleError as exc:
        fail(one_line(str(exc)))


def register(app: typer.Typer) -> None:
    """Attach `strop run` to the root app."""
    app.command("run", no_args_is_help=True)(run_cmd)
