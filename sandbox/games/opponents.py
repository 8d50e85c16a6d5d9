"""Fixed opponents for evaluation, and playing whole games between two players.

SPIRAL measures a policy by win/draw/loss against fixed opponents: a random legal mover (any policy worth
training beats it), a simple heuristic per game (a policy that beats it has learned the game's first idea),
and earlier checkpoints. The first two are here. A checkpoint opponent needs a model engine, which lives in
the agents layer (sandbox must not import agents): it belongs in `strop.agents` as a class satisfying the
`Opponent` protocol of `base.py`, sending `view.messages` to its engine and returning the completion text.

Both fixed opponents are seeded, so an evaluation is reproducible from its seeds.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from pydantic import BaseModel, Field

from strop.sandbox.games.base import GameResult, MoveOutcome, Opponent, SeatView
from strop.sandbox.games.game import Game
from strop.sandbox.games.registry import get_adapter, make_game


class RandomOpponent:
    """A uniformly random legal move (from the game's legal-move menu)."""

    def __init__(self, seed: int = 0, name: str = "random") -> None:
        self.name = name
        self._rng = random.Random(seed)

    async def act(self, view: SeatView) -> str:
        return self._rng.choice(view.legal_moves)


class HeuristicOpponent:
    """The game's simple fixed strategy (see each adapter's `heuristic`); random ties are seeded."""

    def __init__(self, seed: int = 0, name: str = "heuristic") -> None:
        self.name = name
        self._rng = random.Random(seed)

    async def act(self, view: SeatView) -> str:
        return get_adapter(view.game).heuristic(view, self._rng)


async def play_game(game: Game, players: Sequence[Opponent]) -> GameResult:
    """Play `game` to the end, players[s] moving for seat s."""
    if len(players) != 2:
        raise ValueError(f"a game takes two players, got {len(players)}")
    while (seat := game.current_seat) is not None:
        game.submit(await players[seat].act(game.view()))
    assert game.result is not None
    return game.result


class SeriesResult(BaseModel):
    """Player A's record against player B over a series with alternating seats."""

    games: int = 0
    wins: int = 0
    draws: int = 0
    losses: int = 0
    forfeits: int = Field(0, description="Games A lost by an illegal or unparseable move.")
    opponent_forfeits: int = Field(0, description="Games B lost by an illegal or unparseable move.")
    first_seat_wins: int = Field(0, description="Games won by seat 0, whoever sat there.")
    void: int = Field(
        0, description="Games the game engine broke (an engine error): counted in nothing else."
    )

    def add(self, result: GameResult, a_seat: int) -> None:
        """Count one finished game in which A sat in `a_seat`; a void game says nothing about either player."""
        if result.void:
            self.void += 1
            return
        self.games += 1
        self.first_seat_wins += result.winner == 0
        if result.winner is None:
            self.draws += 1
        elif result.winner == a_seat:
            self.wins += 1
        else:
            self.losses += 1
        if result.forfeit in (MoveOutcome.ILLEGAL, MoveOutcome.UNPARSEABLE):
            if result.forfeited_by == a_seat:
                self.forfeits += 1
            else:
                self.opponent_forfeits += 1

    @property
    def score(self) -> float:
        """Wins plus half the draws, per game: the figure Elo ratings are fitted to."""
        return (self.wins + 0.5 * self.draws) / self.games if self.games else 0.0


async def play_series(
    game: str, a: Opponent, b: Opponent, n_games: int, seed: int = 0, **options: object
) -> SeriesResult:
    """`n_games` games of `game`, seeds seed, seed+1, ..., A in seat 0 in even games and seat 1 in odd."""
    out = SeriesResult()
    for i in range(n_games):
        a_seat = i % 2
        players = (a, b) if a_seat == 0 else (b, a)
        result = await play_game(make_game(game, seed + i, **options), players)
        out.add(result, a_seat)
    return out
