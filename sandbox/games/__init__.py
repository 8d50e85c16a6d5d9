"""Two-player zero-sum text games (TextArena) behind a step-by-step contract, and fixed opponents.

A loop makes a game by name and seed, asks whose turn it is and what that seat sees, submits model text, and
reads per-seat rewards that sum to zero; an illegal or unparseable move loses for its mover. A game is
re-created from its `GameRecord` (name, seed, options, moves), which is how a checkpointed loop resumes.
TextArena itself is imported only when a game is first made.
"""

from strop.sandbox.games.base import (
    GameAdapter,
    GameOptions,
    GameOverError,
    GameRecord,
    GameResult,
    Move,
    MoveOutcome,
    Opponent,
    SeatView,
)
from strop.sandbox.games.game import Game
from strop.sandbox.games.opponents import (
    HeuristicOpponent,
    RandomOpponent,
    SeriesResult,
    play_game,
    play_series,
)
from strop.sandbox.games.registry import (
    GameInfo,
    GameKind,
    UnknownGameError,
    game_names,
    get_adapter,
    get_game,
    list_games,
    make_game,
    register_game,
    replay_game,
)

__all__ = [
    "Game",
    "GameAdapter",
    "GameInfo",
    "GameKind",
    "GameOptions",
    "GameOverError",
    "GameRecord",
    "GameResult",
    "HeuristicOpponent",
    "Move",
    "MoveOutcome",
    "Opponent",
    "RandomOpponent",
    "SeatView",
    "SeriesResult",
    "UnknownGameError",
    "game_names",
    "get_adapter",
    "get_game",
    "list_games",
    "make_game",
    "play_game",
    "play_series",
    "register_game",
    "replay_game",
]
