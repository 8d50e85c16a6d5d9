"""Stage evaluation in the evolve cycle: each stage's evaluator measures candidates and parents, and its gate
decides promotion. The cycle knows the `Evaluator` protocol only (strop.agents.evaluators): which evaluator a
stage uses was settled when the recipe was read (its eval's `target`, else its loop's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from strop.agents.evaluators import EvalContext, Evaluator, gate_key, get_evaluator
from strop.agents.loops.registry import get_loop
from strop.memory.records import ModelStatus, ModelVersionRecord
from strop.training.evolve_phases import StagePhase
from strop.training.evolve_serving import EngineHost, Served
from strop.training.promotion import PromotionSettings, decide
from strop.training.recipe import Recipe, RecipeError
from strop.training.tracking import send_metrics
from strop.training.trainers import get_trainer

if TYPE_CHECKING:
    from rich.console import Console

    from strop.agents.runner import Runner
    from strop.training.recipe import Stage


class StageEvaluation:
    """The evaluation and decision phases of `Evolution` (a mixin: it reads the evolution's recipe and store)."""

    recipe: Recipe
    store: Any
    console: Console
    host: EngineHost
    bases: dict[str, ModelVersionRecord]
    task_sets: list[Any]
    _evaluated: set[tuple[str, str, str]]

    if TYPE_CHECKING:  # provided by Evolution; stubs here would shadow the other mixin's methods

        def weights(self, role: str) -> str: ...
        def label(self, s: int) -> str: ...
        def candidate_id(self, k: int, s: int = 0) -> str: ...
        def _loop(self, k: int, s: int) -> tuple[Any, Any]: ...
        def _runner(self, stage: Stage) -> Runner: ...
        def _model(self, model_id: str) -> ModelVersionRecord: ...
        async def _serve(self, weights: str, version: ModelVersionRecord) -> Any: ...

    def evaluator(self, s: int) -> Evaluator:
        """The evaluator of stage s (its eval's `target`, resolved from its loop when the recipe was read)."""
        ev = self.recipe.stages[s].eval
        if ev is None:
            raise RecipeError(f"stage {self.recipe.stages[s].name!r} has no [stages.eval]")
        return get_evaluator(ev.target)

    def eval_context(self, s: int) -> EvalContext:
        """What stage s's evaluator gets: its settings, tasks, loop (cycle 0) and engines by role."""
        stage = self.recipe.stages[s]
        assert stage.train is not None and stage.eval is not None
        role = stage.train.role

        def serve_role(other: str, version: ModelVersionRecord | None) -> Served:
            w = self.weights(other)
            if version is None and w not in self.bases:
                raise RecipeError(
                    f"stage {stage.name!r} is evaluated with role {other!r}: add it under [roles]"
                )
            return Served(self.host, w, version or self.bases[w])

        return EvalContext(
            settings=stage.eval,
            store=self.store,
            task_set=self.task_sets[s],
            label=self.label(s),
            heldout=stage.tasks.heldout,
            loop=get_loop(stage.loop),
            loop_config=self._loop(0, s)[1],
            role=role,
            serve=lambda version: Served(self.host, self.weights(role), version),
            serve_role=serve_role,
            shares_weights=lambda a, b: self.weights(a) == self.weights(b),
            runner=lambda: self._runner(stage),
            say=lambda line: self.console.print(line, markup=False),
        )

    def metric_prefix(self, s: int) -> str:
        return self.evaluator(s).metric_prefix(self.eval_context(s))

    def metric(self, s: int = 0) -> str:
        """The metric key stage s's gate compares, e.g. 'arithmetic[digits=2]/heldout/pass@1'."""
        return gate_key(self.evaluator(s), self.eval_context(s))

    def extra_metric(self, s: int) -> tuple[str, str] | None:
        """(column, metric key) that stage s's evaluator reports beside its gate, e.g. the policy's pass@1."""
        return self.evaluator(s).extra_metric(self.eval_context(s))

    async def _evaluate_version(self, version: ModelVersionRecord, s: int) -> None:
        """Held-out evaluation with stage s's settings; episodes already in the store are not redone."""
        ev = self.recipe.stages[s].eval
        assert ev is not None
        # What is measured: the gate's margin and metric only read the figures, so they are not part of it.
        measured = ev.model_dump_json(exclude={"margin", "metric", "promote_on_tie"})
        loop = self._loop(0, s)[1].model_dump_json()  # evaluators ask as the loop does (its max_tokens...)
        stage = self.recipe.stages[s]
        key = (version.id, self.metric_prefix(s), f"{stage.tasks.heldout}|{measured}|{loop}")
        if key in self._evaluated:  # two stages measuring one version alike measure it once
            return
        await self.evaluator(s).evaluate(version, self.eval_context(s))
        self._evaluated.add(key)

    async def _evaluate(self, k: int, s: int, versions: dict[str, ModelVersionRecord]) -> StagePhase:
        await self._evaluate_version(self._model(self.candidate_id(k, s)), s)
        self._track(k, s, self._model(self.candidate_id(k, s)))
        return StagePhase.DECIDE

    def _track(self, k: int, s: int, version: ModelVersionRecord) -> None:
        """Send `version`'s held-out scores to the stage's trackers (its trainer settings' `report_to`), one
        point per cycle (0: the starting model) in <run folder>/tracking/<stage>."""
        stage = self.recipe.stages[s]
        assert stage.train is not None
        report_to = getattr(
            get_trainer(stage.train.kind).parse_settings(stage.train.settings), "report_to", []
        )
        extra = self.extra_metric(s)
        keys = [self.metric(s), *([extra[1]] if extra else [])]
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
            PromotionSettings(
                margin=stage.eval.margin,
                metric=stage.eval.gate_metric(),
                promote_on_tie=stage.eval.promote_on_tie,
            ),
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
