"""The evolve cycle: each cycle runs the recipe's stages in order; each stage collects with its loop, trains
one role, evaluates the candidate and decides its promotion. Resumable at any point.

Resumption needs no bookkeeping of its own: every artefact of a stage has an id derived from
(recipe, base models, cycle, stage), and a stage's phase is read back from those artefacts in the store
(collection run finished? candidate registered? evaluated? decided?). A rerun after a kill therefore
continues at the first missing artefact; the store's own guarantees (idempotent episode writes, claims
released by failed jobs, examples consumed only when a job finishes) make sure nothing is done or trained
twice. The role versions a stage starts from are recorded on its run, so a resumed stage uses the same
parents even when a later stage has promoted something since.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from strop.agents.evaluation import task_set_label
from strop.agents.loops.base import stable_id
from strop.agents.loops.registry import LoopResources, get_loop
from strop.agents.runner import Runner, resolve_version
from strop.memory.records import ModelStatus, ModelVersionRecord, RunRecord, RunStatus
from strop.sandbox.tasks.base import Split
from strop.training import evolve_table
from strop.training.evolve_eval import StageEvaluation
from strop.training.evolve_phases import STAGE_TRANSITIONS, StagePhase
from strop.training.evolve_serving import EngineHost, Served
from strop.training.evolve_table import StageRow
from strop.training.evolve_train import StageTraining
from strop.training.recipe import Recipe, RecipeError, Stage
from strop.training.trainers import get_trainer

__all__ = [
    "STAGE_TRANSITIONS",
    "Evolution",
    "StagePhase",
    "StageRow",
    "candidate_id",
    "collect_run_id",
    "evolve_id",
]


def evolve_id(recipe: Recipe, bases: dict[str, ModelVersionRecord]) -> str:
    """The id of a recipe's evolution from these base versions (one per weights role).

    Same recipe (whatever --cycles, --db or output folder) and same bases = same evolution, resumed. Defaults
    are left out so that a field added to the recipe schema later does not orphan old runs.
    """
    fingerprint = recipe.model_dump_json(
        exclude={"cycles", "db", "output_dir", "engine"}, exclude_defaults=True
    )
    return stable_id("evolve", recipe.name, *sorted(f"{r}={v.id}" for r, v in bases.items()), fingerprint)


def collect_run_id(evolve: str, cycle: int, stage: str) -> str:
    """The run a stage's collection (or an on-line trainer's rollouts) is stored under."""
    return stable_id(evolve, "collect", cycle, stage)


def candidate_id(evolve: str, cycle: int, stage: str) -> str:
    """The model version a stage's training registers."""
    return stable_id(evolve, "model", cycle, stage)


class Evolution(StageTraining, StageEvaluation):
    """Runs a recipe against a store; safe to construct and `run` again after a crash."""

    def __init__(
        self, recipe: Recipe, store: Any, *, progress: bool = True, console: Console | None = None
    ) -> None:
        from strop.agents.models import ModelNotFoundError
        from strop.sandbox.tasks import UnknownTaskSetError, load_task_set

        self.recipe = recipe
        self.store = store
        self.progress = progress
        self.console = console or evolve_table.console()
        self.task_sets = []
        for i, stage in enumerate(recipe.stages):
            try:
                self.task_sets.append(load_task_set(stage.tasks.name, **stage.tasks.options))
            except UnknownTaskSetError as e:
                raise RecipeError(f"recipe field `stages[{i}].tasks.name`: {e.args[0]}") from e
            except (ValueError, TypeError) as e:
                raise RecipeError(f"recipe field `stages[{i}].tasks.options`: {e}") from e
        # Roles that own weights (not `critic = "policy"` aliases) start from a registered version each.
        self.bases: dict[str, ModelVersionRecord] = {}
        for role, model in recipe.roles.items():
            if model in recipe.roles:
                continue
            try:
                self.bases[role] = resolve_version(store, model)
            except ModelNotFoundError as e:
                raise RecipeError(f"recipe field `roles.{role}`: {e}") from e
        self.evolve_id = evolve_id(recipe, self.bases)
        self.host = EngineHost(recipe.engine.backend, recipe.engine.max_batch_size)
        # (version, eval settings, gate key) measured by this process: a base judged alike by several stages
        # is evaluated (and printed) once
        self._evaluated: set[tuple[str, str, str]] = set()

    # ----------------------------------------------------------------------------------------- ids
    def stage_run_id(self, k: int, s: int) -> str:
        return stable_id(self.evolve_id, "stage", k, self.recipe.stages[s].name)

    def collect_run_id(self, k: int, s: int = 0) -> str:
        return collect_run_id(self.evolve_id, k, self.recipe.stages[s].name)

    def candidate_id(self, k: int, s: int = 0) -> str:
        return candidate_id(self.evolve_id, k, self.recipe.stages[s].name)

    def job_id(self, k: int, s: int, attempt: int) -> str:
        return stable_id(self.evolve_id, "job", k, self.recipe.stages[s].name, attempt)

    def weights(self, role: str) -> str:
        return self.recipe.weights_of(role)

    def label(self, s: int) -> str:
        t = self.recipe.stages[s].tasks
        return task_set_label(t.name, t.options)

    @property
    def engines(self) -> dict[str, Any]:
        """Weights role -> the engine serving it (loaded on first use)."""
        return self.host.engines

    async def _serve(self, weights: str, version: ModelVersionRecord) -> Any:
        return await self.host.serve(weights, version)

    # ------------------------------------------------------------------------------------- driver
    async def run(self, cycles: int | None = None) -> list[StageRow]:
        cycles = cycles or self.recipe.cycles
        try:
            versions = dict(self.bases)
            for s, stage in enumerate(self.recipe.stages):  # cycle 0: where each trained role starts
                if stage.train is not None:
                    fresh = (
                        self.store.get_run(self.stage_run_id(1, s)) is None
                    )  # a resumed run tracked it already
                    await self._evaluate_version(self.bases[self.weights(stage.train.role)], s)
                    if fresh:
                        self._track(0, s, self._model(self.bases[self.weights(stage.train.role)].id))
            for k in range(1, cycles + 1):
                for s in range(len(self.recipe.stages)):
                    versions = await self._stage(k, s, versions)
        finally:
            await self.host.close()
        rows = self.table(cycles)
        self.write_report(rows)
        return rows

    def table(self, cycles: int) -> list[StageRow]:
        return evolve_table.table(self, cycles)

    def write_report(self, rows: list[StageRow]) -> Path:
        return evolve_table.write_report(self, rows)

    async def _stage(
        self, k: int, s: int, versions: dict[str, ModelVersionRecord]
    ) -> dict[str, ModelVersionRecord]:
        stage = self.recipe.stages[s]
        run = self.store.get_run(self.stage_run_id(k, s))
        if run is None:
            run = self.store.create_run(
                RunRecord(
                    id=self.stage_run_id(k, s),
                    loop="evolve-stage",
                    model_ids=sorted(v.id for v in versions.values()),
                    config={
                        "recipe": self.recipe.name,
                        "evolve_id": self.evolve_id,
                        "cycle": k,
                        "stage": stage.name,
                        "versions": {r: v.id for r, v in versions.items()},
                    },
                )
            )
        versions = {r: self._model(i) for r, i in run.config["versions"].items()}
        phase = self.phase(k, s)
        if phase not in (StagePhase.DONE, StagePhase.SKIPPED):
            trained = (
                f", training {stage.train.role} from {versions[self.weights(stage.train.role)].name}"
                if stage.train
                else ""
            )
            self.console.print(f"[bold]cycle {k} {escape(stage.name)}[/]: {phase}{escape(trained)}")
        handlers = {
            StagePhase.COLLECT: self._collect,
            StagePhase.TRAIN: self._train,
            StagePhase.EVALUATE: self._evaluate,
            StagePhase.DECIDE: self._decide,
        }
        while phase in handlers:
            nxt = await handlers[phase](k, s, versions)
            if nxt not in STAGE_TRANSITIONS[phase]:
                raise RuntimeError(
                    f"bug: cycle {k} stage {stage.name} moved {phase} -> {nxt}, which is not allowed"
                )
            phase = nxt
        if self.store.get_run(run.id).status != RunStatus.FINISHED:
            self.store.finish_run(run.id, RunStatus.FINISHED)
        out = dict(versions)
        if stage.train is not None:
            candidate = self.store.get_model(self.candidate_id(k, s))
            if candidate is not None and candidate.status == ModelStatus.PROMOTED:
                out[self.weights(stage.train.role)] = candidate
        return out

    def phase(self, k: int, s: int = 0) -> StagePhase:
        """Where stage s of cycle k stands, read from the store."""
        stage = self.recipe.stages[s]
        run = self.store.get_run(self.stage_run_id(k, s))
        if run is None:
            return StagePhase.COLLECT
        online = stage.train is not None and get_trainer(stage.train.kind).online
        if not online:
            collect = self.store.get_run(self.collect_run_id(k, s))
            if collect is None or collect.status != RunStatus.FINISHED:
                return StagePhase.COLLECT
        if stage.train is None:
            return StagePhase.DONE
        candidate = self.store.get_model(self.candidate_id(k, s))
        if candidate is None:
            return StagePhase.SKIPPED if run.status == RunStatus.FINISHED else StagePhase.TRAIN
        if self.metric(s) not in candidate.metrics:
            return StagePhase.EVALUATE
        if candidate.status == ModelStatus.CANDIDATE:
            return StagePhase.DECIDE
        return StagePhase.DONE

    # -------------------------------------------------------------------------------------- phases
    def _loop(self, k: int, s: int) -> tuple[Any, Any]:
        """The stage's loop spec and its config for cycle k: the stage's `config` with the overrides that list
        cycle k (cycle 0, the evaluation's, has none); a seeded config gets a fresh stream per cycle."""
        stage = self.recipe.stages[s]
        spec = get_loop(stage.loop)
        cfg = spec.parse_config(stage.config_for(k))
        if getattr(cfg, "seed", None) is not None:
            cfg = cfg.model_copy(update={"seed": cfg.seed + k})
        return spec, cfg

    def _train_tasks(self, k: int, s: int) -> list[Any]:
        per = self.recipe.stages[s].tasks.train_per_cycle
        return self.task_sets[s].tasks(Split.TRAIN, per * k)[per * (k - 1) :]  # fresh problems every cycle

    def _runner(self, stage: Stage) -> Runner:
        return Runner(self.store, concurrency=stage.concurrency, progress=self.progress)

    async def _collect(self, k: int, s: int, versions: dict[str, ModelVersionRecord]) -> StagePhase:
        stage = self.recipe.stages[s]
        if stage.train is not None and get_trainer(stage.train.kind).online:
            return StagePhase.TRAIN  # an on-line trainer collects its own rollouts
        spec, cfg = self._loop(k, s)
        if changed := {key: v for key, v in stage.config_for(k).items() if stage.config.get(key) != v}:
            self.console.print(f"cycle {k} {stage.name}: this cycle's overrides: {changed}", markup=False)
        engines = {
            str(r): Served(self.host, self.weights(str(r)), versions[self.weights(str(r))])
            for r in spec.needed_roles(cfg)
        }
        run = RunRecord(
            id=self.collect_run_id(k, s),
            loop=spec.name,
            model_ids=sorted({e.version.id for e in engines.values()}),
            config={
                "evolve_id": self.evolve_id,
                "cycle": k,
                "stage": stage.name,
                "task_set": self.label(s),
                "loop": cfg.model_dump(mode="json"),
            },
        )
        if (
            self.recipe.scale.enabled
        ):  # rollout workers with their own engines collect through the store's queue
            res = await self._collect_on_workers(
                k, s, spec, cfg, run, {r: e.version for r, e in engines.items()}
            )
        else:
            graph = spec.make(
                LoopResources(
                    engines=engines, task_set=self.task_sets[s], store=self.store, label=self.label(s)
                ),
                cfg,
            )
            res = await self._runner(stage).run(
                graph, self._train_tasks(k, s), run, label=f"cycle {k} {stage.name}"
            )
        self.console.print(
            f"cycle {k} {stage.name}: collected {res.samples} answers on {res.episodes} tasks, {res.correct} correct "
            f"({res.accuracy:.1%}), {res.examples} examples, {res.tokens / max(res.seconds, 1e-6):.0f} tok/s"
        )
        if spec.summarize is not None:
            episodes = self.store.list_episodes(run.id, children=False)
            self.console.print(f"cycle {k} {stage.name}: {spec.summarize(episodes)}", markup=False)
        return StagePhase.TRAIN if stage.train is not None else StagePhase.DONE

    async def _collect_on_workers(
        self, k: int, s: int, spec: Any, cfg: Any, run: RunRecord, versions: dict[str, ModelVersionRecord]
    ) -> Any:
        """Stage s's collection on the recipe's [scale] workers: each loads the versions this cycle serves (a
        worker left from the previous cycle reloads the promoted ones at its next claim)."""
        from strop.agents.scale import run_on_workers
        from strop.agents.work_spec import EngineSpec, RoleModel, WorkSpec

        stage = self.recipe.stages[s]
        scale = self.recipe.scale
        work = WorkSpec(
            loop=spec.name,
            config=cfg.model_dump(mode="json"),
            task_set=stage.tasks.name,
            task_options=stage.tasks.options,
            label=self.label(s),
            checkpoints=scale.checkpoints,
            roles={r: RoleModel(version=v.id, lineage=v.lineage) for r, v in versions.items()},
            engine=EngineSpec(
                backend=self.recipe.engine.backend,
                options={"max_batch_size": self.recipe.engine.max_batch_size},
            ),
        )
        return await run_on_workers(
            self.store,
            run,
            work,
            self._train_tasks(k, s),
            scale,
            concurrency=stage.concurrency,
            progress=self.progress,
            label=f"cycle {k} {stage.name}",
        )

    # ------------------------------------------------------------------------------------- helpers
    def stage_parent(self, k: int, s: int) -> ModelVersionRecord | None:
        """The version of stage s's trained role that cycle k's stage started from (recorded on its run)."""
        stage = self.recipe.stages[s]
        run = self.store.get_run(self.stage_run_id(k, s))
        if run is None or stage.train is None:
            return None
        version_id = run.config.get("versions", {}).get(self.weights(stage.train.role))
        return self.store.get_model(version_id) if version_id else None

    def _model(self, model_id: str) -> ModelVersionRecord:
        version = self.store.get_model(model_id)
        if version is None:
            raise RuntimeError(
                f"model version {model_id} vanished from the registry; see `strop models list`"
            )
        return version

    def _candidate_name(self, k: int, s: int) -> str:
        stage = self.recipe.stages[s]
        name = (
            f"{self.recipe.name}-c{k}"
            if len(self.recipe.stages) == 1
            else f"{self.recipe.name}-{stage.name}-c{k}"
        )
        other = self.store.get_model(name)
        return (
            name if other is None or other.id == self.candidate_id(k, s) else f"{name}-{self.evolve_id[:6]}"
        )
