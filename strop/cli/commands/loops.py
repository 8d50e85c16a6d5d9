"""Top-level `strop` commands for loops: `strop run LOOP`, `strop loops list|show` and `strop eval`.

Every loop comes from the loop registry (`strop.agents.loops.registry`), so a new loop, built in or added by
another package through the `strop.loops` entry-point group, is runnable here with no change to this file.

Typer and stdlib only at module level: torch, transformers and sqlalchemy load inside the commands.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from strop.cli.commands._options import load_task_set_from_options, parse_options, raw_values

loops_app = typer.Typer(no_args_is_help=True)

ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", help="Registry name/id, cache name (tiny, smollm2-135m) or model folder."),
]
TasksOpt = Annotated[str, typer.Option("--tasks", "-t", help="Task set name (see `strop tasks list`).")]
DbOpt = Annotated[
    str | None, typer.Option("--db", help="Store URL or SQLite path (default $STROP_DB or ./strop.db).")
]
SystemOpt = Annotated[str | None, typer.Option("--system", help="System message before each task prompt.")]
OptionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--option",
        "-o",
        metavar="KEY=VALUE",
        help="Task-set option, repeatable (e.g. -o digits=3 -o word_problems=true; see `strop tasks list`).",
    ),
]

_SHORTCUTS_PANEL = "Shortcuts (each sets the loop config field of the same name, like --set)"
_SCALE_PANEL = "Scale-out (docs/scale.md)"


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _task_set(tasks: str, option: list[str] | None) -> Any:
    """The task set with its `--option`s, every mistake a one-line error."""
    try:
        options = parse_options(option, flag="--option", example="digits=3")
    except typer.BadParameter as exc:
        _fail(f"--option: {exc.message}")
    try:
        return load_task_set_from_options(tasks, options)
    except ValueError as exc:
        _fail(_one_line(str(exc)))


def _tasks_of(task_set: Any, split: Any, n: int) -> list[Any]:
    """The first `n` tasks of a split, read now so a missing or malformed file fails before a model loads."""
    try:
        chosen = task_set.tasks(split, n)
    except (ValueError, OSError) as exc:
        _fail(_one_line(str(exc)))
    if not chosen:
        _fail(f"task set {task_set.name!r} has no {split} tasks (check its --option values)")
    return chosen


def _setup(
    model: str,
    tasks: str,
    db: str | None,
    option: list[str] | None = None,
    *,
    split: Any = None,
    n_tasks: int = 0,
):  # type: ignore[no-untyped-def]
    """Store, task set and model version, with the user's mistakes turned into one-line errors."""
    from strop.memory import Store

    task_set = _task_set(tasks, option)
    if split is not None:
        _tasks_of(task_set, split, n_tasks)
    store = Store(db)
    return store, task_set, _version(store, model)


def _version(store: Any, model: str, flag: str = "--model") -> Any:
    from strop.agents.models import ModelNotFoundError
    from strop.agents.runner import resolve_version

    try:
        return resolve_version(store, model)
    except ModelNotFoundError as e:
        _fail(f"{flag} {model}: {_one_line(str(e))}" if flag != "--model" else _one_line(str(e)))


def _spec(name: str) -> Any:
    from strop.agents.loops.registry import UnknownLoopError, get_loop

    try:
        return get_loop(name)
    except UnknownLoopError as exc:
        _fail(str(exc))


def _complete_loop(incomplete: str) -> list[str]:
    from strop.agents.loops.registry import list_loops

    return [s.name for s in list_loops() if s.name.startswith(incomplete.replace("-", "_"))]


def loop_config(
    spec: Any, pairs: list[str] | None, shortcuts: dict[str, tuple[str, Any]] | None = None
) -> Any:
    """The loop's config from `--set FIELD=VALUE` pairs (and shortcut options), validated by `spec.config`.

    `shortcuts` maps a field to (its option, the value given or None), e.g. {"n": ("--n", 8)}.

    Values are JSON where they parse (8, 0.7, true, ["\\n"]); a field that wants text gets the raw text back
    when the JSON reading does not fit it (`--set system_prompt=3`). Raises `ValueError` with a one-line
    message naming the field and pointing to `strop loops show LOOP`.
    """
    from pydantic import ValidationError

    show = f"see `strop loops show {spec.name}`"
    try:
        values = parse_options(pairs, flag="--set", example="n=8")
    except typer.BadParameter as exc:
        raise ValueError(f"--set: {exc.message}; {show}") from None
    raws = raw_values(pairs)
    flags: dict[str, str] = {}  # field -> the shortcut option that set it
    for key, (flag, value) in (shortcuts or {}).items():
        if value is None:
            continue
        if key in values:
            raise ValueError(f"{flag} and --set {key}=... both given; keep one")
        values[key], flags[key] = value, flag
        raws.pop(key, None)
    fields = spec.config.model_fields
    known = set(fields) | {f.alias for f in fields.values() if f.alias}
    if unknown := sorted(set(values) - known):
        named = ", ".join(f"{k!r} ({flags[k]})" if k in flags else repr(k) for k in unknown)
        raise ValueError(
            f"loop {spec.name!r} has no config field {named}; its fields: {', '.join(fields)} ({show})"
        )
    try:
        return spec.parse_config(values)
    except ValidationError as exc:
        # A field that wants text but got the JSON reading of it (3, true): give it the text as typed.
        wants_text = {str(e["loc"][0]) for e in exc.errors() if e["loc"] and e["type"] == "string_type"}
        retry = wants_text & {k for k in raws if not isinstance(values[k], str)}
        if not retry:
            raise ValueError(_config_error(exc, show)) from None
    try:
        return spec.parse_config({**values, **{k: raws[k] for k in retry}})
    except ValidationError as exc:
        raise ValueError(_config_error(exc, show)) from None


def _config_error(exc: Any, show: str) -> str:
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        parts.append(f"--set {where}={e.get('input')!r}: {e['msg']}")
    return "; ".join(parts) + f" ({show})"


def run_cmd(
    loop: Annotated[
        str,
        typer.Argument(
            help="A registered loop (`strop loops list`), e.g. best-of-n.", autocompletion=_complete_loop
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

    spec = _spec(loop)
    shortcuts = {
        "n": ("--n", n),
        "temperature": ("--temperature", temperature),
        "max_tokens": ("--max-tokens", max_tokens),
        "system_prompt": ("--system", system),
    }
    try:
        cfg = loop_config(spec, set_, shortcuts)
    except ValueError as exc:
        _fail(_one_line(str(exc)))
    roles = [str(r) for r in spec.needed_roles(cfg)] or [str(Role.POLICY)]
    if critic is not None and str(Role.CRITIC) not in roles:
        _fail(f"--critic: loop {spec.name!r} has no critic role (its roles: {', '.join(roles)})")
    task_set = _task_set(tasks, option)
    options = parse_options(option)
    task_list = _tasks_of(task_set, Split.TRAIN, episodes)
    store = Store(db)
    versions = {str(Role.POLICY): _version(store, model)}
    for role in roles:
        if role == str(Role.CRITIC) and critic is not None:
            versions[role] = _version(store, critic, "--critic")
        else:
            versions.setdefault(role, versions[str(Role.POLICY)])
    policy = versions[str(Role.POLICY)]
    model_ids = list(dict.fromkeys(v.id for v in versions.values()))
    run = RunRecord(
        id=run_id or new_id(),
        loop=spec.name,
        model_ids=model_ids,
        config={
            "task_set": task_set.name,
            "task_options": options,
            "loop": cfg.model_dump(mode="json"),
            "roles": {r: versions[r].id for r in roles},
        },
    )
    with_critic = f", critic {versions[str(Role.CRITIC)].name}" if str(Role.CRITIC) in roles else ""
    typer.echo(
        f"run {run.id}: {spec.name} with {policy.name}{with_critic} on {episodes} {task_set.name} tasks "
        f"(resume with --run-id {run.id})"
    )

    if ray is not None and workers < 1:
        _fail("--ray starts --workers N actors: give --workers (e.g. --workers 4)")
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
                    engines=engines, task_set=task_set, store=store, label=task_set_label(tasks, options)
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
    from strop.agents.worker import RoleModel, WorkSpec

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
        _fail(_one_line(str(exc)))


@loops_app.command("list")
def list_cmd() -> None:
    """The registered loops: built in, and added by installed packages (entry-point group strop.loops)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from strop.agents.loops.registry import list_loops

    table = Table("name", "roles", "example kinds", "description", title="loops (strop run LOOP)")
    for spec in list_loops():
        table.add_row(
            escape(spec.name),
            ", ".join(str(r) for r in spec.roles),
            ", ".join(str(k) for k in spec.example_kinds) or "-",
            escape(spec.description),
        )
    Console().print(table)


@loops_app.command("show")
def show_cmd(
    name: Annotated[
        str, typer.Argument(help="Loop name (best-of-n or best_of_n).", autocompletion=_complete_loop)
    ],
) -> None:
    """A loop's config fields (set them with `strop run LOOP --set FIELD=VALUE`), its roles and example kinds."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    spec = _spec(name)
    console = Console()
    console.print(f"[bold]{escape(spec.name)}[/bold]: {escape(spec.description)}")
    kinds = ", ".join(f"{k} (trains {spec.role_of(k)})" for k in spec.example_kinds) or "none"
    console.print(f"roles: {', '.join(str(r) for r in spec.roles)}; emits: {kinds}")
    table = Table(
        "field",
        "type",
        "default",
        "description",
        title=f"config ({spec.config.__name__}): strop run {spec.name} --set FIELD=VALUE",
    )
    for field_name, info in spec.config.model_fields.items():
        table.add_row(
            field_name, escape(_type_name(info)), escape(_default(info)), escape(info.description or "")
        )
    console.print(table)


def _type_name(info: Any) -> str:
    """`int (>= 1, <= 256)`, `list[str]`, `str | None`."""
    ann = info.annotation
    text = ann.__name__ if isinstance(ann, type) and not getattr(ann, "__args__", None) else str(ann)
    text = text.replace("typing.", "")
    bounds = []
    for m in info.metadata:
        for attr, op in (
            ("ge", ">="),
            ("gt", ">"),
            ("le", "<="),
            ("lt", "<"),
            ("min_length", "len >="),
            ("max_length", "len <="),
        ):
            if getattr(m, attr, None) is not None:
                bounds.append(f"{op} {getattr(m, attr)}")
    return f"{text} ({', '.join(bounds)})" if bounds else text


def _default(info: Any) -> str:
    import json

    if info.is_required():
        return "(required)"
    value = info.get_default(call_default_factory=True)
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)


def eval_cmd(
    model: ModelOpt,
    tasks: TasksOpt = "arithmetic",
    option: OptionOpt = None,
    split: Annotated[str, typer.Option(help="train or heldout.")] = "heldout",
    n_tasks: Annotated[int, typer.Option(help="Tasks to evaluate on.")] = 100,
    k: Annotated[int | None, typer.Option(help="Also measure pass@k with k sampled answers.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most new tokens per answer.")] = 64,
    system: SystemOpt = None,
    memory_k: Annotated[
        int,
        typer.Option(
            "--memory-k",
            min=0,
            max=20,
            help="Reflection memory: show each task its K most similar past failures on this task set's train tasks "
            "(indexed first; see `strop memory index`). Recorded apart, as <set>/<split>/memory<K>/pass@1.",
        ),
    ] = 0,
    db: DbOpt = None,
) -> None:
    """Accuracy on held-out tasks (greedy pass@1, and pass@k when asked), recorded on the model version."""
    from strop.agents.evaluation import EvalConfig, evaluate, task_set_label
    from strop.agents.runner import load_version_engine
    from strop.sandbox.tasks import Split

    if split not in {s.value for s in Split}:
        _fail(f"--split must be one of {', '.join(s.value for s in Split)}, got {split!r}")
    store, task_set, version = _setup(model, tasks, db, option, split=Split(split), n_tasks=n_tasks)
    cfg = EvalConfig(
        split=Split(split),
        n_tasks=n_tasks,
        k=k,
        max_tokens=max_tokens,
        system_prompt=system,
        memory_k=memory_k,
        memory_scope=task_set_label(tasks, parse_options(option)) if memory_k else None,
    )

    async def go():  # type: ignore[no-untyped-def]
        engine = load_version_engine(version)
        try:
            return await evaluate(engine, task_set, store=store, model_id=version.id, config=cfg)
        finally:
            await engine.close()

    res = asyncio.run(go())
    with_memory = f" with memory k={memory_k}" if memory_k else ""
    line = f"{version.name}: {task_set.name}/{split}{with_memory} pass@1 {res.pass_at_1:.1%} on {res.n_tasks} tasks"
    if res.pass_at_k is not None:
        line += f", pass@{k} {res.pass_at_k:.1%}"
    typer.echo(line + f" (recorded on {version.id})")


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the root app."""
    app.command("run", no_args_is_help=True)(run_cmd)
    app.add_typer(
        loops_app, name="loops", help="The loops `strop run` can run: list them, show a loop's config."
    )
    app.command("eval")(eval_cmd)
