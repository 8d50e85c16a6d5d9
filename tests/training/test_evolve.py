"""One full evolve cycle through the real path: tiny model, HF engine, store, TRL, registry."""

from pathlib import Path

import pytest

from strop.memory.records import ExampleKind, JobStatus, ModelStatus, Role, TrainingJobRecord
from strop.training.evolve import CYCLE_TRANSITIONS, CyclePhase, Evolution
from strop.training.recipe import load_recipe
from tests.agents.loops.fakes import ScriptedEngine
from tests.training.evolve_helpers import tiny_recipe


@pytest.mark.slow
async def test_one_cycle_collects_trains_evaluates_and_decides(db_url: str, tiny_model_path: Path,
                                                              tmp_path: Path) -> None:
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
    assert cand is not None and cand.parent_id == evo.base.id and cand.lineage == "tiny"
    assert cand.adapter_path and Path(cand.adapter_path, "adapter_config.json").is_file()
    assert cand.metrics["examples"] == correct and cand.metrics["train_loss"] > 0
    assert evo.metric in cand.metrics and evo.metric in store.get_model(evo.base.id).metrics
    assert cand.status in (ModelStatus.PROMOTED, ModelStatus.REJECTED)  # margin 0: promoted unless worse
    job = store.get_job(cand.job_id)
    assert job.status == JobStatus.SUCCEEDED and job.model_out == cand.id and job.model_in == evo.base.id

    # Examples were consumed exactly once: a second SFT job finds nothing left.
    again = store.start_job(TrainingJobRecord(algorithm="sft", role=Role.POLICY, model_in=cand.id))
    assert store.claim_examples(again.id, role=Role.POLICY, kind=ExampleKind.SFT) == []

    # The report: a row per cycle, and the plot.
    assert [r.cycle for r in rows] == [0, 1] and rows[1].examples == correct
    assert rows[1].heldout_accuracy == cand.metrics[evo.metric]
    assert (tmp_path / "run" / "accuracy.png").stat().st_size > 1000
    assert "held-out acc" in (tmp_path / "run" / "table.md").read_text()

    # Running it again does nothing new: the cycle is finished.
    before = store.counts()
    await Evolution(recipe, store, progress=False).run(1)
    assert store.counts() == before
    store.close()


async def test_a_cycle_without_correct_answers_trains_nothing_and_promotes_nothing(tmp_path: Path, capsys) -> None:
    from strop.memory import Store
    from strop.memory.records import ModelVersionRecord

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_model(ModelVersionRecord(name="dummy", lineage="dummy", path=str(tmp_path),
                                            status=ModelStatus.BASE))
    evo = Evolution(load_recipe(tiny_recipe(tmp_path, model="dummy")), store, progress=False)
    base = store.get_model("dummy")
    # Scripted engine that is always wrong; the engine is the only thing replaced.
    evo.engine = ScriptedEngine(answer=lambda p, i: "#### -1", version=base.id)
    rows = await evo.run(1)
    out = capsys.readouterr().out
    assert "nothing to train" in out and "skipping training and promotion" in out
    assert evo.phase(1) == CyclePhase.SKIPPED
    assert store.list_jobs() == [] and [m.name for m in store.list_models()] == ["dummy"]
    assert rows[1].decision.startswith("skipped") and rows[1].heldout_accuracy is None
    assert store.current_model("dummy").id == base.id
    store.close()


def test_the_cycle_phases_form_a_chain_to_a_terminal_phase() -> None:
    terminal = {p for p, nxt in CYCLE_TRANSITIONS.items() if not nxt}
    assert terminal == {CyclePhase.DONE, CyclePhase.SKIPPED}
    assert set(CYCLE_TRANSITIONS) == set(CyclePhase)
