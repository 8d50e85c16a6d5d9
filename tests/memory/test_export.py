"""From the store to TRL: datasets, JSONL/Parquet exports and `strop db stats`."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from typer.testing import CliRunner

from strop.cli.commands.db import app as db_app
from strop.memory import Store, StoreError, to_dataset
from strop.memory.records import ExampleKind, ExampleRecord, RunRecord, TrainingJobRecord
from tests.memory.factories import make_episode, sft_payload


@pytest.fixture
def filled(store: Store) -> Store:
    run = store.create_run(RunRecord(loop="best_of_n"))
    for i in range(6):
        store.write_episode(make_episode(run.id, seed=i, examples=2))
    for i in range(3):
        store.write_episode(make_episode(run.id, seed=10 + i, kind=ExampleKind.PAIR))
    return store


def test_sft_dataset_is_conversational_prompt_completion(filled: Store) -> None:
    ds = to_dataset(filled.list_examples(kind="sft"), "sft")
    assert isinstance(ds, datasets.Dataset) and len(ds) == 12
    assert ds.column_names == ["prompt", "completion"]
    assert ds[0]["prompt"][0]["role"] == "user" and ds[0]["completion"][0]["role"] == "assistant"


def test_pair_dataset_is_prompt_chosen_rejected(filled: Store) -> None:
    ds = to_dataset(filled.list_examples(kind="pair"), "pairs")
    assert ds.column_names == ["prompt", "chosen", "rejected"] and len(ds) == 3


def test_malformed_or_mixed_payloads_are_refused() -> None:
    bad = ExampleRecord(kind=ExampleKind.SFT, payload={"question": "q"})
    with pytest.raises(StoreError, match="prompt/completion"):
        to_dataset([bad], "sft")
    with pytest.raises(StoreError, match="kind"):
        to_dataset([ExampleRecord(kind=ExampleKind.SFT, payload=sft_payload("q", "a"))], "pair")


def test_cli_export_and_stats(filled: Store, db_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "sft.jsonl"
    result = runner.invoke(db_app, ["export", "--kind", "sft", "--out", str(out), "--db", db_url])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and set(rows[0]) == {"prompt", "completion"}
    parquet = tmp_path / "pairs.parquet"
    result = runner.invoke(
        db_app,
        ["export", "--kind", "pairs", "--format", "parquet", "--out", str(parquet)],
        env={"STROP_DB": db_url},
    )
    assert result.exit_code == 0, result.output
    assert datasets.Dataset.from_parquet(str(parquet)).column_names == ["prompt", "chosen", "rejected"]

    job = filled.start_job(TrainingJobRecord(algorithm="sft", model_in="m0"))
    filled.claim_examples(job.id, role="policy", kind="sft", limit=5)
    filled.finish_job(job.id)
    result = runner.invoke(db_app, ["stats", "--db", db_url], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "9 episodes" in result.output and "36 steps" in result.output
    assert "best_of_n" in result.output and "policy:sft" in result.output
    assert "consumed" in result.output
