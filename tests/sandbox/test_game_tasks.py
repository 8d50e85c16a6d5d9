"""The `games` task set: (game, seed) tasks with stable, disjoint splits, dealt in turn across games."""

from __future__ import annotations

import pytest

from strop.sandbox.tasks import Split, load_task_set
from strop.sandbox.tasks.games import GameTaskSet, game_label


def test_splits_are_disjoint_stable_and_independent_of_the_seed_offset() -> None:
    ts = GameTaskSet(heldout_fraction=0.3)
    train, held = ts.tasks(Split.TRAIN, 40), ts.tasks(Split.HELDOUT, 20)
    keys = lambda tasks: {(t.metadata["game"], t.metadata["seed"]) for t in tasks}  # noqa: E731
    assert not keys(train) & keys(held) and len(keys(train)) == 40 and len(keys(held)) == 20
    assert ts.tasks(Split.TRAIN, 40) == train  # deterministic
    shifted = GameTaskSet(heldout_fraction=0.3, seed=10).tasks(Split.HELDOUT, 20)
    assert keys(shifted) & keys(held) and not keys(shifted) & keys(train)  # same (game, seed), same split
    t = train[0]
    assert t.id == f"games/train/tictactoe/{t.metadata['seed']}" and t.split == Split.TRAIN
    assert not ts.verify(t, "[4]").correct and "playing" in ts.verify(t, "[4]").reason


def test_several_games_are_dealt_in_turn_with_their_options() -> None:
    ts = load_task_set(
        "games",
        games="tictactoe,kuhn_poker",
        game_options={"kuhn_poker": {"rounds": 5}},
        heldout_fraction=0.0,
    )
    tasks = ts.tasks(Split.TRAIN, 4)
    assert [t.metadata["game"] for t in tasks] == ["tictactoe", "kuhn_poker"] * 2
    assert [t.metadata["seed"] for t in tasks] == [0, 0, 1, 1]
    assert tasks[1].metadata["options"] == {"rounds": 5} and tasks[0].metadata["options"] == {}
    assert (
        game_label("kuhn_poker", {"rounds": 5}) == "kuhn_poker[rounds=5]"
        and game_label("tictactoe") == "tictactoe"
    )


@pytest.mark.parametrize(
    "options, match",
    [
        ({"games": "chess"}, "games must be drawn from"),
        ({"games": ["tictactoe", "tictactoe"]}, "twice"),
        ({"game_options": {"kuhn_poker": {"rounds": 5}}}, "not played"),
        ({"heldout_fraction": 1.0}, "heldout_fraction"),
    ],
)
def test_bad_options_are_named(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_task_set("games", **options)


def test_game_options_are_checked_by_the_game() -> None:
    with pytest.raises(ValueError, match=r"(?s)game_options of kuhn_poker.*rounds"):
        load_task_set("games", games=["kuhn_poker"], game_options={"kuhn_poker": {"rounds": 0}})
