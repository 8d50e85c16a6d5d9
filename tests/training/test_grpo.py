"""The grpo trainer kind: settings refused with the field named, revival of all-negative groups (scripted engine),
and the kind end to end on the tiny model through `train_candidate` on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from strop.agents.loops.registry import get_loop
from strop.memory.records import ModelStatus, ModelVersionRecord, RunRecord
from strop.sandbox.tasks import ArithmeticTaskSet, Split
from strop.training.grpo_config import GRPOSettings, allowed_loss_types
from strop.training.grpo_rewards import group_advantages
from strop.training.grpo_rollout import StropRollout
from strop.training.trainers import get_trainer
from tests.agents.loops.fakes import ScriptedEngine


def _loc(e: ValidationError) -> list[tuple[Any, ...]]:
    return [err["loc"] for err in e.errors()]


def test_settings_errors_name_the_field() -> None:
    kind = get_trainer("grpo")
    assert kind.online and kind.example_kinds == ()
    with pytest.raises(ValidationError) as e:
        kind.parse_settings({"loss_type": "ppo"})
    assert _loc(e.value) == [("loss_type",)] and "dapo" in str(e.value)
    with pytest.raises(ValidationError) as e:  # 6 x 1 completions per generation: not whole groups of 4
        kind.parse_settings({"num_generations": 4, "batch_size": 6, "grad_accum": 1})
    assert _loc(e.value) == [("generation_batch_size",)] and "num_generations" in str(e.value)
    with pytest.raises(ValidationError) as e:
        kind.parse_settings({"num_generations": 8, "generation_batch_size": 36})
    assert _loc(e.value) == [("generation_batch_size",)]
    with pytest.raises(ValidationError) as e:
        kind.parse_settings({"rewards": [{"critic": "oracle"}]})
    assert _loc(e.value) == [("rewards", 0, "critic")]
    with pytest.raises(ValidationError) as e:
        kind.parse_settings({"revision_prompt": "try again"})
    assert _loc(e.value) == [("revision_prompt",)]
    with pytest.raises(ValidationError) as e:
        kind.parse_settings({"num_generations": 1})
    assert _loc(e.value) == [("num_generations",)]
    ok = kind.parse_settings({"num_generations": 8, "batch_size": 16, "grad_accum": 4})
    assert ok.completions_per_generation == 64 and set(allowed_loss_types()) >= {"grpo", "dapo", "dr_grpo"}


def test_advantages_follow_trl() -> None:
    [[a, b, *_], flat] = group_advantages([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0]], "group")
    assert a == pytest.approx(0.75 / (0.5 + 1e-4)) and b == pytest.approx(-0.25 / (0.5 + 1e-4))
    assert flat == [0.0, 0.0]  # an all-negative group teaches nothing
    assert group_advantages([[1.0, 0.0]], "none") == [[0.5, -0.5]]


def _revival_case(store: Any, revive: bool) -> tuple[StropRollout, ScriptedEngine, list[Any]]:
    task_set = ArithmeticTaskSet()
    revivable, _, mixed = tasks = task_set.tasks(Split.TRAIN, 3)

    def answer(prompt: str, i: int) -> str:
        if prompt.startswith("Your answer is wrong"):  # a revision: only the first task's comes out right
            expected = re.search(r"expected (\S+),", prompt).group(1)  # type: ignore[union-attr]
            return f"#### {expected}" if expected == revivable.answer else "#### -1"
        if prompt == mixed.prompt:
            return f"#### {mixed.answer}" if i % 2 == 0 else "#### -1"
        return "#### -1"

    engine = ScriptedEngine(answer)
    settings = GRPOSettings(num_generations=4, batch_size=4, grad_accum=1, revive_all_negative=revive)
    store.create_run(RunRecord(id=f"grpo-{revive}", loop="best_of_n"))
    rollout = StropRollout(
        spec=get_loop("best_of_n"),
        loop_config={"seed": 0},
        task_set=task_set,
        tasks=tasks,
        settings=settings,
        store=store,
        run_id=f"grpo-{revive}",
        job_id="job",
        engine=engine,
    )
    return rollout, engine, tasks


async def test_all_negative_groups_are_revived_and_counted(sqlite_url: str) -> None:
    from strop.memory import Store

    store = Store(sqlite_url)
    rollout, _, (revivable, hopeless, mixed) = _revival_case(store, revive=True)
    groups = await rollout.collect([revivable, hopeless, mixed], step=3)
    st = rollout.stats
    assert (st.groups, st.all_negative, st.revived_groups, st.revised_samples, st.revisions) == (
        3,
        2,
        1,
        1,
        2,
    )
    revived, dead, mixed_group = groups
    # The correct revision took the failed sample's slot, under the task's own prompt: the group has signal now.
    assert [m.correct for m in revived.members] == [True, False, False, False]
    assert revived.members[0].prompt_ids == revived.members[1].prompt_ids
    assert revived.advantages[0] > 0 > revived.advantages[1]
    assert dead.revived == 0 and dead.advantages == [0.0] * 4
    assert mixed_group.all_negative is False and sum(mixed_group.advantages) == pytest.approx(0.0, abs=1e-6)

    assert rollout.write(groups) == 3 and st.write_seconds > 0
    stored = {e.task_id: e for e in store.list_episodes("grpo-True")}
    ep = stored[revivable.id]
    assert ep.outcome["grpo"] == {
        "step": 3,
        "generation": 0,
        "job_id": "job",
        "rewards": [1.0, 0.0, 0.0, 0.0],
        "advantages": revived.advantages,
        "all_negative": True,
        "revived": 1,
    }
    revision = max(ep.steps, key=lambda s: s.index)
    assert revision.metadata["revision_of"] == 0 and revision.metadata["revived"] is True
    assert revision.metadata["in_group"] and revision.metadata["advantage"] == revived.advantages[0]
    assert "expected" in revision.metadata["critique"] and revision.token_ids
    assert not next(s for s in ep.steps if s.index == 0).metadata["in_group"]  # replaced by the revision
    assert any(x.payload["completion"][0]["content"] == f"#### {revivable.answer}" for x in ep.examples)
    dead_ep = stored[hopeless.id]
    assert (
        dead_ep.outcome["grpo"]["revived"] == 0 and len(dead_ep.steps) == 5
    )  # 4 samples + the failed revision
    store.close()


async def test_revival_is_off_by_default(sqlite_url: str) -> None:
    from strop.memory import Store

    store = Store(sqlite_url)
    rollout, engine, tasks = _revival_case(store, revive=False)
    groups = await rollout.collect(tasks, step=0)
    assert (rollout.stats.all_negative, rollout.stats.revived_groups, rollout.stats.revisions) == (2, 0, 0)
    assert not any(p.startswith("Your answer") for p in engine.calls)
    assert [len(g.episode.steps) for g in groups] == [4, 4, 4]
    store.close()


def test_loop_config_that_disagrees_is_refused() -> None:
    spec = get_loop("best_of_n")
    with pytest.raises(ValueError, match=r"n = 4 .* num_generations = 8"):
        StropRollout(
            spec=spec,
            loop_config=spec.parse_config({"n": 4}),
            task_set=ArithmeticTaskSet(),
            tasks=[],
            settings=GRPOSettings(),
            engine=ScriptedEngine(),
        )


@pytest.mark.slow
def test_grpo_kind_end_to_end(tiny_model_path: Path, store: Any, tmp_path: Path) -> None:
    from strop.agents.runner import Runner
    from strop.training.jobs import train_candidate

    task_set = ArithmeticTaskSet()
    tasks = task_set.tasks(Split.TRAIN, 4)
    parent = store.register_model(
        ModelVersionRecord(name="tiny", lineage="tiny", path=str(tiny_model_path), status=ModelStatus.BASE)
    )
    spec = get_loop("best_of_n")
    context = {
        "loop": spec,
        "loop_config": spec.parse_config({"seed": 0}),
        "task_set": task_set,
        "tasks": tasks,
        "run_id": "grpo-stage-run",
        "runner": Runner(store, progress=False),
    }
    settings = {
        "num_generations": 4,
        "batch_size": 8,
        "grad_accum": 2,
        "max_steps": 2,
        "max_completion_length": 16,
        "learning_rate": 1e-3,
        "lora": {"r": 4, "alpha": 8},
        "revive_all_negative": True,
    }
    res = train_candidate(
        store, parent, kind="grpo", settings=settings, output_dir=tmp_path / "out", context=context
    )

    assert res.candidate.status == ModelStatus.CANDIDATE and res.candidate.adapter_path == str(
        tmp_path / "out"
    )
    assert (tmp_path / "out" / "adapter_config.json").is_file() and res.candidate.path == str(tiny_model_path)
    m = store.get_job(res.job.id).metrics
    assert m["steps"] == 2 and m["grpo_steps"] == 2 and m["groups"] == 8 and m["episodes_written"] == 8
    assert 0 <= m["revived_groups"] <= m["all_negative_groups"] <= 8 and "store_write_share" in m
    assert 0 < m["store_write_share"] < 1 and m["engine_mean_batch_rows"] > 4  # tasks batched together
    assert m.get("advantage_max_diff_vs_trl", 0.0) < 1e-3  # the stored advantages are the ones TRL used

    assert store.get_run("grpo-stage-run").status == "finished"
    episodes = store.list_episodes("grpo-stage-run")
    assert len(episodes) == 8 and {e.outcome["grpo"]["step"] for e in episodes} == {0, 1}
    for ep in episodes:
        group = sorted(
            (s for s in ep.steps if s.metadata["in_group"]), key=lambda s: s.metadata["group_slot"]
        )
        assert len(group) == 4 and sum(s.metadata["advantage"] for s in group) == pytest.approx(0.0, abs=1e-4)
        for s in group:
            assert s.token_ids and s.prompt_token_ids and len(s.logprobs or []) == len(s.token_ids)
            assert s.model_version.endswith(f"@step{ep.outcome['grpo']['step']}")

    # The loss types strop reads from TRL's source (without importing it) are the ones TRL documents.
    from trl import GRPOConfig

    help_text = GRPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    assert all(f"'{v}'" in help_text for v in allowed_loss_types())


def test_adapter_merged_for_sampling_is_restored(tiny_model_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from strop.training.grpo_rollout import _merge_for_sampling

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_path),
        LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        unmerged = model(x).logits
        assert _merge_for_sampling(model)
        assert torch.allclose(model(x).logits, unmerged, atol=1e-5)  # same function, one matmul per layer
        model.unmerge_adapter()
    assert all(torch.allclose(p, before[n], atol=1e-6) for n, p in model.named_parameters())
    assert not _merge_for_sampling(
        AutoModelForCausalLM.from_pretrained(tiny_model_path)
    )  # no adapter: nothing


@pytest.mark.slow
def test_grpo_over_an_adapter_parent_with_a_kl_saves_no_reference_adapter(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """beta > 0 over a parent that is an adapter: TRL trains against a frozen "ref" copy of the parent's adapter,
    which is not part of the candidate (DPO and pg drop it the same way)."""
    import json

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from strop.training.grpo import run_grpo

    parent = tmp_path / "parent"
    get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_path),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    ).save_pretrained(parent)
    task_set = ArithmeticTaskSet()
    settings = GRPOSettings(
        num_generations=2,
        batch_size=2,
        grad_accum=1,
        max_steps=1,
        max_completion_length=8,
        beta=0.04,
        learning_rate=1e-3,
        lora={"r": 4, "alpha": 8},
    )
    rollout = StropRollout(
        spec=get_loop("best_of_n"),
        loop_config={"seed": 0},
        task_set=task_set,
        tasks=task_set.tasks(Split.TRAIN, 2),
        settings=settings,
        run_id="grpo-ref",
        job_id="job-ref",
    )
    out = tmp_path / "out"
    res = run_grpo(
        rollout, model_path=tiny_model_path, adapter_path=parent, output_dir=out, settings=settings
    )

    assert res.adapter_path == str(out) and res.steps == 1
    assert (out / "adapter_config.json").is_file() and not (out / "ref").exists()
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4  # the parent's adapter, continued
