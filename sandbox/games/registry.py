"""Games by name, so recipes, loops and the CLI say `kuhn_poker` instead of importing classes.

Adapter modules import TextArena (about two seconds, mostly nltk), so they load on first use, not when
`strop.sandbox.games` is imported.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import Any

from strop.sandbox.games.base import GameAdapter, GameRecord
from strop.sandbox.games.game import Game


class UnknownGameError(KeyError):
    """A game name that is not registered; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@dataclass(frozen=True)
class GameInfo:
    name: str
    description: str
    options: dict[str, str]  # option name -> help (with its default)


_REGISTRY: dict[str, str] = {
    "tictactoe": "strop.sandbox.games.tictactoe:TicTacToe",
    "kuhn_poker": "strop.sandbox.games.kuhn_poker:KuhnPoker",
    "simple_negotiation": "strop.sandbox.games.negotiation:SimpleNegotiation",
}


def game_names() -> list[str]:
    return list(_REGISTRY)


@cache
def get_adapter(name: str) -> GameAdapter:
    """The (stateless, shared) adapter of a game."""
    try:
        module, _, cls = _REGISTRY[name].partition(":")
    except KeyError:
        raise UnknownGameError(f"unknown game {name!r}; known games: {', '.join(_REGISTRY)}") from None
    adapter: GameAdapter = getattr(importlib.import_module(module), cls)()
    return adapter


def list_games() -> list[GameInfo]:
    infos = []
    for name in _REGISTRY:
        adapter = get_adapter(name)
        fields = adapter.options_model.model_fields
        options = {k: f"{f.description} (default {f.default})" for k, f in fields.items()}
        infos.append(GameInfo(name, adapter.description, options))
    return infos


def make_game(name: str, seed: int, **options: Any) -> Game:
    """A new game, reset with `seed`; options are the game's knobs (see `list_games`)."""
    adapter = get_adapter(name)
    return Game(adapter, seed, adapter.options_model(**options))


def replay_game(record: GameRecord | dict[str, Any]) -> Game:
    """Re-create a game from its record (e.g. out of a JSON checkpoint) by replaying its moves."""
    record = GameRecord.model_validate(record)
    game = make_game(record.game, record.seed, **record.options)
    for text in record.moves:
        game.submit(text)
    return game
