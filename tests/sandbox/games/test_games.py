"""Zero-sum bookkeeping over whole games, replay from (name, seed, moves), isolation of TextArena's random
state, the registry, and the fixed opponents."""

from __future__ import annotations

import json
import random

import pytest

from strop.sandbox.games import (
    GameOverError,
    GameRecord,
    GameResult,
    HeuristicOpponent,
    MoveOutcome,
    RandomOpponent,
    SeriesResult,
    UnknownGameError,
    get_adapter,
    list_games,
    make_game,
    play_game,
    play_series,
    replay_game,
)

GAMES = ["tictactoe", "kuhn_poker", "simple_negotiation"]


@pytest.mark.parametrize("name", GAMES)
async def test_random_games_end_zero_sum_with_only_legal_moves(name: str) -> None:
    players = (RandomOpponent(seed=1), RandomOpponent(seed=2))
    for seed in range(20):
        game = make_game(name, seed=seed)
        result = await play_game(game, players)
        assert sum(result.rewards) == 0 and set(result.rewards) <= {-1.0, 0.0, 1.0}
        assert result.forfeit is None and result.reason
        assert all(m.outcome is MoveOutcome.LEGAL for m in game.history) and result.moves == game.turn
        assert (result.winner is None) == (result.rewards == (0.0, 0.0))
        with pytest.raises(GameOverError):
            game.submit("[4]")


@pytest.mark.parametrize("name", GAMES)
async def test_replay_from_record_reaches_the_same_state(name: str) -> None:
    game = make_game(name, seed=7)
    players = (RandomOpponent(seed=3), HeuristicOpponent(seed=4))
    for _ in range(3):  # stop mid-game, as a checkpoint would
        if not game.done:
            game.submit(await players[game.current_seat].act(game.view()))
    record = json.loads(json.dumps(game.record().model_dump()))  # through JSON, like a LangGraph checkpoint
    again = replay_game(record)
    assert again.state_dict() == game.state_dict()
    if not game.done:
        assert again.messages() == game.messages() and again.legal_moves() == game.legal_moves()
    while not game.done:  # and the futures agree: same moves, same deals, same end
        text = await players[game.current_seat].act(game.view())
        game.submit(text)
        again.submit(text)
    assert again.state_dict() == game.state_dict() and again.result == game.result


async def test_replay_keeps_a_forfeit_and_its_reason() -> None:
    game = make_game("kuhn_poker", seed=1)
    game.submit("I think I should [bet]")
    game.submit("no idea")
    again = replay_game(game.record())
    assert again.record().moves == ["[bet]", "no idea"]
    assert again.result == game.result and again.result.forfeit is MoveOutcome.UNPARSEABLE


async def test_games_do_not_share_or_disturb_the_global_random_state() -> None:
    """Kuhn Poker deals from `random` mid-game; interleaved games and outside draws must not change deals."""
    random.seed(123)
    expected_outside = random.Random(123).random()
    alone = make_game("kuhn_poker", seed=11)
    mover = RandomOpponent(seed=5)
    texts = []
    while not alone.done:
        texts.append(await mover.act(alone.view()))
        alone.submit(texts[-1])
    assert random.random() == expected_outside  # the games left the caller's stream untouched

    interleaved, other = make_game("kuhn_poker", seed=11), make_game("kuhn_poker", seed=12)
    for text in texts:
        random.random()  # someone else drawing in between
        interleaved.submit(text)
        if not other.done:
            other.submit(other.legal_moves()[-1])
    assert interleaved.state_dict() == alone.state_dict()


def test_engine_verdict_is_the_safety_net(monkeypatch: pytest.MonkeyPatch) -> None:
    """A move the adapter wrongly lets through is still refused by the engine: illegal, no retry."""
    adapter = get_adapter("tictactoe")
    monkeypatch.setattr(type(adapter), "illegal_reason", lambda self, env, seat, action: None)
    game = make_game("tictactoe", seed=0)
    game.submit("[4]")
    move = game.submit("[4]")
    assert move.outcome is MoveOutcome.ILLEGAL and "occupied" in move.reason
    assert game.result.rewards == (1.0, -1.0) and game.result.forfeited_by == 1


def _break_the_engine_on(monkeypatch: pytest.MonkeyPatch, game_name: str, bad: str) -> None:
    """Make the game's TextArena engine raise (a bug of the game) whenever `bad` is played."""
    env_class = type(make_game(game_name, seed=0)._env)
    step = env_class.step

    def broken(self: object, action: str) -> object:
        if action == bad:
            raise KeyError("engine bug")
        return step(self, action)

    monkeypatch.setattr(env_class, "step", broken)


async def test_an_engine_exception_voids_the_game_and_is_no_ones_loss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A move the adapter accepted but the engine raised on is the game's fault: void, 0/0, not an illegal move."""
    _break_the_engine_on(monkeypatch, "tictactoe", "[0]")
    game = make_game("tictactoe", seed=0)
    game.submit("[4]")
    move = game.submit("I take the corner: [0]")
    assert move.outcome is MoveOutcome.ENGINE_ERROR and move.action == "[0]" and move.done
    assert "engine bug" in move.reason
    result = game.result
    assert result is not None and result.void and "engine bug" in (result.engine_error or "")
    assert result.rewards == (0.0, 0.0) and result.winner is None
    assert result.forfeit is None and result.forfeited_by is None and result.moves == 2
    with pytest.raises(GameOverError):
        game.submit("[1]")
    again = replay_game(json.loads(json.dumps(game.record().model_dump())))  # a resumed loop sees the same
    assert again.result == result and again.history[-1].outcome is MoveOutcome.ENGINE_ERROR

    # A series goes on past the broken game and counts it as neither player's result, nor as a draw.
    series = SeriesResult()
    series.add(result, a_seat=0)
    monkeypatch.undo()  # the engine mended
    series.add(await play_game(make_game("tictactoe", seed=1), (RandomOpponent(1), RandomOpponent(2))), 0)
    assert series.void == 1 and series.games == 1 and series.forfeits == series.opponent_forfeits == 0


def test_a_void_result_has_no_winner_and_no_forfeit() -> None:
    with pytest.raises(ValueError, match="void"):
        GameResult(rewards=(1.0, -1.0), winner=0, reason="x", engine_error="KeyError()")
    with pytest.raises(ValueError, match="void"):
        GameResult(
            rewards=(0.0, 0.0), reason="x", forfeit=MoveOutcome.ILLEGAL, forfeited_by=0, engine_error="e"
        )
    assert not GameResult(rewards=(0.0, 0.0), reason="a draw").void


def test_registry_names_options_and_errors() -> None:
    assert [g.name for g in list_games()] == GAMES
    assert "rounds" in next(g for g in list_games() if g.name == "kuhn_poker").options
    with pytest.raises(UnknownGameError, match="known games: tictactoe"):
        make_game("chess", seed=0)
    with pytest.raises(ValueError, match="rouns"):
        make_game("kuhn_poker", seed=0, rouns=2)
    game = make_game("kuhn_poker", seed=0, rounds=1)
    assert game.record() == GameRecord(game="kuhn_poker", seed=0, options={"rounds": 1}, moves=[])


@pytest.mark.parametrize("name", GAMES)
async def test_random_opponent_plays_only_legal_moves(name: str) -> None:
    mover = RandomOpponent(seed=9)
    for seed in range(10):
        game = make_game(name, seed=seed)
        while not game.done:
            view = game.view()
            text = await mover.act(view)
            assert text in view.legal_moves
            assert game.submit(text).outcome is MoveOutcome.LEGAL


async def test_heuristic_beats_random_at_tictactoe() -> None:
    series = await play_series("tictactoe", HeuristicOpponent(seed=1), RandomOpponent(seed=2), 200)
    print(f"heuristic vs random, tictactoe: {series.model_dump()}")
    assert series.losses <= 4 and series.wins >= 160 and series.forfeits == series.opponent_forfeits == 0


async def test_random_against_random_tictactoe_matches_the_known_figures() -> None:
    series = await play_series("tictactoe", RandomOpponent(seed=1), RandomOpponent(seed=2), 400)
    first = series.first_seat_wins / series.games
    win_rate = (series.wins + series.losses) / (2 * series.games)  # a seat's win rate, averaged over seats
    print(
        f"random vs random, tictactoe: first seat wins {first:.1%}, a seat wins {win_rate:.1%} (known: 58.5%, 43.7%)"
    )
    assert 0.50 < first < 0.67 and 0.38 < win_rate < 0.50


async def test_heuristics_follow_their_rules() -> None:
    ttt = make_game("tictactoe", seed=0)
    for text in ("[0]", "[3]", "[1]"):  # O has 0 and 1: X must block at 2
        ttt.submit(text)
    assert await HeuristicOpponent().act(ttt.view()) == "[2]"
    ttt.submit("[8]")  # X did not block: O wins at 2
    assert await HeuristicOpponent().act(ttt.view()) == "[2]"

    for seed in range(30):  # Kuhn: K bets or calls, J checks or folds
        kuhn = make_game("kuhn_poker", seed=seed)
        card = kuhn.view().info["card"]
        first = await HeuristicOpponent(seed).act(kuhn.view())
        if card in "KJ":
            assert first == {"K": "[bet]", "J": "[check]"}[card]
        kuhn.submit("[bet]")
        reply = await HeuristicOpponent(seed).act(kuhn.view())
        card = kuhn.view().info["card"]
        if card in "KJ":
            assert reply == {"K": "[call]", "J": "[fold]"}[card]

    neg = make_game("simple_negotiation", seed=2)
    values = neg._env.state.game_state["player_values"][1]
    cheap, dear = min(values, key=values.get), max(values, key=values.get)
    neg.submit(f"[Offer: 1 {dear} -> 1 {cheap}]")  # a gift to seat 1 by its own values
    assert await HeuristicOpponent().act(neg.view()) == "[Accept]"
    neg2 = make_game("simple_negotiation", seed=2)
    neg2.submit(
        f"[Offer: 1 {cheap} -> 1 {dear}]"
    )  # a loss to seat 1: declined with a counter-offer or [Deny]
    assert await HeuristicOpponent().act(neg2.view()) != "[Accept]"
