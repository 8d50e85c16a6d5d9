"""Each game's adapter: legal moves advance, illegal and unparseable ones lose at once (-1/+1, reason kept),
and the parser reads the ways small models write a move."""

from __future__ import annotations

import pytest

from strop.sandbox.games import Game, MoveOutcome, get_adapter, make_game


def _assert_forfeit(game: Game, seat: int, outcome: MoveOutcome) -> None:
    result = game.result
    assert result is not None
    assert game.done and game.current_seat is None
    assert result.forfeit is outcome and result.forfeited_by == seat and result.winner == 1 - seat
    assert result.rewards[seat] == -1.0 and result.rewards[1 - seat] == 1.0
    assert game.history[-1].outcome is outcome and game.history[-1].reason
    assert outcome.value in result.reason


# -- TicTacToe --------------------------------------------------------------------------------------------


def test_tictactoe_legal_move_advances() -> None:
    game = make_game("tictactoe", seed=0)
    assert game.current_seat == 0 and len(game.legal_moves()) == 9
    move = game.submit("I'll take the centre: [4]")
    assert move.outcome is MoveOutcome.LEGAL and move.action == "[4]" and not move.done
    assert game.current_seat == 1 and "[4]" not in game.legal_moves()
    assert game.view().info["board"][4] == "O"  # seat 0 plays O in TextArena
    assert " O " in game.messages()[1]["content"] or "| O" in game.messages()[1]["content"]


@pytest.mark.parametrize(
    ("text", "reason"), [("[4]", "already taken"), ("[9]", "off the board"), ("cell -1", "off the board")]
)
def test_tictactoe_illegal_move_loses(text: str, reason: str) -> None:
    game = make_game("tictactoe", seed=0)
    game.submit("[4]")
    move = game.submit(text)
    assert move.outcome is MoveOutcome.ILLEGAL and reason in move.reason
    _assert_forfeit(game, 1, MoveOutcome.ILLEGAL)


@pytest.mark.parametrize(
    "text", ["", "I am not sure.", "[centre]", "<think>maybe [4]</think>", "<think>[4] ..."]
)
def test_tictactoe_unparseable_move_loses(text: str) -> None:
    game = make_game("tictactoe", seed=0)
    move = game.submit(text)
    assert move.outcome is MoveOutcome.UNPARSEABLE and move.action is None
    _assert_forfeit(game, 0, MoveOutcome.UNPARSEABLE)


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("[4]", "[4]"),
        ("4", "[4]"),
        ("I choose 4", "[4]"),
        ("I choose 4.", "[4]"),
        ("\\boxed{7}", "[7]"),
        ("[ 2 ]", "[2]"),
        ("Move: [cell 3]", "[3]"),
        ("Not [0], rather [8].", "[8]"),
        ("As Player 1 I play 5", "[5]"),
        ("<think>[0] or [1]?</think>\n[2]", "[2]"),
        ("**[6]**", "[6]"),
    ],
)
def test_tictactoe_parser_tolerates_small_model_formatting(text: str, action: str) -> None:
    adapter = get_adapter("tictactoe")
    assert adapter.parse(text) == action
    assert adapter.parse(action) == action  # canonical actions read back as themselves


# -- Kuhn Poker -------------------------------------------------------------------------------------------


def test_kuhn_legal_moves_follow_the_betting_and_bets_cost_a_chip() -> None:
    game = make_game("kuhn_poker", seed=3)
    opener = game.current_seat
    assert opener == 1 and game.legal_moves() == ["[check]", "[bet]"]  # seat 1 opens round 1
    assert game.submit("I bet.").action == "[bet]"
    view = game.view()
    assert view.seat == 0 and view.legal_moves == ["[call]", "[fold]"] and view.info["history"] == ["bet"]
    assert view.info["pot"] == 3 and view.info["opponent_chips"] == -2  # ante plus the bet
    game.submit("[call]")
    info = game.view().info
    assert (
        info["round"] == 2
        and info["history"] == []
        and info["chips"] + info["opponent_chips"] + info["pot"] == 0
    )
    assert {info["chips"], info["opponent_chips"]} == {-3, 1}  # 4-chip pot won, next ante paid


def test_kuhn_hidden_card_stays_hidden() -> None:
    game = make_game("kuhn_poker", seed=5)
    seat = game.current_seat
    cards = game._env.state.game_state["player_cards"]
    own, other = "JQK"[cards[seat]], "JQK"[cards[1 - seat]]
    prompt = "\n".join(m["content"] for m in game.messages())
    assert f"Your card: {own}" in prompt and f"card is: '{other}'" not in prompt
    assert game.view().info["card"] == own and "opponent_card" not in game.view().info


@pytest.mark.parametrize(
    ("first", "text", "outcome"),
    [
        (None, "[call]", MoveOutcome.ILLEGAL),
        (None, "I fold", MoveOutcome.ILLEGAL),
        ("[bet]", "[check]", MoveOutcome.ILLEGAL),
        (None, "[raise]", MoveOutcome.UNPARSEABLE),
        (None, "hmm", MoveOutcome.UNPARSEABLE),
    ],
)
def test_kuhn_bad_moves_lose(first: str | None, text: str, outcome: MoveOutcome) -> None:
    game = make_game("kuhn_poker", seed=3)
    if first:
        game.submit(first)
    seat = game.current_seat
    assert game.submit(text).outcome is outcome
    _assert_forfeit(game, seat, outcome)


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("[check]", "[check]"),
        ("[Bet]", "[bet]"),
        ("\\boxed{call}", "[call]"),
        ("I will fold.", "[fold]"),
        ("Action: bet", "[bet]"),
        ("I could check, but I bet", "[bet]"),
        ("[CALL]", "[call]"),
    ],
)
def test_kuhn_parser(text: str, action: str) -> None:
    adapter = get_adapter("kuhn_poker")
    assert adapter.parse(text) == action and adapter.parse(action) == action


# -- Simple Negotiation -----------------------------------------------------------------------------------


def _held(game: Game, seat: int) -> dict[str, int]:
    return dict(game._env.state.game_state["player_resources"][seat])


def test_negotiation_offer_then_accept_trades() -> None:
    game = make_game("simple_negotiation", seed=2)
    before0, before1 = _held(game, 0), _held(game, 1)
    assert game.submit("Let's trade. [Offer: 2 Wheat -> 1 Ore]").action == "[Offer: 2 Wheat -> 1 Ore]"
    view = game.view()
    assert view.info["offer"]["get"] == {"Wheat": 2} and view.info["offer"]["give"] == {"Ore": 1}
    assert "[Accept]" in view.legal_moves and "offers you" in view.messages[1]["content"]
    assert game.submit("[Accept]").outcome is MoveOutcome.LEGAL
    assert _held(game, 0)["Wheat"] == before0["Wheat"] - 2 and _held(game, 0)["Ore"] == before0["Ore"] + 1
    assert _held(game, 1)["Wheat"] == before1["Wheat"] + 2 and _held(game, 1)["Ore"] == before1["Ore"] - 1


def test_negotiation_declined_offer_lapses() -> None:
    game = make_game("simple_negotiation", seed=2)
    game.submit("[Offer: 1 Wheat -> 1 Ore]")
    game.submit("[Deny]")
    assert "[Accept]" not in game.legal_moves()  # the proposer cannot accept its own declined offer
    assert game.submit("[Accept]").outcome is MoveOutcome.ILLEGAL
    _assert_forfeit(game, 0, MoveOutcome.ILLEGAL)


@pytest.mark.parametrize(
    ("text", "outcome", "reason"),
    [
        ("[Accept]", MoveOutcome.ILLEGAL, "no offer"),
        ("[Offer: 999 Ore -> 1 Wheat]", MoveOutcome.ILLEGAL, "do not hold"),
        ("[Offer: 2 Gold -> 1 Wheat]", MoveOutcome.UNPARSEABLE, "no move found"),
        ("Hello there, want to trade?", MoveOutcome.UNPARSEABLE, "no move found"),
    ],
)
def test_negotiation_bad_moves_lose(text: str, outcome: MoveOutcome, reason: str) -> None:
    game = make_game("simple_negotiation", seed=2)
    move = game.submit(text)
    assert move.outcome is outcome and reason in move.reason
    _assert_forfeit(game, 0, outcome)


def test_negotiation_lasts_exactly_the_given_moves() -> None:
    for turns in (2, 5, 10):
        game = make_game("simple_negotiation", seed=1, turns=turns)
        while not game.done:
            game.submit("[Deny]")
        assert game.turn == turns and game.result.rewards == (0.0, 0.0) and game.result.winner is None


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("[Offer: 3 Sheep, 2 Ore -> 5 Brick]", "[Offer: 3 Sheep, 2 Ore -> 5 Brick]"),
        ("[offer: 2 ore, 3 sheeps -> 5 bricks]", "[Offer: 3 Sheep, 2 Ore -> 5 Brick]"),
        ("I propose [Offer: 1 Wood and 1 Wheat for 1 Sheep].", "[Offer: 1 Wheat, 1 Wood -> 1 Sheep]"),
        ("Offer: 2 Wheat -> 1 Wood", "[Offer: 2 Wheat -> 1 Wood]"),
        ("\\boxed{Accept}", "[Accept]"),
        ("I accept.", "[Accept]"),
        ("[Deny]", "[Deny]"),
        ("Reject", "[Deny]"),
        ("<think>[Accept]?</think> No: [Deny]", "[Deny]"),
    ],
)
def test_negotiation_parser(text: str, action: str) -> None:
    adapter = get_adapter("simple_negotiation")
    assert adapter.parse(text) == action and adapter.parse(action) == action
