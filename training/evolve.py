"""The evolve cycle: collect -> train -> evaluate -> decide, N times, resumable at any point.

Resumption needs no bookkeeping of its own: every artefact of a cycle has an id derived from
(recipe, base model, cycle), and a cycle's phase is read back from those artefacts in the store (collection
run finished? candidate registered? evaluated? decided?). A rerun after a kill therefore continues at the
first missing artefact; the store's own guarantees (idempotent episode writes, claims released by failed
jobs, examples consumed only when a job finishes) make sure nothing is done or trained twice.
"""

from __future__ import annotations

import asyncio
import json
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console

from strop.agents.evaluation import EvalConfig, evaluate, metric_key
from strop.agents.loops import best_of_n
from strop.agents.loops.base import stable_id
from strop.agents.runner import Runner, load_version_engine, resolve_version, run_summary
from strop.critics.verifier import VerifierCritic
from strop.memory.records import ModelStatus, ModelVersionRecord, RunRecord, RunStatus
from strop.sandbox.tasks.base import Split
from strop.training.jobs import NothingToTrainError, settle_orphan_job, train_sft_candidate
from strop.training.promotion import decide
from strop.training.recipe import Recipe, RecipeError


class CyclePhase(StrEnum):
    COLLECT = "collect"
    TRAIN = "train"
    EVALUATE = "evaluate"
    DECIDE = "decide"
    DONE = "done"
    SKIPPED = "skipped"  # nothing to train on: no training, no promotion


CYCLE_TRANSITIONS: dict[CyclePhase, frozenset[CyclePhase]] = {
    CyclePhase.COLLECT: frozenset({CyclePhase.TRAIN}),
    CyclePhase.TRAIN: frozenset({CyclePhase.EVALUATE, CyclePhase.SKIPPED}),
    CyclePhase.EVALUATE: frozenset({CyclePhase.DECIDE}),
    CyclePhase.DECIDE: frozenset({CyclePhase.DONE}),
    CyclePhase.DONE: frozenset(),
    CyclePhase.SKIPPED: frozenset(),
}
_MAX_TRAIN_ATTEMPTS = 20


class CycleRow(BaseModel):
    """One line of the per-cycle table (cycle 0 is the starting model)."""

    cycle: int
    model: str
    phase: CyclePhase
    heldout_accuracy: float | None = None
    current_accuracy: float | None = None
    decision: str = ""
    examples: int = 0
    train_loss: float | None = None
    minutes: float = 0.0


class Evolution:
    """Runs a recipe against a store; safe to construct and `run` again after a crash."""

    def __init__(self, recipe: Recipe, store: Any, *, progress: bool = True, console: Console | None = None) -> None:
        from strop.agents.models import ModelNotFoundError
        from strop.sandbox.tasks import UnknownTaskSetError, load_task_set

        self.recipe = recipe
        self.store = store
        self.console = console or _console()
        try:
            self.task_set = load_task_set(recipe.tasks.name, **recipe.tasks.options)
        except UnknownTaskSetError as e:
            raise RecipeError(f"recipe field `tasks.name`: {e.args[0]}") from e
        except ValueError as e:
            raise RecipeError(f"recipe field `tasks.options`: {e}") from e
        self.runner = Runner(store, concurrency=recipe.collect.concurrency, progress=progress)
        try:
            self.base = resolve_version(store, recipe.model)
        except ModelNotFoundError as e:
            raise RecipeError(f"recipe field `model`: {e}") from e
        # Same recipe (whatever --cycles, --db or output folder) and same base = same evolution, resumed.
        # Defaults are left out so that a field added to the recipe schema later does not orphan old runs.
        fingerprint = recipe.model_dump_json(exclude={"cycles", "db", "output_dir", "engine"}, exclude_defaults=True)
        self.evolve_id = stable_id("evolve", recipe.name, self.base.id, fingerprint)
        self.metric_prefix = metric_key(self.task_set.name, Split.HELDOUT)
        self.metric = f"{self.metric_prefix}/{recipe.promotion.metric}"
        self.engine: Any = None
        self._serving = asyncio.Lock()

    # ----------------------------------------------------------------------------------------- ids
    def cycle_run_id(self, k: int) -> str:
        return stable_id(self.evolve_id, "cycle", k)

    def collect_run_id(self, k: int) -> str:
        return stable_id(self.evolve_id, "collect", k)

    def candidate_id(self, k: int) -> str:
        return stable_id(self.evolve_id, "model", k)

    def job_id(self, k: int, attempt: int) -> str:
        return stable_id(self.evolve_id, "job", k, attempt)

    # ------------------------------------------------------------------------------------- driver
    async def run(self, cycles: int | None = None) -> list[CycleRow]:
        cycles = cycles or self.recipe.cycles
        try:
            await self._evaluate_version(self.base)
            parent = self.base
            for k in range(1, cycles + 1):
                parent = await self._cycle(k, parent)
        finally:
            if self.engine is not None:
                await self.engine.close()
        rows = self.table(cycles)
        self.write_report(rows)
        return rows

    async def _cycle(self, k: int, default_parent: ModelVersionRecord) -> ModelVersionRecord:
        run = self.store.get_run(self.cycle_run_id(k))
        if run is None:
            run = self.store.create_run(RunRecord(
                id=self.cycle_run_id(k), loop="evolve-cycle", model_ids=[default_parent.id],
                config={"recipe": self.recipe.name, "evolve_id": self.evolve_id, "cycle": k,
                        "parent_id": default_parent.id},
            ))
        parent = self._model(run.config["parent_id"])
        phase = self.phase(k)
        if phase not in (CyclePhase.DONE, CyclePhase.SKIPPED):
            self.console.print(f"[bold]cycle {k}[/]: {phase} (parent {parent.name})")
        handlers = {CyclePhase.COLLECT: self._collect, CyclePhase.TRAIN: self._train,
                    CyclePhase.EVALUATE: self._evaluate, CyclePhase.DECIDE: self._decide}
        while phase in handlers:
            nxt = await handlers[phase](k, parent)
            if nxt not in CYCLE_TRANSITIONS[phase]:
                raise RuntimeError(f"bug: cycle {k} moved {phase} -> {nxt}, which the evolve cycle does not allow")
            phase = nxt
        if self.store.get_run(run.id).status != RunStatus.FINISHED:
            self.store.finish_run(run.id, RunStatus.FINISHED)
        candidate = self.store.get_model(self.candidate_id(k))
        return candidate if candidate is not None and candidate.status == ModelStatus.PROMOTED else parent

    def phase(self, k: int) -> CyclePhase:
        """Where cycle k stands, read from the store."""
        run = self.store.get_run(self.cycle_run_id(k))
        if run is None:
            return CyclePhase.COLLECT
        collect = self.store.get_run(self.collect_run_id(k))
        if collect is None or collect.status != RunStatus.FINISHED:
            return CyclePhase.COLLECT
        candidate = self.store.get_model(self.candidate_id(k))
        if candidate is None:
            return CyclePhase.SKIPPED if run.status == RunStatus.FINISHED else CyclePhase.TRAIN
        if self.metric not in candidate.metrics:
            return CyclePhase.EVALUATE
        if candidate.status == ModelStatus.CANDIDATE:
            return CyclePhase.DECIDE
        return CyclePhase.DONE

    # -------------------------------------------------------------------------------------- phases
    async def _collect(self, k: int, parent: ModelVersionRecord) -> CyclePhase:
        per = self.recipe.tasks.train_per_cycle
        tasks = self.task_set.tasks(Split.TRAIN, per * k)[per * (k - 1):]  # fresh problems every cycle
        c = self.recipe.collect
        loop_cfg = best_of_n.BestOfNConfig(
            n=c.n, temperature=c.temperature, top_p=c.top_p, max_tokens=c.max_tokens,
            system_prompt=c.system_prompt, dedupe_examples=c.dedupe_examples, rationalize=c.rationalize,
            seed=None if c.seed is None else c.seed + k,  # a fresh stream every cycle
        )
        graph = best_of_n.build_graph(_ServedBy(self, parent), VerifierCritic(self.task_set), loop_cfg)
        run = RunRecord(id=self.collect_run_id(k), loop=best_of_n.LOOP_NAME, model_ids=[parent.id],
                        config={"evolve_id": self.evolve_id, "cycle": k, "loop": loop_cfg.model_dump(mode="json")})
        res = await self.runner.run(graph, tasks, run, label=f"cycle {k} collect")
        self.console.print(
            f"cycle {k}: collected {res.samples} answers on {res.episodes} tasks, {res.correct} correct "
            f"({res.accuracy:.1%}), {res.examples} SFT examples, {res.tokens / max(res.seconds, 1e-6):.0f} tok/s"
        )
        return CyclePhase.TRAIN

    async def _train(self, k: int, parent: ModelVersionRecord) -> CyclePhase:
        collected = await run_summary(self.store, self.collect_run_id(k))
        if collected.examples == 0:
            self.console.print(
                f"[yellow]cycle {k}: no correct answers among {collected.samples} samples: nothing to train; "
                "skipping training and promotion[/] (raise collect.n or collect.temperature, or start from a "
                "stronger model)"
            )
            return CyclePhase.SKIPPED
        attempt = 0
        while (job := self.store.get_job(self.job_id(k, attempt))) is not None:
            if settle_orphan_job(self.store, job.id, self.candidate_id(k)):
                return CyclePhase.EVALUATE
            attempt += 1
            if attempt >= _MAX_TRAIN_ATTEMPTS:
                raise RuntimeError(f"cycle {k}: training failed {attempt} times; see `strop db stats` for the errors")
        try:
            res = train_sft_candidate(
                self.store, parent, output_dir=self.recipe.run_dir() / "models" / f"{self.evolve_id[:8]}-c{k}",
                settings=self.recipe.train, name=self._candidate_name(k), job_id=self.job_id(k, attempt),
                model_id=self.candidate_id(k),
            )
        except NothingToTrainError as e:
            self.console.print(f"[yellow]cycle {k}: {e}; skipping training and promotion[/]")
            return CyclePhase.SKIPPED
        self.console.print(
            f"cycle {k}: trained {res.candidate.name} on {res.examples} examples, loss {res.train_loss:.3f}, "
            f"{res.seconds / 60:.1f} min"
        )
        return CyclePhase.EVALUATE

    async def _evaluate(self, k: int, parent: ModelVersionRecord) -> CyclePhase:
        await self._evaluate_version(self._model(self.candidate_id(k)))
        return CyclePhase.DECIDE

    async def _decide(self, k: int, parent: ModelVersionRecord) -> CyclePhase:
        # Re-measured (from the store, no generation when already done) so both sides use this recipe's
        # evaluation settings even if another recipe evaluated the parent differently since.
        await self._evaluate_version(parent)
        candidate = self._model(self.candidate_id(k))
        decision = decide(candidate, self._model(parent.id), self.metric_prefix, self.recipe.promotion)
        self.store.update_model_metrics(candidate.id, {"decision": decision.reason})
        status = ModelStatus.PROMOTED if decision.promote else ModelStatus.REJECTED
        self.store.set_model_status(candidate.id, status)
        self.console.print(f"cycle {k}: {status} {candidate.name}: {decision.reason}")
        if decision.promote:
            await self._serve(candidate)  # engines serve the promoted version from here on
        return CyclePhase.DONE

    # ------------------------------------------------------------------------------------- helpers
    def _model(self, model_id: str) -> ModelVersionRecord:
        version = self.store.get_model(model_id)
        if version is None:
            raise RuntimeError(f"model version {model_id} vanished from the registry; see `strop models list`")
        return version

    def _candidate_name(self, k: int) -> str:
        name = f"{self.recipe.name}-c{k}"
        other = self.store.get_model(name)
        return name if other is None or other.id == self.candidate_id(k) else f"{name}-{self.evolve_id[:6]}"

    async def _serve(self, version: ModelVersionRecord) -> None:
        """Make the engine serve `version`: load it the first time, reload weights when the version changes."""
        async with self._serving:
            if self.engine is None:
                self.engine = load_version_engine(version, backend=self.recipe.engine.backend,
                                                  max_batch_size=self.recipe.engine.max_batch_size)
            elif self.engine.model_version != version.id:
                await self.engine.reload(version.path, adapter_path=version.adapter_path, model_version=version.id)

    async def _evaluate_version(self, version: ModelVersionRecord) -> None:
        """Held-out evaluation with this recipe's settings; episodes already in the store are not redone."""
        cfg = EvalConfig(split=Split.HELDOUT, n_tasks=self.recipe.tasks.heldout, k=self.recipe.eval.k,
                         max_tokens=self.recipe.collect.max_tokens, system_prompt=self.recipe.collect.system_prompt)
        res = await evaluate(_ServedBy(self, version), self.task_set, store=self.store, model_id=version.id,
                             config=cfg, runner=self.runner)
        if res.episodes_run or "eval_seconds" not in version.metrics:
            self.store.update_model_metrics(version.id, {"eval_seconds": res.seconds})
        how = f"{res.seconds / 60:.1f} min" if res.episodes_run else "from the store"
        self.console.print(f"{version.name}: held-out pass@1 {res.pass_at_1:.1%} on {res.n_tasks} tasks ({how})")

    # -------------------------------------------------------------------------------------- report
    def table(self, cycles: int) -> list[CycleRow]:
        base = self._model(self.base.id)
        acc = base.metrics.get(self.metric)
        rows = [CycleRow(cycle=0, model=base.name, phase=CyclePhase.DONE, heldout_accuracy=acc, current_accuracy=acc,
                         decision="start", minutes=float(base.metrics.get("eval_seconds", 0.0)) / 60)]
        current = acc
        for k in range(1, cycles + 1):
            collect = self.store.get_run(self.collect_run_id(k))
            phase = self.phase(k)
            examples, seconds = 0, 0.0
            if collect is not None:
                examples = sum(int(e.outcome.get("examples", 0))
                               for e in self.store.list_episodes(collect.id, children=False))
                if collect.finished_at is not None:
                    seconds += (collect.finished_at - collect.started_at).total_seconds()
            cand = self.store.get_model(self.candidate_id(k))
            row = CycleRow(cycle=k, model=cand.name if cand else "-", phase=phase, examples=examples)
            if cand is not None:
                row.heldout_accuracy = cand.metrics.get(self.metric)
                row.train_loss = cand.metrics.get("train_loss")
                seconds += float(cand.metrics.get("train_seconds", 0.0)) + float(cand.metrics.get("eval_seconds", 0.0))
                row.decision = str(cand.status)
                if cand.status == ModelStatus.PROMOTED:
                    current = row.heldout_accuracy
            elif phase == CyclePhase.SKIPPED:
                row.decision = "skipped (nothing to train)"
            row.current_accuracy, row.minutes = current, seconds / 60
            rows.append(row)
        return rows

    def write_report(self, rows: list[CycleRow]) -> Path:
        """Print the table and write table.md, table.json and accuracy.png into the run folder."""
        from rich.table import Table

        out = self.recipe.run_dir()
        out.mkdir(parents=True, exist_ok=True)
        header = ["cycle", "model", "held-out acc", "current acc", "decision", "examples", "train loss", "minutes"]
        cells = [[str(r.cycle), r.model, _pct(r.heldout_accuracy), _pct(r.current_accuracy), r.decision,
                  str(r.examples), "-" if r.train_loss is None else f"{r.train_loss:.3f}", f"{r.minutes:.1f}"]
                 for r in rows]
        table = Table(title=f"{self.recipe.name}: held-out {self.recipe.promotion.metric} on "
                            f"{self.recipe.tasks.heldout} {self.task_set.name} tasks")
        for h in header:
            table.add_column(h)
        for c in cells:
            table.add_row(*c)
        self.console.print(table)
        md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(c) + " |" for c in cells]
        (out / "table.md").write_text("\n".join(md) + "\n")
        (out / "table.json").write_text(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        _plot(rows, out / "accuracy.png", title=self.recipe.name)
        self.console.print(f"report: {out / 'table.md'}, {out / 'accuracy.png'}")
        return out


def _console() -> Console:
    """Long lines unwrapped (greppable), and a log file gets 120 columns instead of 80, so the table fits."""
    console = Console(soft_wrap=True)
    return console if console.is_terminal else Console(soft_wrap=True, width=120)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _plot(rows: list[CycleRow], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    pts = [(r.cycle, 100 * r.heldout_accuracy) for r in rows if r.heldout_accuracy is not None]
    cur = [(r.cycle, 100 * r.current_accuracy) for r in rows if r.current_accuracy is not None]
    if pts:
        ax.plot(*zip(*pts, strict=True), "o", label="candidate")
    if cur:
        ax.plot(*zip(*cur, strict=True), "-", label="current (promoted)")
    ax.set_xlabel("cycle")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_xticks([r.cycle for r in rows])
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class _ServedBy:
    """The evolution's one engine, switched to `version` on first use: a phase whose episodes are all in the
    store already never loads weights."""

    def __init__(self, evolution: Evolution, version: ModelVersionRecord) -> None:
        self.evolution, self.version = evolution, version

    @property
    def model_version(self) -> str:
        return self.version.id

    async def generate(self, requests: list[Any]) -> list[list[Any]]:
        await self.evolution._serve(self.version)
        return await self.evolution.engine.generate(requests)

    async def close(self) -> None:
        return None
