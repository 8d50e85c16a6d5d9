"""`strop models promote|reject|rollback`, and the registry (lineage and metrics) in `strop models list`.

Mounted on the models app by `register(models.app)`; typer and stdlib only at module level.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from strop.cli.common import DbOpt, fail

ModelArg = Annotated[str, typer.Argument(help="Model version name or id (see `strop models list`).")]


def promote_cmd(
    model: ModelArg,
    margin: Annotated[float, typer.Option(help="Held-out accuracy gain over the parent required.")] = 0.02,
    metric: Annotated[str, typer.Option(help="Metric key prefix compared, e.g. arithmetic/heldout.")] = "",
    force: Annotated[bool, typer.Option(help="Promote without the held-out gate (manual override).")] = False,
    db: DbOpt = None,
) -> None:
    """Promote a candidate if it beats its parent on held-out tasks by the margin (or with --force)."""
    from strop.memory import InvalidTransitionError, Store
    from strop.training.promotion import PromotionError, PromotionSettings, decide, promote

    store = Store(db)
    version = store.get_model(model)
    if version is None:
        fail(f"no model version {model!r} in the registry; see `strop models list`")
    try:
        if not force:
            if version.parent_id is None:
                fail(f"{version.name} has no parent to beat; use --force to promote it anyway")
            parent = store.get_model(version.parent_id)
            prefixes = [metric] if metric else _heldout_prefixes(version.metrics)
            if not prefixes:
                fail(
                    f"{version.name} has no held-out evaluation; run `strop eval --model {version.name}` first"
                )
            if len(prefixes) > 1:  # the gate must compare one named set, not whichever was evaluated last
                fail(
                    f"{version.name} was evaluated on several task sets; choose the gate with --metric "
                    f"(one of {', '.join(prefixes)})"
                )
            prefix = prefixes[0]
            decision = decide(version, parent, prefix, PromotionSettings(margin=margin))
            if not decision.promote:
                fail(
                    f"not promoted: {decision.reason}. Reject it with `strop models reject {version.name}`, "
                    "or override with --force"
                )
        promoted = promote(store, version.id)
    except (PromotionError, InvalidTransitionError) as e:
        fail(str(e))
    typer.echo(f"promoted {promoted.name}: it is now the current version of {promoted.lineage}")


def reject_cmd(model: ModelArg, db: DbOpt = None) -> None:
    """Reject a candidate (kept for inspection) or demote a promoted version."""
    from strop.memory import InvalidTransitionError, Store
    from strop.training.promotion import PromotionError, reject

    try:
        v = reject(Store(db), model)
    except (PromotionError, InvalidTransitionError) as e:
        fail(str(e))
    typer.echo(f"rejected {v.name}")


def rollback_cmd(
    lineage: Annotated[str, typer.Argument(help="Lineage (root model name), e.g. smollm2-135m.")],
    db: DbOpt = None,
) -> None:
    """Reject the current promoted version of a lineage; the previous one becomes current."""
    from strop.memory import Store
    from strop.training.promotion import PromotionError, rollback

    try:
        demoted, current = rollback(Store(db), lineage)
    except PromotionError as e:
        fail(str(e))
    typer.echo(
        f"rolled back {demoted.name}; current version of {lineage}: {current.name if current else 'none'}"
    )


# A held-out accuracy key as the evaluators write it: <task-set label>/heldout[/memory<k>]/pass@<k>, and the
# agent evaluator's <label>/heldout/agent/accuracy. The label may itself hold '/' (a JSONL path option).
HELDOUT_KEY = re.compile(
    r"^(?P<set>.+)/heldout(?:/memory(?P<memory>\d+))?/(?P<metric>pass@\d+|agent/accuracy)$"
)


def heldout_accuracies(metrics: dict[str, Any]) -> list[tuple[str, str, float, Any]]:
    """(task set, metric name, value, number of tasks) for each held-out accuracy on a version, by set.

    Each evaluation records under its own task-set key, so nothing here depends on which ran last; the old
    unlabelled `heldout_accuracy` is shown only when no labelled key is there, and says its set is unknown.
    """
    out = []
    for key, value in metrics.items():
        m = HELDOUT_KEY.match(key)
        if m is None or not isinstance(value, int | float):
            continue
        metric = m["metric"].replace("agent/accuracy", "agent accuracy")
        n = metrics.get(f"{key.rsplit('/', 1)[0]}/n_tasks")
        out.append(
            (m["set"], metric + (f" with memory k={m['memory']}" if m["memory"] else ""), float(value), n)
        )
    legacy = metrics.get("heldout_accuracy")
    if not out and isinstance(legacy, int | float):
        out.append(("task set not recorded", "accuracy", float(legacy), None))
    return sorted(out, key=lambda r: (r[0], "memory" in r[1], r[1] != "pass@1", r[1]))


def format_accuracies(metrics: dict[str, Any]) -> str:
    """One line per held-out accuracy: 'arithmetic pass@1 42.0% (n=100)'; '-' when the version has none."""
    rows = heldout_accuracies(metrics)
    return (
        "\n".join(
            f"{task_set} {metric} {value:.1%}" + (f" (n={n})" if isinstance(n, int) else "")
            for task_set, metric, value, n in rows
        )
        or "-"
    )


def _heldout_prefixes(metrics: dict[str, Any]) -> list[str]:
    """The gate prefixes a version was evaluated under (greedy pass@1, without memory), e.g. 'arithmetic/heldout'."""
    return sorted(
        key.removesuffix("/pass@1")
        for key in metrics
        if (m := HELDOUT_KEY.match(key)) and m["metric"] == "pass@1" and m["memory"] is None
    )


def render_registry(versions: list[Any], current_ids: set[str]) -> Any:
    """A table of versions ordered as lineage trees: each child indented under its parent."""
    from rich.markup import escape
    from rich.table import Table

    by_parent: dict[str | None, list[Any]] = {}
    ids = {v.id for v in versions}
    for v in sorted(versions, key=lambda v: v.created_at):
        by_parent.setdefault(v.parent_id if v.parent_id in ids else None, []).append(v)
    table = Table(title="strop model registry (lineage)")
    for col in (
        "version",
        "id",
        "status",
        "held-out accuracy (task set, metric)",
        "train loss",
        "examples",
        "job",
    ):
        table.add_column(col, overflow="fold")

    def walk(parent: str | None, depth: int) -> None:
        for v in by_parent.get(parent, []):
            m = v.metrics
            loss = m.get("train_loss")
            mark = " *" if v.id in current_ids else ""
            table.add_row(
                "  " * depth + ("└ " if depth else "") + escape(v.name) + mark,
                v.id[:8],
                str(v.status),
                escape(format_accuracies(m)),  # task-set labels hold brackets: arithmetic[digits=2]
                f"{loss:.3f}" if isinstance(loss, int | float) else "-",
                str(m.get("examples", "-")),
                (v.job_id or "-")[:8],
            )
            walk(v.id, depth + 1)

    walk(None, 0)
    return table


def register(models_app: typer.Typer) -> None:
    """Add promote/reject/rollback, and extend `list` with the registry view."""
    models_app.command("promote")(promote_cmd)
    models_app.command("reject")(reject_cmd)
    models_app.command("rollback")(rollback_cmd)
    cache_list = next((c for c in models_app.registered_commands if c.name == "list"), None)
    if cache_list is not None:
        models_app.registered_commands.remove(cache_list)

    @models_app.command("list")
    def list_cmd(
        db: DbOpt = None,
        lineage: Annotated[str | None, typer.Option(help="Only this lineage.")] = None,
        cache: Annotated[bool, typer.Option(help="Also show the local model cache.")] = True,
    ) -> None:
        """The model cache, and the registry: every version with its lineage, status and metrics (* = current)."""
        from rich.console import Console

        from strop.memory import Store, StoreConnectionError

        if cache and cache_list is not None and cache_list.callback is not None:
            cache_list.callback()
        try:
            store = Store(db, create=False)  # listing must not leave an empty strop.db behind
        except StoreConnectionError as e:
            typer.echo(f"no registry yet: {e}")
            return
        versions = store.list_models(lineage=lineage)
        if not versions:
            typer.echo(
                "the registry is empty: versions appear after `strop eval`, `strop train sft` or `strop evolve`"
            )
            return
        current = {c.id for ln in {v.lineage for v in versions} if (c := store.current_model(ln)) is not None}
        Console(width=160).print(render_registry(versions, current))
