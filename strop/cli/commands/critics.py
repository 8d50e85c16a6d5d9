"""`strop eval-critic`: the critic benchmark (ProcessBench-style error identification, RealCritic-style
correction) on labelled held-out solutions or on a ProcessBench file. `strop eval-self-correct`: how a model
revises its own answers (turn-1 and last-turn accuracy, wrong-to-right and right-to-wrong) under each kind of
feedback. Heavy imports stay inside the commands."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from strop.cli import common
from strop.cli.common import DbOpt, OptionOpt, fail, parse_options


def eval_critic_cmd(
    critic: Annotated[
        str, typer.Option("--critic", "-c", help="The critic model: registry name/id, cache name or folder.")
    ],
    tasks: Annotated[
        str,
        typer.Option(
            "--tasks",
            "-t",
            help="A task set name (labelled solutions are built from its held-out tasks: references, and "
            "references corrupted in known ways), or a ProcessBench file (.json list or .jsonl of {id, generator, "
            "problem, steps, final_answer_correct, label}).",
        ),
    ] = "arithmetic",
    option: OptionOpt = None,
    n_items: Annotated[
        int | None,
        typer.Option(
            help="Labelled solutions to build from a task set (half right, half with one wrong step; default "
            "100), or to sample from a ProcessBench file (seeded, keeping its mix of erroneous and correct "
            "solutions; default the whole file).",
            min=1,
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the labelled set or sample; the same seed gives the same items.")
    ] = 0,
    kinds: Annotated[
        str, typer.Option(help="Corruptions, comma-separated: calculation, operand, copy, drop.")
    ] = "calculation,operand,copy,drop",
    from_run: Annotated[
        list[str] | None,
        typer.Option(
            help="Also label the policy's own answers from this stored best-of-N run (held-out tasks, steps checked "
            "one by one); repeatable."
        ),
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens per critique (greedy).")] = 160,
    shots: Annotated[
        int, typer.Option(help="Worked critiques shown first, as earlier chat turns (0-3).")
    ] = 1,
    prm: Annotated[
        bool,
        typer.Option(
            "--prm",
            help="Score it as a process reward model: one Yes/No per step prefix, P(correct) read from the "
            "reply's log-prob (the step scorer that MCTS and reranking use); adds step accuracy, records under "
            "'<set>/prm/...'.",
        ),
    ] = False,
    threshold: Annotated[
        float, typer.Option(help="With --prm: P(correct) under which a step counts as wrong.")
    ] = 0.5,
    db: DbOpt = None,
) -> None:
    """Score a step-wise critic: does it find the first wrong step (F1), and does its correction come out right?

    Every critique is stored (an ordinary run: interrupted, it resumes), and the scores are recorded on the
    critic's model version under '<set>/critic/...'.
    """
    from strop.agents.critic_eval import CriticEvalConfig, evaluate_critic, labelled_set
    from strop.agents.evaluation import task_set_label
    from strop.agents.runner import load_version_engine
    from strop.critics.benchmark import (
        LabelledSetError,
        LabelledSolutionSet,
        labels_from_store,
        load_processbench,
        sample_labelled,
    )
    from strop.memory import Store

    store = Store(db)
    version = common.version(store, critic, "--critic")
    path = Path(tasks).expanduser()
    if not 0.0 < threshold < 1.0:
        fail(f"--threshold {threshold}: give a probability strictly between 0 and 1")
    cfg = CriticEvalConfig(
        n_items=n_items or 100,
        seed=seed,
        max_tokens=max_tokens,
        shots=shots,
        kind="prm" if prm else "generative",
        threshold=threshold,
        kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()),
    )
    try:
        if path.suffix in (".json", ".jsonl") or path.is_file():
            if not path.is_file():
                fail(
                    f"--tasks {tasks}: no such file; give a ProcessBench .json/.jsonl file or a task set name"
                )
            every = load_processbench(path)
            chosen = sample_labelled(every, n_items, seed) if n_items else every
            items = LabelledSolutionSet(chosen, name=f"processbench:{path.stem}")
            label = items.name
        else:
            task_set = common.task_set(tasks, option)
            label = task_set_label(tasks, parse_options(option or []))
            extra = labels_from_store(store, from_run, task_set) if from_run else []
            items = labelled_set(task_set, cfg, label, extra=extra)
    except LabelledSetError as e:
        fail(str(e))

    async def go() -> Any:
        engine = load_version_engine(version)
        try:
            return await evaluate_critic(
                engine, items, store=store, model_id=version.id, label=label, config=cfg
            )
        finally:
            await engine.close()

    res = asyncio.run(go())
    _report(version.name, label, res)


def _scored(res: Any) -> str:
    """'6 of 7 labelled solutions scored: 3 erroneous, 3 correct' (the counts the accuracies are out of)."""
    s = res.scores
    of = f"{res.n_scored} of {res.n_items}" if res.n_scored != res.n_items else str(res.n_items)
    return f"{of} labelled solutions scored: {s.get('n_erroneous')} erroneous, {s.get('n_correct')} correct"


def _report(name: str, label: str, res: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from strop.agents.critic_eval import critic_metric_prefix

    s = res.scores

    def pct(key: str) -> str:
        v = s.get(key)
        return "-" if v is None else f"{100 * v:.1f}%"

    if res.kind == "prm":
        table = Table(title=f"{name} as a process reward model on {label} ({_scored(res)})")
        for col in (
            "F1",
            "first wrong step found",
            "right accepted",
            "step accuracy",
            "wrong steps flagged",
            "step AUC",
            "unparsed",
        ):
            table.add_column(col)
        auc = s.get("step_auc")
        table.add_row(
            pct("f1"),
            f"{pct('acc_erroneous')} of {s.get('n_erroneous')}",
            f"{pct('acc_correct')} of {s.get('n_correct')}",
            f"{pct('step_acc')} of {s.get('n_steps')}",
            pct("step_acc_wrong"),
            "-" if auc is None else f"{auc:.3f}",
            str(s.get("unparsed")),
        )
    else:
        table = Table(title=f"{name} as a critic on {label} ({_scored(res)})")
        for col in (
            "F1",
            "first wrong step found",
            "right accepted",
            "correction",
            "wrong fixed",
            "right kept",
            "unparsed",
        ):
            table.add_column(col)
        table.add_row(
            pct("f1"),
            f"{pct('acc_erroneous')} of {s.get('n_erroneous')}",
            f"{pct('acc_correct')} of {s.get('n_correct')}",
            pct("correction_acc"),
            pct("fixed"),
            pct("kept"),
            str(s.get("unparsed")),
        )
    Console().print(table)
    if res.skipped:  # items the critic could not be asked about: not scored (F1 is on the rest), each reason
        from strop.agents.episode import failure_text

        typer.echo(f"{res.skipped_line()} (not scored)")
        for kind, reason in res.skipped_reasons.items():
            typer.echo(f"  {failure_text(kind)}, e.g.: {reason}")
    typer.echo(
        f"recorded on {res.model_id} under {critic_metric_prefix(label, res.kind)}/ (run {res.run_id})"
    )


def eval_self_correct_cmd(
    model: Annotated[
        str, typer.Option("--model", "-m", help="The policy: registry name/id, cache name or folder.")
    ],
    tasks: Annotated[
        str, typer.Option("--tasks", "-t", help="Task set name (its held-out tasks are used).")
    ] = "arithmetic",
    option: OptionOpt = None,
    feedback: Annotated[
        str,
        typer.Option(
            help="Feedback kinds between turns, comma-separated: intrinsic (the instruction alone), critic (a step-wise "
            "critique by --critic), oracle (the verifier's right/wrong, an upper bound), execution (code tasks: the "
            "tests' output from the jail)."
        ),
    ] = "intrinsic",
    critic: Annotated[
        str | None,
        typer.Option(
            "--critic", "-c", help="Critic model for critic feedback (default: the policy critiques itself)."
        ),
    ] = None,
    n_tasks: Annotated[int, typer.Option(help="Held-out tasks to use (the first n).")] = 100,
    turns: Annotated[int, typer.Option(help="Turns per conversation (2-8).")] = 2,
    max_tokens: Annotated[int, typer.Option(help="Most new tokens per turn (greedy).")] = 64,
    system: Annotated[str | None, typer.Option(help="System message before each task.")] = None,
    db: DbOpt = None,
) -> None:
    """Measure self-correction: greedy conversations of K turns on held-out tasks, one run per feedback kind.

    Reports accuracy at turn 1 and at the last turn, and the shares of tasks that went wrong-to-right and
    right-to-wrong. Conversations are stored (interrupted, it resumes); the figures are recorded on the model
    version under '<set>/heldout/self_correct/<feedback>/...'.
    """
    from strop.agents.evaluation import task_set_label
    from strop.agents.loops.registry import LoopResources
    from strop.agents.loops.self_correct import Feedback, critic_for
    from strop.agents.runner import load_version_engine
    from strop.agents.self_correct_eval import SelfCorrectEvalConfig, evaluate_self_correction
    from strop.memory import Store

    kinds = [k.strip() for k in feedback.split(",") if k.strip()]
    bad = [k for k in kinds if k not in {str(f) for f in Feedback}]
    if bad or not kinds:
        fail(
            f"--feedback {feedback}: unknown kind {', '.join(bad) or '(none)'}; use intrinsic, critic, oracle, "
            "execution (comma-separated)"
        )
    if critic is not None and "critic" not in kinds:
        fail("--critic is only used with critic feedback: add --feedback critic")
    store = Store(db)
    version = common.version(store, model)
    critic_version = common.version(store, critic, "--critic") if critic is not None else None
    task_set = common.task_set(tasks, option)
    label = task_set_label(tasks, parse_options(option or []))
    try:
        cfg = SelfCorrectEvalConfig(
            n_tasks=n_tasks, feedback=kinds, turns=turns, max_tokens=max_tokens, system_prompt=system
        )
    except ValueError as e:
        fail(str(e).splitlines()[-1])

    async def go() -> Any:
        engine = load_version_engine(version)
        critic_engine = load_version_engine(critic_version) if critic_version is not None else engine
        try:
            judge = None
            if "critic" in kinds:
                judge = critic_for(
                    LoopResources(engines={"critic": critic_engine}, task_set=task_set),
                    cfg.loop_config(Feedback.CRITIC),
                )
            return await evaluate_self_correction(
                engine, task_set, store=store, model_id=version.id, label=label, config=cfg, critic=judge
            )
        finally:
            await engine.close()
            if critic_engine is not engine:
                await critic_engine.close()

    try:
        res = asyncio.run(go())
    except ValueError as e:  # e.g. execution feedback on a task set that is not code
        fail(str(e))
    _report_self_correct(version.name, label, res, turns)


def _report_self_correct(name: str, label: str, res: Any, turns: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{name} revising its answers on {label} ({res.n_tasks} held-out tasks, {turns} turns)"
    )
    for col in ("feedback", "turn 1", f"turn {turns}", "wrong->right", "right->wrong", "net"):
        table.add_column(col)
    for fb, s in res.scores.items():
        table.add_row(
            fb,
            *(
                f"{100 * s[k]:+.1f}%" if k == "net" else f"{100 * s[k]:.1f}%"
                for k in ("acc_t1", "acc_last", "delta_i2c", "delta_c2i", "net")
            ),
        )
    Console().print(table)
    typer.echo(
        f"recorded on {res.model_id} under {label}/heldout/self_correct/ (runs {', '.join(res.run_ids)})"
    )


def register(app: typer.Typer) -> None:
    app.command("eval-critic", no_args_is_help=True)(eval_critic_cmd)
    app.command("eval-self-correct", no_args_is_help=True)(eval_self_correct_cmd)
