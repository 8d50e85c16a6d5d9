"""One full evolve cycle through the real path: tiny model, HF engine, store, TRL, registry."""

from pathlib import Path

import pytest

from strop.memory.records import ExampleKind, JobStatus, ModelStatus, Role, TrainingJobRecord
from strop.training.evolve import STAGE_TRANSITIONS, Evolution, StagePhase
from strop.training.recipe import load_recipe
from tests.agents.loops.fakes import ScriptedEngine
from tests.training.evolve_helpers import tiny_recipe


@pytest.mark.slow
async def test_one_cycle_collects_trains_evaluates_and_decides(
    db_url: str, tiny_model_path: Path, tmp_path: Path
) -> None:
    from strop.memory import Store

    store = Store(db_url)
    recipe = load_recipe(tiny_recipe(tmp_path))
    evo = Evolution(recipe, store, progress=False)
    rows = await evo.run(1)

    # Rows written: every collected answer, with its verdict, and an example per correct one.
    collect = store.list_episodes(evo.collect_run_id(1))
    assert len(collect) == 8 and all(len(e.steps) == 4 and len(e.critiques) == 4 for e in collect)
    correct = sum(e.outcome["correct"] for e in collect)
    assert correct > 0, "the tiny model is ~40% accurate: 32 samples with none right means a broken path"
    assert store.count_examples(role=Role.POLICY, kind=ExampleKind.SFT) == correct
    # Token ids and log-probs are kept, not only text.
    step = collect[0].steps[0]
    assert step.token_ids and step.logprobs and len(step.token_ids) == len(step.logprobs)

    # A candidate was registered with its lineage and evaluated on the held-out split.
    cand = store.get_model(evo.candidate_id(1))
    assert cand is not None and cand.parent_id == evo.bases["policy"].id and cand.lineage == "tiny"
    assert cand.adapter_path and Path(cand.adapter_path, "adapter_config.json").is_file()
    assert cand.metrics["examples"] == correct and cand.metrics["train_loss"] > 0
    assert evo.metric() in cand.metrics and evo.metric() in store.get_model(evo.bases["policy"].id).metrics
    assert cand.status in (ModelStatus.PROMOTED, ModelStatus.REJECTED)  # margin 0: promoted unless worse
    job = store.get_job(cand.job_id)
    assert (
        job.status == JobStatus.SUCCEEDED
        and job.model_out == cand.id
        and job.model_in == evo.bases["policy"].id
    )

    # Examples were consumed exactly once: a second SFT job finds nothing left.
    again = store.start_job(TrainingJobRecord(algorithm="sft", role=Role.POLICY, model_in=cand.id))
    assert store.claim_examples(again.id, role=Role.POLICY, kind=ExampleKind.SFT) == []

    # The report: a row per cycle, and the plot.
    assert [r.cycle for r in rows] == [0, 1] and rows[1].examples == correct
    assert rows[1].heldout_accuracy == cand.metrics[evo.metric()]
    assert (tmp_path / "run" / "accuracy.png").stat().st_size > 1000
    assert "held-out acc" in (tmp_path / "run" / "table.md").read_text()

    # Running it again does nothing new: the cycle is finished.
    before = store.counts()
    await Evolution(recipe, store, progress=False).run(1)
    assert store.counts() == before
    store.close()


async def test_a_cycle_without_correct_answers_trains_nothing_and_promotes_nothing(
    tmp_path: Path, capsys
) -> None:
    from strop.memory import Store
    from strop.memory.records import ModelVersionRecord

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_model(
        ModelVersionRecord(name="dummy", lineage="dummy", path=str(tmp_path), status=ModelStatus.BASE)
    )
    evo = Evolution(load_recipe(tiny_recipe(tmp_path, model="dummy")), store, progress=False)
    base = store.get_model("dummy")
    # Scripted engine that is always wrong; the engine is the only thing replaced.
    evo.engines["policy"] = ScriptedEngine(answer=lambda p, i: "#### -1", version=base.id)
    rows = await evo.run(1)
    out = capsys.readouterr().out
    assert "nothing to train" in out and "skipping training and promotion" in out
    assert evo.phase(1) == StagePhase.SKIPPED
    assert store.list_jobs() == [] and [m.name for m in store.list_models()] == ["dummy"]
    assert rows[1].decision.startswith("skipped") and rows[1].heldout_accuracy is None
    assert store.current_model("dummy").id == base.id
    store.close()


def test_the_stage_phases_form_a_chain_to_a_terminal_phase() -> None:
    terminal = {p for p, nxt in STAGE_TRANSITIONS.items() if not nxt}
    assert terminal == {StagePhase.DONE, StagePhase.SKIPPED}
    assert set(STAGE_TRANSITIONS) == set(StagePhase)


@pytest.mark.slow
async def test_two_stages_each_train_on_their_own_examples_and_hand_on_the_promoted_policy(
    db_url: str, tiny_model_path: Path, tmp_path: Path
) -> None:
    from strop.memory import Store
    from tests.training.evolve_helpers import two_stage_recipe

    store = Store(db_url)
    recipe = load_recipe(two_stage_recipe(tmp_path))
    evo = Evolution(recipe, store, progress=False)
    rows = await evo.run(1)
    base = evo.bases["policy"]

    for s, digits in ((0, 1), (1, 2)):
        episodes = store.list_episodes(evo.collect_run_id(1, s))
        assert len(episodes) == 8 and f"digits={digits}" in evo.label(s)
        emitted = sum(e.outcome["examples"] for e in episodes)
        cand = store.get_model(evo.candidate_id(1, s))
        if emitted == 0:
            assert cand is None and evo.phase(1, s) == StagePhase.SKIPPED
            continue
        # Each stage trained on exactly what its own collection emitted, not the other stage's examples.
        assert cand.metrics["examples"] == emitted
        assert evo.metric(s) in cand.metrics and cand.status in (ModelStatus.PROMOTED, ModelStatus.REJECTED)
    # The second stage started from what the first promoted (or the base, if it rejected its candidate).
    first = store.get_model(evo.candidate_id(1, 0))
    expected = first.id if first is not None and first.status == ModelStatus.PROMOTED else base.id
    assert store.get_run(evo.stage_run_id(1, 1)).config["versions"]["policy"] == expected
    if (second := store.get_model(evo.candidate_id(1, 1))) is not None:
        assert second.parent_id == expected
    # Metrics of the two task sets do not collide on one version.
    assert evo.metric(0) != evo.metric(1) and {evo.metric(0), evo.metric(1)} <= set(
        store.get_model(base.id).metrics
    )
    # Everything emitted was consumed once; nothing is left for the policy's SFT consumer.
    probe = store.start_job(TrainingJobRecord(algorithm="sft", role=Role.POLICY, model_in=base.id))
    left = store.claim_examples(probe.id, role=Role.POLICY, kind=ExampleKind.SFT)
    trained = {s for s in (0, 1) if store.get_model(evo.candidate_id(1, s)) is not None}
    assert all(
        store.get_episode(e.episode_id).run_id not in {evo.collect_run_id(1, s) for s in trained}
        for e in left
    )
    assert [(r.cycle, r.stage) for r in rows] == [(0, "ones"), (0, "tens"), (1, "ones"), (1, "tens")]
    assert "| stage | role |" in (tmp_path / "run" / "table.md").read_text()
    # A rerun does nothing new.
    before = store.counts()
    await Evolution(recipe, store, progress=False).run(1)
    assert store.counts() == before
    store.close()


async def test_a_base_judged_alike_by_two_stages_is_evaluated_once(
    db_url: str, tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two stages training the policy on one task set with one gate used to evaluate (and print) the base twice."""
    from strop.agents.evaluators import get_evaluator
    from strop.memory import Store
    from strop.training import evolve_eval
    from strop.training.recipe import recipe_from_dict

    calls: list[tuple[str, str]] = []

    class Counting:  # the real evaluator's names and keys; records a score instead of generating
        def __init__(self, name: str) -> None:
            self.real = get_evaluator(name)
            self.name, self.settings, self.score_label = name, self.real.settings, self.real.score_label

        def __getattr__(self, attr: str) -> object:
            return getattr(self.real, attr)

        async def evaluate(self, version, ctx) -> None:  # type: ignore[no-untyped-def]
            calls.append((version.id, ctx.label))
            ctx.store.update_model_metrics(version.id, {f"{self.real.metric_prefix(ctx)}/pass@1": 0.5})

    monkeypatch.setattr(evolve_eval, "get_evaluator", Counting)
    stage = {"loop": "best_of_n", "train": {"kind": "sft"}, "tasks": {"heldout": 4}}
    stages = [
        {**stage, "name": "a", "eval": {"margin": 0.0}},
        {**stage, "name": "b", "eval": {"margin": 0.05}},  # another margin: the same measurement
        {**stage, "name": "c", "eval": {"margin": 0.0, "max_tokens": 8}},  # another measurement
    ]
    recipe = recipe_from_dict({"name": "once", "roles": {"policy": "tiny"}, "stages": stages})
    store = Store(db_url)
    try:
        evo = Evolution(recipe, store, progress=False)
        base = evo.bases["policy"]
        for s in range(3):
            await evo._evaluate_version(base, s)
        assert len(calls) == 2  # a and b share one evaluation; c asks for other answers
    finally:
        store.close()
