"""The report's loop panels from the figures evaluations record on model versions: each panel's series on
hand-built versions stored and read back (SQLite and PostgreSQL), a loop that did not run leaves its panel
empty, and the page draws exactly the panels that have data."""

from __future__ import annotations

import re
from typing import Any

from strop.memory.records import ModelStatus, ModelVersionRecord, RunRecord
from strop.training import report_panels as rp
from strop.training.report import build_report, render_html

SET = "arithmetic[digits=2]"
BASE_METRICS: dict[str, Any] = {
    f"{SET}/heldout/pass@1": 0.2,
    f"{SET}/critic/f1": 0.4,
    f"{SET}/critic/correction_acc": 0.1,
    f"{SET}/critic/n_tasks": 8,
    f"{SET}/prm/f1": 0.5,
    f"{SET}/heldout/self_correct/intrinsic/acc_t1": 0.2,
    f"{SET}/heldout/self_correct/intrinsic/acc_last": 0.3,
    f"{SET}/heldout/self_correct/intrinsic/net": 0.1,
    f"{SET}/heldout/self_correct/intrinsic/delta_i2c": 0.15,
    f"{SET}/heldout/search/greedy@256": 0.2,
    f"{SET}/heldout/search/mcts-prm@256": 0.3,
    f"{SET}/heldout/search/mcts-prm@512": 0.4,
    f"{SET}/heldout/search/mcts-prm@512/tokens": 400.0,
    "tictactoe/vs_random/win_rate": 0.5,
    "tictactoe/vs_random/seat0/win_rate": 0.6,
    "tictactoe/vs_random/seat1/win_rate": 0.4,
    "tictactoe/vs_random/draw_rate": 0.1,
    "tictactoe/elo": 1010.0,
    "eval_seconds": 12.0,
    "decision": "start",
}


def _store_versions(store: Any) -> list[ModelVersionRecord]:
    base = store.register_model(
        ModelVersionRecord(name="b", lineage="b", path="/m", status=ModelStatus.BASE, metrics=BASE_METRICS)
    )
    cand = store.register_model(
        ModelVersionRecord(
            name="b-c1",
            lineage="b",
            path="/m",
            parent_id=base.id,
            metrics={
                f"{SET}/heldout/pass@1": 0.35,
                f"{SET}/critic/f1": 0.6,
                f"{SET}/heldout/self_correct/intrinsic/acc_t1": 0.3,
                f"{SET}/heldout/self_correct/intrinsic/acc_last": 0.45,
                "tictactoe/vs_random/win_rate": 0.7,
                "tictactoe/vs_heuristic/win_rate": 0.2,
            },
        )
    )
    store.set_model_status(cand.id, ModelStatus.REJECTED)
    return [store.get_model(base.id), store.get_model(cand.id)]


def test_each_loop_panel_from_stored_versions(store: Any) -> None:
    versions = _store_versions(store)
    p = rp.panels([v.name for v in versions], [v.metrics for v in versions])
    assert p.lineage == {f"{SET} pass@1": [0.2, 0.35]}
    assert p.critic == {
        f"{SET} critic F1": [0.4, 0.6],
        f"{SET} critic correction accuracy": [0.1, None],
        f"{SET} prm F1": [0.5, None],
    }
    assert p.self_correct == {
        f"{SET} intrinsic: turn 1": [0.2, 0.3],
        f"{SET} intrinsic: last turn": [0.3, 0.45],
    }
    assert p.self_correct_delta[f"{SET} intrinsic"][0] == 0.1  # recorded `net`
    assert p.search == {"b": {"greedy": [(256, 0.2)], "mcts-prm": [(256, 0.3), (512, 0.4)]}}
    assert p.games == {
        "tictactoe vs random": [0.5, 0.7],
        "tictactoe vs random seat 0": [0.6, None],
        "tictactoe vs random seat 1": [0.4, None],
        "tictactoe vs heuristic": [None, 0.2],
    }
    assert p.elo == {"tictactoe Elo": [1010.0, None]}


def test_the_page_draws_a_panel_per_loop_that_ran_and_none_for_the_others(store: Any) -> None:
    versions = _store_versions(store)
    run = store.create_run(RunRecord(loop="best_of_n", model_ids=[v.id for v in versions]))
    page = render_html(*build_report(store, run.id))
    titles = re.findall(r"<h2>([^<]+)</h2>", page)
    assert titles == [
        "Model versions",
        "Held-out metrics along the lineage",
        "Critic",
        "Self-correction",
        "Search",
        "Games",
    ]
    assert page.count('src="data:image/png;base64,') == 5 and '<span class="status rejected">' in page

    plain = store.register_model(
        ModelVersionRecord(
            name="p", lineage="p", path="/m", status=ModelStatus.BASE, metrics={f"{SET}/heldout/pass@1": 0.1}
        )
    )
    only = render_html(
        *build_report(store, store.create_run(RunRecord(loop="best_of_n", model_ids=[plain.id])).id)
    )
    assert re.findall(r"<h2>([^<]+)</h2>", only) == ["Model versions", "Held-out metrics along the lineage"]


def test_a_self_correction_delta_is_derived_where_net_was_not_recorded() -> None:
    acc, delta = rp.self_correct(
        [
            {
                f"{SET}/heldout/self_correct/critic/acc_t1": 0.5,
                f"{SET}/heldout/self_correct/critic/acc_last": 0.75,
            },
            {},
        ]
    )
    assert delta == {f"{SET} critic": [0.25, None]} and len(acc) == 2


def test_lineage_falls_back_to_a_critic_or_game_headline_without_pass_at_1() -> None:
    assert rp.lineage([{f"{SET}/prm/f1": 0.3, f"{SET}/prm/correction_acc": 0.1}]) == {f"{SET} prm F1": [0.3]}
    assert rp.lineage(
        [{"kuhn_poker/vs_random/win_rate": 0.6, "kuhn_poker/vs_random/seat1/win_rate": 0.5}]
    ) == {"kuhn_poker win rate vs random": [0.6]}


def test_search_names_the_task_set_only_when_there_are_several() -> None:
    got = rp.search(["v"], [{"a/heldout/search/greedy@64": 0.1, "b/heldout/search/greedy@64": 0.2}])
    assert got == {"v": {"a greedy": [(64, 0.1)], "b greedy": [(64, 0.2)]}}


def test_no_loop_ran_no_panels() -> None:
    p = rp.panels(["v"], [{"train_loss": 0.4, "examples": 3, "decision": "x", "flag": True}])
    assert not (
        p.lineage or p.critic or p.self_correct or p.self_correct_delta or p.search or p.games or p.elo
    )
