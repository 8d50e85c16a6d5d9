"""What `strop report` shows, read from the store: which evolution, its model versions, data, losses, rewards.

The store holds everything a report needs, so a report is rebuilt from it alone (no recipe, no model, no
run folder): an evolution's runs carry its id in their config, and every artefact of a stage has an id
derived from (evolution, cycle, stage) (training.evolve), so the collection run and the candidate of each
stage are found without searching. Figures on model versions follow the evaluation modules' key
conventions and are parsed into panels in training.report_panels.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strop.memory.records import ModelVersionRecord, RunRecord

STAGE_LOOP = "evolve-stage"  # the loop name of an evolve stage's own run (training.evolve)


class ReportError(ValueError):
    """The report's target names nothing in the store; the message says what does exist."""


@dataclass
class Version:
    """A model version as the report places it: the cycle and stage that made it (cycle 0: a starting model)."""

    record: ModelVersionRecord
    cycle: int = 0
    stage: str = ""
    role: str = ""

    @property
    def label(self) -> str:
        return self.record.name

    @property
    def status(self) -> str:
        return str(self.record.status)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record.metrics


@dataclass
class Collection:
    """One stage's collection run in one cycle (or a plain run)."""

    run: RunRecord
    cycle: int
    stage: str

    @property
    def label(self) -> str:
        return f"c{self.cycle} {self.stage}" if self.cycle else self.stage


@dataclass
class Curve:
    label: str
    points: list[tuple[float, float]]


@dataclass
class ReportData:
    """Everything the page draws; each list may be empty (its panel is then left out)."""

    title: str
    subtitle: str
    versions: list[Version] = field(default_factory=list)
    collections: list[Collection] = field(default_factory=list)
    counts: list[tuple[str, str, int]] = field(default_factory=list)  # (collection label, kind[/role], n)
    losses: list[Curve] = field(default_factory=list)  # per training job: (step, loss)
    train_rewards: list[Curve] = field(default_factory=list)  # per on-line job: (step, mean reward)
    episode_rewards: list[Curve] = field(default_factory=list)  # per collection: (episode, running mean)


@dataclass
class Scope:
    """The runs a report covers: an evolution's stages, or one plain run."""

    title: str
    evolve_id: str | None
    stage_runs: list[RunRecord]
    run: RunRecord | None = None


def resolve_scope(store: Any, target: str | None) -> Scope:
    """TARGET as `strop report` takes it: a recipe TOML file, a run id (any run of an evolution, or a plain
    run), or a recipe name; None: the latest evolution in the store."""
    stages = store.list_runs(loop=STAGE_LOOP)  # newest first
    if target is None:
        if not stages:
            raise ReportError(
                "the store holds no evolution: run `strop evolve --recipe ...` first, or name a run id"
            )
        return _evolution(stages, stages[0].config["evolve_id"])
    if target.endswith(".toml") or Path(target).is_file():
        return _evolution(stages, _recipe_evolve_id(store, Path(target)))
    run = store.get_run(target)
    if run is not None:
        eid = run.config.get("evolve_id")
        if eid:
            return _evolution(stages, eid)
        return Scope(title=f"{run.loop} run {run.id}", evolve_id=None, stage_runs=[], run=run)
    named = [r for r in stages if r.config.get("recipe") == target]
    if named:
        return _evolution(stages, named[0].config["evolve_id"])
    names = sorted({str(r.config.get("recipe")) for r in stages})
    raise ReportError(
        f"{target!r} is no recipe file, run id or recipe name in this store; recipes evolved here: "
        f"{', '.join(names) or 'none'}"
    )


def _recipe_evolve_id(store: Any, path: Path) -> str:
    from strop.training.evolve import evolve_id
    from strop.training.recipe import load_recipe

    recipe = load_recipe(path)
    bases = {}
    for role, model in recipe.roles.items():
        if model in recipe.roles:
            continue
        version = store.get_model(model)
        if version is None:
            raise ReportError(
                f"recipe {recipe.name} ({path}) never ran on this store: its {role} model {model!r} "
                "is not registered here (check --db)"
            )
        bases[role] = version
    return evolve_id(recipe, bases)


def _evolution(stages: list[RunRecord], eid: str) -> Scope:
    mine = [r for r in stages if r.config.get("evolve_id") == eid]
    if not mine:
        raise ReportError(f"evolution {eid} has no stage runs in this store (check --db)")
    mine.sort(key=lambda r: (int(r.config.get("cycle", 0)), r.started_at))
    return Scope(title=str(mine[0].config.get("recipe", eid)), evolve_id=eid, stage_runs=mine)


def collect(store: Any, scope: Scope) -> ReportData:
    """Read everything the report draws for `scope` from the store."""
    from strop.training.evolve import candidate_id, collect_run_id

    data = ReportData(title=scope.title, subtitle="")
    if scope.run is not None:  # a plain run: its data, and the versions it used
        data.collections = [Collection(run=scope.run, cycle=0, stage=scope.run.loop)]
        data.versions = [Version(m) for m in filter(None, map(store.get_model, scope.run.model_ids))]
        data.subtitle = f"{scope.run.loop} run started {scope.run.started_at:%Y-%m-%d %H:%M} UTC"
    else:
        assert scope.evolve_id is not None
        candidates: list[Version] = []
        for sr in scope.stage_runs:
            k, name = int(sr.config["cycle"]), str(sr.config["stage"])
            if (run := store.get_run(collect_run_id(scope.evolve_id, k, name))) is not None:
                data.collections.append(Collection(run=run, cycle=k, stage=name))
            if (cand := store.get_model(candidate_id(scope.evolve_id, k, name))) is not None:
                versions = sr.config.get("versions", {})
                role = next((r for r, v in versions.items() if v == cand.parent_id), "")
                candidates.append(Version(cand, k, name, role))
        # The starting versions: what the stages started from that no stage of this evolution made.
        made = {c.record.id for c in candidates}
        bases: dict[str, Version] = {}
        for sr in scope.stage_runs:
            for role, vid in sr.config.get("versions", {}).items():
                if vid not in made and vid not in bases and (m := store.get_model(vid)) is not None:
                    bases[vid] = Version(m, 0, "start", role)
        data.versions = [*bases.values(), *candidates]
        cycles = max((int(r.config["cycle"]) for r in scope.stage_runs), default=0)
        stages = list(dict.fromkeys(str(r.config["stage"]) for r in scope.stage_runs))
        data.subtitle = (
            f"evolution {scope.evolve_id[:12]}: {cycles} cycle{'s' * (cycles != 1)}, "
            f"stages {', '.join(stages)}; started {scope.stage_runs[0].started_at:%Y-%m-%d %H:%M} UTC"
        )
    data.counts = data_counts(store, data.collections)
    data.episode_rewards = episode_rewards(store, data.collections)
    jobs = [(v, store.get_job(v.record.job_id)) for v in data.versions if v.record.job_id]
    data.losses, data.train_rewards = job_curves((v, j) for v, j in jobs if j is not None)
    return data


def data_counts(store: Any, collections: list[Collection]) -> list[tuple[str, str, int]]:
    """Examples each collection emitted, by kind (with the role, where any example is not the policy's)."""
    counts = store.example_counts([c.run.id for c in collections])
    roles = any(role != "policy" for _, _, role in counts)
    out: list[tuple[str, str, int]] = []
    for c in collections:
        mine = sorted((kind, role, n) for (run_id, kind, role), n in counts.items() if run_id == c.run.id)
        out += [(c.label, f"{kind} ({role})" if roles else kind, n) for kind, role, n in mine]
    return out


def episode_rewards(store: Any, collections: list[Collection]) -> list[Curve]:
    """Each collection's episode rewards in the order they were stored, as a running mean (a noisy 0/1
    reward per episode says little; its trend does)."""
    curves = []
    for c in collections:
        rewards = [e.reward for e in store.list_episodes(c.run.id, children=False) if e.reward is not None]
        if rewards:
            curves.append(Curve(c.label, running_mean(rewards)))
    return curves


def running_mean(values: list[float]) -> list[tuple[float, float]]:
    total, out = 0.0, []
    for i, v in enumerate(values, 1):
        total += v
        out.append((float(i), total / i))
    return out


def job_curves(jobs: Iterable[tuple[Version, Any]]) -> tuple[list[Curve], list[Curve]]:
    """Training loss per step and, for on-line trainers (GRPO), the mean reward per step, from each job's
    stored log history (training.jobs keeps TRL's logged figures on the job). A job shorter than its
    `logging_steps` logged no step: its run's mean loss stands at its last step instead."""
    losses, rewards = [], []
    for version, job in jobs:
        history = job.metrics.get("log_history") or []
        label = f"{version.label} ({job.algorithm})"
        loss = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
        loss = loss or [(h["step"], h["train_loss"]) for h in history if "train_loss" in h and "step" in h]
        reward = [(h["step"], h["reward"]) for h in history if "reward" in h and "step" in h]
        if loss:
            losses.append(Curve(label, loss))
        if reward:
            rewards.append(Curve(label, reward))
    return losses, rewards
