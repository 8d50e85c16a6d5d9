"""The `pg` kind: policy gradient on stored advantages, on the real tiny model.

Sign and scale are measured with a plain forward pass before and after one SGD step on a single stored action
(on-policy: its stored log-probs are the model's own, so the ratio starts at 1 and the step is the plain policy
gradient A * grad log p): a positive advantage raises the action's log-prob, a negative one lowers it, zero
leaves it unchanged, and twice the advantage moves it about twice as far.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from strop.memory.records import (
    AdvantagePayload,
    EpisodeRecord,
    ExampleKind,
    ExampleRecord,
    JobStatus,
    ModelStatus,
    ModelVersionRecord,
    Role,
    RunRecord,
    TrainingJobRecord,
)
from strop.training.pg import MalformedExampleError, PGSettings, build_dataset, run_pg
from strop.training.settings import LoraSettings

WRONG = (
    "Step 1: 98 + 69 = 157\n#### 157"  # a plausible wrong answer: low enough probability to move either way
)


def _tokens(model_path: Path, question: str, answer: str) -> tuple[list[int], list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_path))
    prompt = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)[
        "input_ids"
    ]
    return list(prompt), tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def _load(path: str, adapter: str | None = None) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


def _logprobs(model: Any, prompt: list[int], completion: list[int]) -> list[float]:
    """Per-token log-probs of `completion` after `prompt`: one plain forward pass."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(completion)[:, None])[:, 0].tolist()


def _action(
    model_path: Path, advantage: float, question: str = "What is 98 + 69?", answer: str = WRONG, **extra: Any
) -> ExampleRecord:
    prompt, completion = _tokens(model_path, question, answer)
    sampled = _logprobs(_load(str(model_path)), prompt, completion)
    return AdvantagePayload(
        prompt_ids=prompt, completion_ids=completion, logprobs=sampled, advantage=advantage, **extra
    ).example()


@pytest.mark.slow
def test_advantage_sign_and_scale_move_the_action_log_prob(tiny_model_path: Path, tmp_path: Path) -> None:
    # A small step, so the change stays in the linear regime: at 3e-3 a tiny model that already likes the
    # action saturates (+2.1 nats for A=1, +2.5 for A=2, -4.6 for A=-1 on one build of it).
    cfg = PGSettings(
        epochs=1, batch_size=1, learning_rate=3e-4, optimizer="sgd", lora=None, max_grad_norm=1e6
    )
    base = _action(tiny_model_path, 0.0)
    prompt, completion = base.payload["prompt_ids"], base.payload["completion_ids"]
    before = sum(base.payload["logprobs"])
    moved: dict[float, float] = {}
    for advantage in (1.0, -1.0, 0.0, 2.0):
        example = base.model_copy(update={"payload": {**base.payload, "advantage": advantage}})
        out = run_pg(
            build_dataset([example], cfg),
            model_path=tiny_model_path,
            output_dir=tmp_path / str(advantage),
            settings=cfg,
        )
        assert out.steps == 1 and out.examples == 1 and out.adapter_path is None
        moved[advantage] = sum(_logprobs(_load(out.path), prompt, completion)) - before
    assert moved[1.0] > 0.03, moved  # raised
    assert moved[-1.0] < -0.03, moved  # lowered
    assert abs(moved[0.0]) < 1e-4, moved  # no advantage, no gradient: unchanged
    assert 1.6 < moved[2.0] / moved[1.0] < 2.4, moved  # the step is proportional to the advantage


@pytest.mark.slow
def test_continuing_an_adapter_trains_it_against_the_parent_adapter(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """LoRA with a parent adapter and beta > 0: TRL keeps a frozen copy of the parent adapter as the reference;
    the saved version is one adapter again (no copy left in it), and the positive action gained on the negative."""
    cfg = PGSettings(epochs=2, batch_size=2, learning_rate=2e-3, beta=0.04, lora=LoraSettings(r=4, alpha=8))
    up = _action(tiny_model_path, 1.0)
    other = _action(
        tiny_model_path, -1.0, question="What is 74 + 17?", answer="Step 1: 74 + 17 = 81\n#### 81"
    )
    first = run_pg(
        build_dataset([up, other], cfg), model_path=tiny_model_path, output_dir=tmp_path / "a", settings=cfg
    )
    assert first.adapter_path == str(tmp_path / "a") and first.path == str(tiny_model_path)

    # The next round's actions are sampled by the first candidate: their log-probs are its own.
    parent = _load(first.path, first.adapter_path)
    up, other = (
        ex.model_copy(
            update={
                "payload": {
                    **ex.payload,
                    "logprobs": _logprobs(parent, ex.payload["prompt_ids"], ex.payload["completion_ids"]),
                }
            }
        )
        for ex in (up, other)
    )
    second = run_pg(
        build_dataset([up, other], cfg),
        model_path=first.path,
        adapter_path=first.adapter_path,
        output_dir=tmp_path / "b",
        settings=cfg,
    )
    assert second.adapter_path == str(tmp_path / "b") and not (tmp_path / "b" / "ref").exists()
    assert second.metrics["kl"] > 0  # measured against the parent adapter, which the policy has left
    trained = _load(second.path, second.adapter_path)
    up_moved, other_moved = (
        sum(_logprobs(trained, ex.payload["prompt_ids"], ex.payload["completion_ids"]))
        - sum(ex.payload["logprobs"])
        for ex in (up, other)
    )
    assert up_moved > 0 > other_moved, (up_moved, other_moved)


@pytest.mark.slow
@pytest.mark.filterwarnings(
    "ignore:.*gradient_checkpointing.*deprecated:FutureWarning"
)  # PEFT on transformers 5
def test_full_fine_tuning_keeps_the_parent_as_reference(tiny_model_path: Path, tmp_path: Path) -> None:
    """Full fine-tuning from an adapter version with beta > 0: the KL is measured against the merged parent, not
    the base folder the config names (which a random adapter makes very different)."""
    from peft import LoraConfig, get_peft_model

    adapter = get_peft_model(
        _load(str(tiny_model_path)),
        LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules="all-linear"),
    )
    adapter.save_pretrained(str(tmp_path / "parent"))
    ex = _action(tiny_model_path, 1.0)
    prompt, completion = ex.payload["prompt_ids"], ex.payload["completion_ids"]
    parent_lp = _logprobs(_load(str(tiny_model_path), str(tmp_path / "parent")), prompt, completion)
    assert abs(sum(parent_lp) - sum(ex.payload["logprobs"])) > 0.5  # the adapter matters
    ex = ex.model_copy(update={"payload": {**ex.payload, "logprobs": parent_lp}})

    cfg = PGSettings(epochs=2, batch_size=1, learning_rate=1e-7, beta=0.04, lora=None)
    out = run_pg(
        build_dataset([ex], cfg),
        model_path=tiny_model_path,
        adapter_path=tmp_path / "parent",
        output_dir=tmp_path / "full",
        settings=cfg,
    )
    assert out.adapter_path is None and out.path == str(tmp_path / "full") and out.steps == 2
    assert out.metrics["kl"] < 1e-4, out.metrics


def _parent(store: Any, path: Path) -> ModelVersionRecord:
    return store.register_model(
        ModelVersionRecord(name="tiny", lineage="tiny", path=str(path), status=ModelStatus.BASE)
    )


def _episode(store: Any, examples: list[ExampleRecord]) -> EpisodeRecord:
    run = store.create_run(RunRecord(loop="self_play"))
    episode = EpisodeRecord(run_id=run.id, task_id="t1", loop="self_play", reward=1.0, examples=examples)
    assert store.write_episode(episode)
    return episode


@pytest.mark.slow
def test_pg_kind_end_to_end_through_train_candidate(
    store: Any, tiny_model_path: Path, tmp_path: Path
) -> None:
    from strop.training.jobs import NothingToTrainError, train_candidate

    parent = _parent(store, tiny_model_path)
    turns = [
        _action(tiny_model_path, 1.0, metadata={"turn": 1}),
        _action(
            tiny_model_path,
            -0.5,
            question="What is 74 + 17?",
            answer="Step 1: 74 + 17 = 81\n#### 81",
            metadata={"turn": 2},
        ),
    ]
    turns[1] = turns[1].model_copy(update={"kind": ExampleKind.GAME_TURN})  # a seat's action counts too
    _episode(store, turns)
    settings = {
        "epochs": 1,
        "batch_size": 2,
        "learning_rate": 1e-3,
        "beta": 0.04,
        "lora": {"r": 4, "alpha": 8},
    }

    result = train_candidate(store, parent, kind="pg", settings=settings, output_dir=tmp_path / "c1")

    assert result.examples == 2 and result.job.status == JobStatus.SUCCEEDED and result.job.algorithm == "pg"
    cand = result.candidate
    assert cand.status == ModelStatus.CANDIDATE and cand.parent_id == parent.id and cand.lineage == "tiny"
    assert cand.adapter_path == str(tmp_path / "c1") and (tmp_path / "c1" / "adapter_config.json").is_file()
    assert cand.metrics["steps"] == 1 and "kl" in cand.metrics
    # Consumed exactly once: a second pg job finds nothing left.
    with pytest.raises(NothingToTrainError):
        train_candidate(store, cand, kind="pg", settings=settings, output_dir=tmp_path / "c2")


def test_a_malformed_payload_is_refused_naming_the_example(store: Any, tmp_path: Path) -> None:
    from strop.training.jobs import train_candidate

    parent = _parent(store, tmp_path / "no-model-needed")
    good = AdvantagePayload(prompt_ids=[4, 5], completion_ids=[6, 7], logprobs=[-0.1, -0.2], advantage=1.0)
    bad = ExampleRecord(kind=ExampleKind.ADVANTAGE, payload={**good.model_dump(), "logprobs": [-0.1]})
    _episode(store, [good.example(), bad])

    with pytest.raises(
        MalformedExampleError, match=rf"example {bad.id} .*1 logprobs for 2 completion tokens"
    ):
        train_candidate(store, parent, kind="pg", output_dir=tmp_path / "out")

    [job] = store.list_jobs()
    assert job.status == JobStatus.FAILED and bad.id in (job.error or "")
    # The failed job released its claims: both examples are still there for a fixed trainer.
    again = store.start_job(TrainingJobRecord(algorithm="pg", role=Role.POLICY, model_in=parent.id))
    assert len(store.claim_examples(again.id, role=Role.POLICY, kind=ExampleKind.ADVANTAGE)) == 2


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"logprobs": [-0.1]}, "1 logprobs for 2 completion tokens"),
        ({"logprobs": [-0.1, 0.5]}, "position 1 is 0.5"),
        ({"logprobs": [-0.1, float("-inf")]}, "finite"),
        ({"advantage": float("nan")}, "advantage must be a finite number"),
        ({"completion_ids": []}, "at least 1"),
        ({"prompt_ids": [4, -1]}, "non-negative"),
    ],
)
def test_payload_validation(change: dict[str, Any], reason: str) -> None:
    from pydantic import ValidationError

    good = {"prompt_ids": [4, 5], "completion_ids": [6, 7], "logprobs": [-0.1, -0.2], "advantage": 1.0}
    with pytest.raises(ValidationError, match=reason):
        AdvantagePayload.model_validate({**good, **change})


def test_temperature_mismatch_is_refused() -> None:
    ex = AdvantagePayload(
        prompt_ids=[4], completion_ids=[6], logprobs=[-0.1], advantage=1.0, temperature=0.7
    ).example()
    with pytest.raises(MalformedExampleError, match=f"example {ex.id} was sampled at temperature 0.7"):
        build_dataset([ex], PGSettings())
    assert build_dataset([ex], PGSettings(temperature=0.7))["advantage"] == [1.0]


def test_pg_is_a_registered_kind() -> None:
    from strop.training.trainers import get_trainer

    kind = get_trainer("pg")
    assert kind.settings is PGSettings and ExampleKind.ADVANTAGE in kind.example_kinds
    assert all(f.description for f in PGSettings.model_fields.values())


def test_advantage_examples_export(store: Any, tmp_path: Path) -> None:
    from strop.memory.export import export_examples

    payload = AdvantagePayload(
        prompt_ids=[4, 5], completion_ids=[6], logprobs=[-0.1], advantage=0.5, prompt="hi"
    )
    _episode(store, [payload.example(), payload.model_copy(update={"metadata": {"turn": 2}}).example()])
    assert export_examples(store, "advantages", "jsonl", tmp_path / "a.jsonl") == 2
    assert export_examples(store, "advantage", "parquet", tmp_path / "a.parquet") == 2
