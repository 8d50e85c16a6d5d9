"""The training phase of a stage in the evolve cycle: claim the examples the stage's sources emitted (or, for
an on-line trainer kind, hand it what collection would have used) and register the candidate. A job that
died is settled from the store first, so a rerun never trains twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.markup import escape

from strop.memory.examples import default_consumer
from strop.memory.records import ModelVersionRecord
from strop.training.evolve_phases import StagePhase
from strop.training.jobs import NothingToTrainError, settle_orphan_job, train_candidate
from strop.training.recipe import Recipe
from strop.training.tracking import TrainHooks
from strop.training.trainers import get_trainer

if TYPE_CHECKING:
    from rich.console import Console

    from strop.agents.runner import Runner
    from strop.training.recipe import Stage

_MAX_TRAIN_ATTEMPTS = 20


class StageTraining:
    """The training phase of `Evolution` (a mixin: it reads the evolution's recipe and store)."""

    recipe: Recipe
    store: Any
    console: Console
    evolve_id: str
    progress: bool
    task_sets: list[Any]

    if TYPE_CHECKING:  # provided by Evolution; stubs here would shadow the other mixin's methods

        def weights(self, role: str) -> str: ...
        def metric(self, s: int = 0) -> str: ...
        def collect_run_id(self, k: int, s: int = 0) -> str: ...
        def candidate_id(self, k: int, s: int = 0) -> str: ...
        def job_id(self, k: int, s: int, attempt: int) -> str: ...
        def _candidate_name(self, k: int, s: int) -> str: ...
        def _loop(self, k: int, s: int) -> tuple[Any, Any]: ...
        def _train_tasks(self, k: int, s: int) -> list[Any]: ...
        def _runner(self, stage: Stage) -> Runner: ...

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
