"""Games by name, so recipes, loops and the CLI say `kuhn_poker` instead of importing classes.

The registry is a `strop.registry.Registry` (the one type every registry shares; it imports nothing from
strop's rooms, so this leaf may use it). Adapter modules import TextArena (about two seconds, mostly nltk),
so a `GameKind` names how to build its adapter and the built-ins import theirs on first use, not when
`strop.sandbox.games` is imported. Other packages add games through the `strop.games` entry-point group, or
call `register_game`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

from strop.registry import Registry, UnknownNameError
from strop.sandbox.games.base import GameAdapter, GameRecord
from strop.sandbox.games.game import Game


class UnknownGameError(UnknownNameError):
    """A game name that is not registered; the message lists the known ones."""


@dataclass(frozen=True)
class GameKind:
    """A game as the registry knows it: its name and how to build its (stateless, shared) adapter.

    `adapter` is called once, on the game's first use: an adapter class, or a function that imports one.
    """

    name: str
    adapter: Callable[[], GameAdapter]


@dataclass(frozen=True)
class GameInfo:
    name: str
    description: str
    options: dict[str, str]  # option name -> help (with its default)


GAMES: Registry[GameKind] = Registry(
    "game",
    GameKind,
    name_of=lambda kind: kind.name,
    entry_point_group="strop.games",
    error=UnknownGameError,
    sort=False,  # registration order: the built-ins as the docs list them, then plugins
)


def register_game(kind: GameKind, *, replace: bool = False) -> GameKind:
    """Add a game; a taken name is refused (naming both origins) unless `replace`."""
    return GAMES.register(kind.name, kind, replace=replace, stacklevel=2)


def _import_adapter(path: str) -> GameAdapter:
    module, _, cls = path.partition(":")
    adapter: GameAdapter = getattr(importlib.import_module(module), cls)()
    return adapter


for _name, _path in (
    ("tictactoe", "strop.sandbox.games.tictactoe:TicTacToe"),
    ("kuhn_poker", "strop.sandbox.games.kuhn_poker:KuhnPoker"),
    ("simple_negotiation", "strop.sandbox.games.negotiation:SimpleNegotiation"),
):
    register_game(GameKind(_name, partial(_import_adapter, _path)))


def game_names() -> list[str]:
    return GAMES.names()


def get_game(name: str) -> GameKind:
    """The registry's entry for a game; `get_adapter` builds (once) the adapter it names."""
    return GAMES.get(name)


@cache
def _adapter(kind: GameKind) -> GameAdapter:
    adapter = kind.adapter()
    if not isinstance(adapter, GameAdapter):
        raise TypeError(f"game {kind.name!r}: its adapter factory returned a {type(adapter).__name__}")
    return adapter


def get_adapter(name: str) -> GameAdapter:
    """The (stateless, shared) adapter of a game."""
    return _adapter(GAMES.get(name))


def list_games() -> list[GameInfo]:
    infos = []
    for name in GAMES.names():
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
