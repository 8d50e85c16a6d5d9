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

import asyncio
import json
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from rich.console import Console
from rich.markup import escape

from strop.agents.critic_eval import CriticEvalConfig, critic_metric_prefix, evaluate_critic, labelled_set
from strop.agents.evaluation import EvalConfig, evaluate, metric_key, task_set_label
from strop.agents.game_eval import GameEvalConfig, eval_label, evaluate_games
from strop.agents.loops.base import stable_id
from strop.agents.loops.registry import LoopResources, get_loop
from strop.agents.loops.self_correct import critic_for
from strop.agents.runner import Runner, load_version_engine, resolve_version
from strop.agents.self_correct_eval import (
    SelfCorrectEvalConfig,
    evaluate_self_correction,
    self_correct_metric_prefix,
)
from strop.memory.records import ModelStatus, ModelVersionRecord, RunRecord, RunStatus
from strop.memory.training_data import default_consumer
from strop.sandbox.tasks.base import Split
from strop.training.jobs import NothingToTrainError, settle_orphan_job, train_candidate
from strop.training.promotion import decide
from strop.training.recipe import Recipe, RecipeError, Stage
from strop.training.tracking import TrainHooks, send_metrics
from strop.training.trainers import get_trainer


class StagePhase(StrEnum):
    COLLECT = "collect"
    TRAIN = "train"
    EVALUATE = "evaluate"
    DECIDE = "decide"
    DONE = "done"
    SKIPPED = "skipped"  # nothing to train on: no training, no promotion


# The moves a stage may make; anything else is a bug and stops the cycle.
STAGE_TRANSITIONS: dict[StagePhase, frozenset[StagePhase]] = {
    StagePhase.COLLECT: frozenset({StagePhase.TRAIN, StagePhase.DONE}),  # DONE: a stage that trains nothing
    StagePhase.TRAIN: frozenset({StagePhase.EVALUATE, StagePhase.SKIPPED}),
    StagePhase.EVALUATE: frozenset({StagePhase.DECIDE}),
    StagePhase.DECIDE: frozenset({StagePhase.DONE}),
    StagePhase.DONE: frozenset(),
    StagePhase.SKIPPED: frozenset(),
}
_MAX_TRAIN_ATTEMPTS = 20


class StageRow(BaseModel):
    """One line of the per-cycle table (cycle 0 is the starting model of each trained role)."""

    cycle: int
    stage: str
    role: str = ""
    model: str
    phase: StagePhase
    heldout_accuracy: float | None = None
    current_accuracy: float | None = None
    policy_accuracy: float | None = Field(
        None, description="Critic stages: the policy's held-out pass@1 with these weights."
    )
    decision: str = ""
    examples: int = 0
    collection: str = Field(
        "", description="The loop's own summary of the stage's games (LoopSpec.summarize)."
    )
    train_loss: float | None = None
    minutes: float = 0.0


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


class Evolution:
    """Runs a recipe against a store; safe to construct and `run` again after a crash."""

    def __init__(
        self, recipe: Recipe, store: Any, *, progress: bool = True, console: Console | None = None
    ) -> None:
        from strop.agents.models import ModelNotFoundError
        from strop.sandbox.tasks import UnknownTaskSetError, load_task_set

        self.recipe = recipe
        self.store = store
        self.progress = progress
        self.console = console or _console()
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
        self.engines: dict[str, Any] = {}  # weights role -> the one engine serving it
        self._serving = asyncio.Lock()

    # ----------------------------------------------------------------------------------------- ids
    def stage_run_id(self, k: int, s: int) -> str:
        return stable_id(self.evolve_id, "stage", k, self.recipe.stages[s].name)

    def collect_run_id(self, k: int, s: int = 0) -> str:
        return collect_run_id(self.evolve_id, k, self.recipe.stages[s].name)

    def candidate_id(self, k: int, s: int = 0) -> str:
        return candidate_id(self.evolve_id, k, self.recipe.stages[s].name)

    def job_id(self, k: int, s: int, attempt: int) -> str:
        return stable_id(self.evolve_id, "job", k, self.recipe.stages[s].name, attempt)

    def target(self, s: int) -> str:
        """What stage s measures: 'policy' (held-out pass@k), 'critic' (the critic benchmark) or 'self_correct'."""
        stage = self.recipe.stages[s]
        if not (stage.eval and stage.train):
            return "policy"
        return stage.eval.target_of(stage.train.role, get_loop(stage.loop).name)

    def metric_prefix(self, s: int) -> str:
        if self.target(s) == "game":
            return eval_label(self.task_sets[s])
        if self.target(s) == "critic":
            return critic_metric_prefix(self.label(s), self.critic_kind(s))
        if self.target(s) == "self_correct":
            return f"{self_correct_metric_prefix(self.label(s))}/{self._self_correct_eval(s).feedback[0]}"
        return metric_key(self.label(s), Split.HELDOUT)

    def critic_kind(self, s: int) -> Literal["generative", "prm"]:
        """How stage s's critic benchmark asks the critic: the eval's `critic_kind`, else the loop's (the sneaky
        loop's Yes/No critic is a 'prm'), else 'generative'."""
        ev = self.recipe.stages[s].eval
        if ev is not None and ev.critic_kind is not None:
            return ev.critic_kind
        return "prm" if getattr(self._loop(0, s)[1], "critic_kind", None) == "prm" else "generative"

    def metric(self, s: int = 0) -> str:
        stage = self.recipe.stages[s]
        ev = stage.eval
        if not (ev and stage.train):
            return f"{self.metric_prefix(s)}/pass@1"
        return f"{self.metric_prefix(s)}/{ev.gate_metric(stage.train.role, get_loop(stage.loop).name)}"

    def policy_metric(self, s: int) -> str:
        """The policy's held-out pass@1 on stage s's tasks (reported beside a critic stage's gate)."""
        return f"{metric_key(self.label(s), Split.HELDOUT)}/pass@1"

    def label(self, s: int) -> str:
        t = self.recipe.stages[s].tasks
        return task_set_label(t.name, t.options)

    def weights(self, role: str) -> str:
        return self.recipe.weights_of(role)

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
            for engine in self.engines.values():
                await engine.close()
            self.engines.clear()
        rows = self.table(cycles)
        self.write_report(rows)
        return rows

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
        """The stage's loop spec and its config for cycle k (a seeded config gets a fresh stream per cycle)."""
        stage = self.recipe.stages[s]
        spec = get_loop(stage.loop)
        cfg = spec.parse_config(stage.config)
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
        engines = {
            str(r): _ServedBy(self, self.weights(str(r)), versions[self.weights(str(r))])
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
        from strop.agents.worker import EngineSpec, RoleModel, WorkSpec

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

    def source_runs(self, k: int, s: int) -> list[str] | None:
        """The collection runs whose examples stage s of cycle k trains on (None: any run's)."""
        stage = self.recipe.stages[s]
        assert stage.train is not None
        if "any" in stage.train.sources:
            return None
        stages = [s if src == "self" else self.recipe.stage_index(src) for src in stage.train.sources]
        return [self.collect_run_id(j, i) for i in stages for j in range(1, k + 1)]

    async def _train(self, k: int, s: int, versions: dict[str, ModelVersionRecord]) -> StagePhase:
        stage = self.recipe.stages[s]
        t = stage.train
        assert t is not None
        trainer = get_trainer(t.kind)
        parent = versions[self.weights(t.role)]
        attempt = 0
        while (job := self.store.get_job(self.job_id(k, s, attempt))) is not None:
            if settle_orphan_job(self.store, job.id, self.candidate_id(k, s)):
                return StagePhase.EVALUATE
            attempt += 1
            if attempt >= _MAX_TRAIN_ATTEMPTS:
                raise RuntimeError(
                    f"cycle {k} {stage.name}: training failed {attempt} times; see `strop db stats`"
                )
        run_ids = self.source_runs(k, s)
        kinds = t.example_kinds if t.example_kinds is not None else list(trainer.example_kinds)
        context: dict[str, Any] = {}
        if trainer.online:
            spec, cfg = self._loop(k, s)
            context = {
                "loop": spec,
                "loop_config": cfg,
                "task_set": self.task_sets[s],
                "tasks": self._train_tasks(k, s),
                "run_id": self.collect_run_id(k, s),
                "runner": self._runner(stage),
            }
        else:
            consumer = t.consumer or default_consumer(t.role, trainer.name)
            left = sum(
                self.store.count_examples(t.role, kind, unconsumed_by=consumer, run_ids=run_ids)
                for kind in kinds
            )
            if left == 0:
                self.console.print(
                    f"cycle {k} {stage.name}: no unconsumed {'/'.join(map(str, kinds))} examples of role "
                    f"{t.role} from {', '.join(t.sources)}: nothing to train; skipping training and promotion "
                    "(for best-of-N: raise n or temperature, or start from a stronger model)",
                    markup=False,
                    style="yellow",
                )
                return StagePhase.SKIPPED
        try:
            res = train_candidate(
                self.store,
                parent,
                kind=t.kind,
                settings=t.settings,
                role=t.role,
                example_kinds=kinds,
                output_dir=self.recipe.run_dir() / "models" / f"{self.evolve_id[:8]}-c{k}-{stage.name}",
                name=self._candidate_name(k, s),
                job_id=self.job_id(k, s, attempt),
                model_id=self.candidate_id(k, s),
                consumer=t.consumer,
                run_ids=run_ids,
                context=context,
                launch=t,
                hooks=TrainHooks(
                    progress=self.progress,
                    label=f"cycle {k} {stage.name}: {t.kind}",
                    metrics=self._strop_figures(k, s, parent),
                ),
            )
        except NothingToTrainError as e:
            self.console.print(
                f"[yellow]cycle {k} {escape(stage.name)}: {escape(str(e))}; skipping training and promotion[/]"
            )
            return StagePhase.SKIPPED
        self.console.print(
            f"cycle {k} {stage.name}: trained {res.candidate.name} ({t.kind}) on {res.examples} examples, loss "
            f"{res.train_loss:.3f}, {res.seconds / 60:.1f} min"
        )
        return StagePhase.EVALUATE

    async def _evaluate(self, k: int, s: int, versions: dict[str, ModelVersionRecord]) -> StagePhase:
        await self._evaluate_version(self._model(self.candidate_id(k, s)), s)
        self._track(k, s, self._model(self.candidate_id(k, s)))
        return StagePhase.DECIDE

    def _strop_figures(self, k: int, s: int, parent: ModelVersionRecord) -> dict[str, float]:
        """What strop knows at training time and a tracker should show beside the losses: the stage's
        collection (an on-line trainer collects while it trains) and the parent's score on the stage's gate."""
        figures: dict[str, float] = {"cycle": k}
        if self.store.get_run(self.collect_run_id(k, s)) is not None:
            episodes = self.store.list_episodes(self.collect_run_id(k, s), children=False)
            n = sum(int(e.outcome.get("n", 1)) for e in episodes)
            figures["collect/episodes"] = len(episodes)
            figures["collect/examples"] = sum(int(e.outcome.get("examples", 0)) for e in episodes)
            figures["collect/accuracy"] = (
                sum(int(e.outcome.get("correct", 0)) for e in episodes) / n if n else 0.0
            )
        if isinstance(score := parent.metrics.get(self.metric(s)), int | float):
            figures[f"parent/{self.metric(s)}"] = score
        return figures

    def _track(self, k: int, s: int, version: ModelVersionRecord) -> None:
        """Send `version`'s held-out scores to the stage's trackers (its trainer settings' `report_to`), one
        point per cycle (0: the starting model) in <run folder>/tracking/<stage>."""
        stage = self.recipe.stages[s]
        assert stage.train is not None
        report_to = getattr(
            get_trainer(stage.train.kind).parse_settings(stage.train.settings), "report_to", []
        )
        keys = [self.metric(s), self.policy_metric(s), *filter(None, [self.transfer_metric(s)])]
        scores = {
            f"strop/{key}": float(v)
            for key in dict.fromkeys(keys)
            if isinstance(v := version.metrics.get(key), int | float)
        }
        send_metrics(report_to, self.recipe.run_dir() / "tracking" / stage.name, scores, step=k)

    async def _decide(self, k: int, s: int, versions: dict[str, ModelVersionRecord]) -> StagePhase:
        stage = self.recipe.stages[s]
        assert stage.train is not None and stage.eval is not None
        parent = versions[self.weights(stage.train.role)]
        # Re-measured (from the store, no generation when already done) so both sides use this stage's
        # evaluation settings even if another recipe evaluated the parent differently since.
        await self._evaluate_version(parent, s)
        candidate = self._model(self.candidate_id(k, s))
        decision = decide(
            candidate,
            self._model(parent.id),
            self.metric_prefix(s),
            stage.eval.promotion(stage.train.role, get_loop(stage.loop).name),
        )
        self.store.update_model_metrics(candidate.id, {"decision": decision.reason})
        status = ModelStatus.PROMOTED if decision.promote else ModelStatus.REJECTED
        self.store.set_model_status(candidate.id, status)
        self.console.print(
            f"cycle {k} {stage.name}: {status} {candidate.name}: {decision.reason}", markup=False
        )
        if decision.promote:
            await self._serve(self.weights(stage.train.role), candidate)  # engines serve it from here on
        return StagePhase.DONE

    # ------------------------------------------------------------------------------------- helpers
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

    async def _serve(self, weights: str, version: ModelVersionRecord) -> Any:
        """Make the engine of a weights role serve `version`: load it once, reload weights when it changes."""
        async with self._serving:
            engine = self.engines.get(weights)
            if engine is None:
                engine = self.engines[weights] = load_version_engine(
                    version,
                    backend=self.recipe.engine.backend,
                    max_batch_size=self.recipe.engine.max_batch_size,
                )
            elif engine.model_version != version.id:
                await engine.reload(version.path, adapter_path=version.adapter_path, model_version=version.id)
            return engine

    async def _evaluate_version(self, version: ModelVersionRecord, s: int) -> None:
        """Held-out evaluation with stage s's settings; episodes already in the store are not redone."""
        stage = self.recipe.stages[s]
        ev = stage.eval
        assert stage.train is not None and ev is not None
        if self.target(s) == "self_correct":
            return await self._evaluate_self_correct(version, s)
        if self.target(s) == "game":
            return await self._evaluate_game(version, s)
        if self.target(s) == "critic":
            await self._evaluate_critic(version, s)
            if not (ev.policy_accuracy and self.weights(stage.train.role) == self.weights("policy")):
                return
        loop_cfg = self._loop(0, s)[1]
        cfg = EvalConfig(
            split=Split.HELDOUT,
            n_tasks=stage.tasks.heldout,
            k=ev.k,
            max_tokens=ev.max_tokens
            or getattr(loop_cfg, "max_tokens", None)
            or getattr(loop_cfg, "solution_max_tokens", None)
            or 64,
            system_prompt=ev.system_prompt or getattr(loop_cfg, "system_prompt", None),
        )
        served = _ServedBy(self, self.weights(stage.train.role), version)
        res = await evaluate(
            served,
            self.task_sets[s],
            store=self.store,
            model_id=version.id,
            config=cfg,
            runner=self._runner(stage),
            label=self.label(s),
        )
        if res.episodes_run or "eval_seconds" not in version.metrics:
            self.store.update_model_metrics(version.id, {"eval_seconds": res.seconds})
        how = f"{res.seconds / 60:.1f} min" if res.episodes_run else "from the store"
        self.console.print(
            f"{version.name}: {self.label(s)} held-out pass@1 {res.pass_at_1:.1%} on {res.n_tasks} tasks ({how})",
            markup=False,
        )

    async def _evaluate_critic(self, version: ModelVersionRecord, s: int) -> None:
        """The critic benchmark on stage s's held-out tasks, as the critic role served by `version`."""
        stage = self.recipe.stages[s]
        ev = stage.eval
        assert stage.train is not None and ev is not None
        # The critic is asked as its loop asks it (same worked examples), so its training prompts match.
        cfg = CriticEvalConfig(
            n_items=stage.tasks.heldout,
            seed=ev.seed,
            max_tokens=ev.critic_max_tokens,
            kind=self.critic_kind(s),
            shots=getattr(self._loop(0, s)[1], "shots", 1),
        )
        items = labelled_set(self.task_sets[s], cfg, self.label(s))
        served = _ServedBy(self, self.weights(stage.train.role), version)
        res = await evaluate_critic(
            served,
            items,
            store=self.store,
            model_id=version.id,
            label=self.label(s),
            config=cfg,
            runner=self._runner(stage),
        )
        if res.episodes_run or "critic_eval_seconds" not in version.metrics:
            self.store.update_model_metrics(version.id, {"critic_eval_seconds": res.seconds})
        how = f"{res.seconds / 60:.1f} min" if res.episodes_run else "from the store"
        sc = res.scores
        self.console.print(
            f"{version.name}: {self.label(s)} critic F1 {_pct(sc.get('f1'))} (first wrong step found "
            f"{_pct(sc.get('acc_erroneous'))}, right accepted {_pct(sc.get('acc_correct'))}), correction "
            f"{_pct(sc.get('correction_acc'))}, unparsed {sc.get('unparsed')}/{res.n_items} ({how})",
            markup=False,
        )

    def _self_correct_eval(self, s: int) -> SelfCorrectEvalConfig:
        stage = self.recipe.stages[s]
        ev = stage.eval
        assert ev is not None
        loop_cfg = self._loop(0, s)[1]
        fields = ("max_tokens", "system_prompt", "instruction", "critic_max_tokens", "critic_shots")
        return SelfCorrectEvalConfig(
            n_tasks=stage.tasks.heldout,
            feedback=ev.feedback or [getattr(loop_cfg, "feedback", "intrinsic")],
            turns=ev.turns or getattr(loop_cfg, "turns", 2),
            **{f: getattr(loop_cfg, f) for f in fields if hasattr(loop_cfg, f)},
            **({"max_tokens": ev.max_tokens} if ev.max_tokens else {}),
            **({"system_prompt": ev.system_prompt} if ev.system_prompt else {}),
        )

    async def _evaluate_self_correct(self, version: ModelVersionRecord, s: int) -> None:
        """Greedy K-turn conversations on stage s's held-out tasks, per feedback kind, as served by `version`.

        Critic feedback comes from the critic role: the evaluated weights themselves when the critic shares
        the policy's, else the critic role's base version (so every candidate is judged by the same critic).
        """
        stage = self.recipe.stages[s]
        assert stage.train is not None
        cfg = self._self_correct_eval(s)
        served = _ServedBy(self, self.weights(stage.train.role), version)
        critic = None
        if "critic" in cfg.feedback:
            w = self.weights("critic")
            engine = served if w == self.weights(stage.train.role) else _ServedBy(self, w, self.bases[w])
            critic = critic_for(
                LoopResources(engines={"critic": engine}, task_set=self.task_sets[s]),
                cfg.loop_config("critic"),
            )
        res = await evaluate_self_correction(
            served,
            self.task_sets[s],
            store=self.store,
            model_id=version.id,
            label=self.label(s),
            config=cfg,
            critic=critic,
            runner=self._runner(stage),
        )
        if res.episodes_run or "eval_seconds" not in version.metrics:
            self.store.update_model_metrics(version.id, {"eval_seconds": res.seconds})
        how = f"{res.seconds / 60:.1f} min" if res.episodes_run else "from the store"
        for fb, sc in res.scores.items():
            self.console.print(
                f"{version.name}: {self.label(s)} self-correction ({fb}) turn 1 {_pct(sc['acc_t1'])} -> turn "
                f"{cfg.turns} {_pct(sc['acc_last'])}, wrong->right {_pct(sc['delta_i2c'])}, right->wrong "
                f"{_pct(sc['delta_c2i'])} on {res.n_tasks} tasks ({how})",
                markup=False,
            )

    async def _evaluate_game(self, version: ModelVersionRecord, s: int) -> None:
        """Greedy games on stage s's held-out seeds against the fixed opponents, from each seat; and, when the
        stage asks, held-out pass@1 on a reasoning task set (does game play transfer?)."""
        stage = self.recipe.stages[s]
        ev = stage.eval
        assert stage.train is not None and ev is not None
        loop_cfg = self._loop(0, s)[1]
        cfg = GameEvalConfig(
            n_tasks=stage.tasks.heldout,
            max_tokens=ev.max_tokens or getattr(loop_cfg, "max_tokens", 64),
            seed=ev.seed,
            **({"opponents": ev.opponents} if ev.opponents else {}),
        )
        served = _ServedBy(self, self.weights(stage.train.role), version)
        res = await evaluate_games(
            served,
            self.task_sets[s],
            store=self.store,
            model_id=version.id,
            config=cfg,
            runner=self._runner(stage),
        )
        seconds = res.seconds
        sc = res.scores()
        line = ", ".join(
            f"vs {o} {_pct(sc[f'vs_{o}/win_rate'])} won ({_pct(sc[f'vs_{o}/seat0/win_rate'])} / "
            f"{_pct(sc[f'vs_{o}/seat1/win_rate'])} by seat)"
            for o in cfg.opponents
        )
        self.console.print(
            f"{version.name}: {res.label} on {res.n_tasks} held-out seeds: {line}, illegal moves "
            f"{_pct(sc['illegal_rate'])}",
            markup=False,
        )
        if ev.transfer is not None:
            from strop.sandbox.tasks import load_task_set

            t = ev.transfer
            label = task_set_label(t.name, t.options)
            tr = await evaluate(
                served,
                load_task_set(t.name, **t.options),
                store=self.store,
                model_id=version.id,
                config=EvalConfig(n_tasks=t.heldout, max_tokens=ev.transfer_max_tokens),
                runner=self._runner(stage),
                label=label,
            )
            seconds += tr.seconds
            self.console.print(
                f"{version.name}: transfer to {label}: held-out pass@1 {tr.pass_at_1:.1%}", markup=False
            )
        if res.episodes_run or "eval_seconds" not in version.metrics:
            self.store.update_model_metrics(version.id, {"eval_seconds": seconds})

    def transfer_metric(self, s: int) -> str | None:
        ev = self.recipe.stages[s].eval
        if self.target(s) != "game" or ev is None or ev.transfer is None:
            return None
        return f"{metric_key(task_set_label(ev.transfer.name, ev.transfer.options), Split.HELDOUT)}/pass@1"

    def _policy_accuracy(self, version: ModelVersionRecord, s: int) -> float | None:
        """The extra column: the policy's pass@1 beside a critic stage, the transfer beside a game stage."""
        if (transfer := self.transfer_metric(s)) is not None:
            return version.metrics.get(transfer)
        return version.metrics.get(self.policy_metric(s)) if self.target(s) == "critic" else None

    # -------------------------------------------------------------------------------------- report
    def table(self, cycles: int) -> list[StageRow]:
        rows: list[StageRow] = []
        current: dict[int, float | None] = {}
        for s, stage in enumerate(self.recipe.stages):
            if stage.train is None:
                continue
            base = self._model(self.bases[self.weights(stage.train.role)].id)
            acc = base.metrics.get(self.metric(s))
            current[s] = acc
            rows.append(
                StageRow(
                    cycle=0,
                    stage=stage.name,
                    role=stage.train.role,
                    model=base.name,
                    phase=StagePhase.DONE,
                    heldout_accuracy=acc,
                    current_accuracy=acc,
                    decision="start",
                    policy_accuracy=self._policy_accuracy(base, s),
                    minutes=_eval_minutes(base),
                )
            )
        for k in range(1, cycles + 1):
            for s in range(len(self.recipe.stages)):
                rows.append(self._row(k, s, current))
        return rows

    def _row(self, k: int, s: int, current: dict[int, float | None]) -> StageRow:
        stage = self.recipe.stages[s]
        collect = self.store.get_run(self.collect_run_id(k, s))
        phase = self.phase(k, s)
        examples, seconds = 0, 0.0
        collection = ""
        if collect is not None:
            episodes = self.store.list_episodes(collect.id, children=False)
            examples = sum(int(e.outcome.get("examples", 0)) for e in episodes)
            if (summarize := get_loop(stage.loop).summarize) is not None and episodes:
                collection = summarize(episodes)
            online = stage.train is not None and get_trainer(stage.train.kind).online
            if (
                collect.finished_at is not None and not online
            ):  # an on-line trainer's rollouts are in its training time
                seconds += (collect.finished_at - collect.started_at).total_seconds()
        if stage.train is None:
            return StageRow(
                cycle=k,
                stage=stage.name,
                model="-",
                phase=phase,
                decision="collect only",
                examples=examples,
                minutes=seconds / 60,
                collection=collection,
            )
        cand = self.store.get_model(self.candidate_id(k, s))
        row = StageRow(
            cycle=k,
            stage=stage.name,
            role=stage.train.role,
            model=cand.name if cand else "-",
            phase=phase,
            examples=examples,
            collection=collection,
        )
        if cand is not None:
            row.heldout_accuracy = cand.metrics.get(self.metric(s))
            row.train_loss = cand.metrics.get("train_loss")
            row.examples = int(cand.metrics.get("examples", examples))
            seconds += float(cand.metrics.get("train_seconds", 0.0)) + 60 * _eval_minutes(cand)
            row.policy_accuracy = self._policy_accuracy(cand, s)
            row.decision = str(cand.status)
            if cand.status == ModelStatus.PROMOTED:
                current[s] = row.heldout_accuracy
            elif (parent := self._stage_parent(k, s)) is not None and self.metric(s) in parent.metrics:
                # Rejected: the role stays at the version this stage started from, which an earlier stage of
                # the cycle may have promoted (two stages training one role), measured by this stage's gate.
                current[s] = parent.metrics[self.metric(s)]
        elif phase == StagePhase.SKIPPED:
            row.decision = "skipped (nothing to train)"
        row.current_accuracy, row.minutes = current.get(s), seconds / 60
        return row

    def _gate_text(self, s: int) -> str:
        """What stage s's gate compares, for the table's title."""
        n = self.recipe.stages[s].tasks.heldout
        if self.target(s) == "game":
            return f"{self.metric(s).removeprefix(self.metric_prefix(s) + '/')} on {n} {self.metric_prefix(s)} seeds"
        return f"{self.metric(s).rsplit('/', 1)[1]} on {n} {self.label(s)} tasks"

    def _stage_parent(self, k: int, s: int) -> ModelVersionRecord | None:
        """The version of stage s's trained role that cycle k's stage started from (recorded on its run)."""
        stage = self.recipe.stages[s]
        run = self.store.get_run(self.stage_run_id(k, s))
        if run is None or stage.train is None:
            return None
        version_id = run.config.get("versions", {}).get(self.weights(stage.train.role))
        return self.store.get_model(version_id) if version_id else None

    def write_report(self, rows: list[StageRow]) -> Path:
        """Print the table and write table.md, table.json and accuracy.png into the run folder."""
        from rich.table import Table

        out = self.recipe.run_dir()
        out.mkdir(parents=True, exist_ok=True)
        multi = len(self.recipe.stages) > 1
        stages = range(len(self.recipe.stages))
        critic = any(self.target(s) == "critic" for s in stages)
        transfer = any(self.transfer_metric(s) is not None for s in stages)
        extra = "policy acc" if critic else "transfer acc" if transfer else None
        score = (
            "held-out score" if critic or any(self.target(s) == "game" for s in stages) else "held-out acc"
        )
        games = any(r.collection for r in rows)  # a loop that summarises its collection (the sneaky game)
        header = [
            "cycle",
            *(["stage", "role"] if multi else []),
            "model",
            score,
            f"current {score.split()[-1]}",
            *([extra] if extra else []),
            "decision",
            "examples",
            "train loss",
            "minutes",
            *(["collection"] if games else []),
        ]
        cells = [
            [
                str(r.cycle),
                *([r.stage, r.role] if multi else []),
                r.model,
                _pct(r.heldout_accuracy),
                _pct(r.current_accuracy),
                *([_pct(r.policy_accuracy)] if extra else []),
                r.decision,
                str(r.examples),
                "-" if r.train_loss is None else f"{r.train_loss:.3f}",
                f"{r.minutes:.1f}",
                *([r.collection or "-"] if games else []),
            ]
            for r in rows
        ]
        gates = sorted({self._gate_text(s) for s, st in enumerate(self.recipe.stages) if st.eval is not None})
        table = Table(title=escape(f"{self.recipe.name}: held-out {'; '.join(gates)}"))
        for h in header:
            table.add_column(h)
        for c in cells:
            table.add_row(*map(escape, c))
        self.console.print(table)
        md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(c) + " |" for c in cells]
        (out / "table.md").write_text("\n".join(md) + "\n")
        (out / "table.json").write_text(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        # The y axis names what the gates compare: a game stage's gate is a win rate, a critic stage's an F1.
        _plot(rows, out / "accuracy.png", title=self.recipe.name, ylabel=f"held-out {'; '.join(gates)} (%)")
        self.console.print(f"report: {out / 'table.md'}, {out / 'accuracy.png'}", markup=False)
        return out


def _console() -> Console:
    """Long lines unwrapped (greppable), and a log file gets 120 columns instead of 80, so the table fits."""
    console = Console(soft_wrap=True)
    return console if console.is_terminal else Console(soft_wrap=True, width=120)


def _eval_minutes(version: ModelVersionRecord) -> float:
    m = version.metrics
    return (float(m.get("eval_seconds", 0.0)) + float(m.get("critic_eval_seconds", 0.0))) / 60


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _plot(rows: list[StageRow], path: Path, *, title: str, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    stages = list(dict.fromkeys(r.stage for r in rows if r.role))
    for stage in stages:
        mine = [r for r in rows if r.stage == stage]
        suffix = f" ({stage})" if len(stages) > 1 else ""
        pts = [(r.cycle, 100 * r.heldout_accuracy) for r in mine if r.heldout_accuracy is not None]
        cur = [(r.cycle, 100 * r.current_accuracy) for r in mine if r.current_accuracy is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o", label=f"candidate{suffix}")
        if cur:
            ax.plot(*zip(*cur, strict=True), "-", label=f"current (promoted){suffix}")
    ax.set_xlabel("cycle")
    ax.set_ylabel(ylabel, fontsize=9 if len(ylabel) > 40 else None)
    ax.set_xticks(sorted({r.cycle for r in rows}))
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if stages:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class _ServedBy:
    """The engine of one weights role, switched to `version` on first use: a phase whose episodes are all in
    the store already never loads weights."""

    def __init__(self, evolution: Evolution, weights: str, version: ModelVersionRecord) -> None:
        self.evolution, self.weights, self.version = evolution, weights, version

    @property
    def model_version(self) -> str:
        return self.version.id

    async def generate(self, requests: list[Any]) -> list[list[Any]]:
        engine = await self.evolution._serve(self.weights, self.version)
        return await engine.generate(requests)

    async def close(self) -> None:
        return None
