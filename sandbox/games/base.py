"""The game contract: what a self-play loop, an evaluator and an opponent see of a two-player game.

Games are stepped one move at a time because a self-play loop keeps many games in flight and batches the
model calls of all of them; a game therefore never calls a model itself. A loop asks whose turn it is and
what that seat sees (`SeatView`: chat messages, legal moves), submits the model's raw text, and gets back a
`Move` whose outcome is legal, illegal or unparseable. Model text is untrusted: an illegal or unparseable
move ends the game as a loss for the mover (-1/+1, the reason recorded), never an exception. The game engine
is not the model: when it raises on a move the adapter accepted, that is a fault of the game, which ends void
(outcome `engine_error`, rewards 0/0, no winner, `GameResult.engine_error` set), a loss for no one and never
an exception, so one broken game does not sink a run of many.

Everything here is plain data so it survives JSON: LangGraph checkpoints a loop's state as JSON, and a
killed run resumes by rebuilding each game from its `GameRecord` (name, seed, options, moves so far).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from enum import StrEnum
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

NUM_SEATS = 2


class MoveOutcome(StrEnum):
    LEGAL = "legal"
    ILLEGAL = "illegal"  # understood, but against the rules here and now: the mover loses
    UNPARSEABLE = "unparseable"  # no move found in the text: the mover loses
    ENGINE_ERROR = "engine_error"  # the game engine raised on a move the adapter accepted: the game is void


class GameOverError(RuntimeError):
    """A move was submitted to, or a view asked of, a finished game: a bug in the caller, not the model."""


class Move(BaseModel):
    """One submitted move and what became of it."""

    seat: int = Field(ge=0, lt=NUM_SEATS)
    text: str = Field(description="The raw text as submitted (model output, reasoning included).")
    action: str | None = Field(None, description="The canonical action parsed from it; None if unparseable.")
    outcome: MoveOutcome
    reason: str = Field("", description="Why an illegal or unparseable move was refused; empty when legal.")
    done: bool = Field(False, description="Whether the game is over after this move.")


class GameResult(BaseModel):
    """How a game ended. Rewards are per seat and sum to zero: win +1/-1, draw 0/0; a void game 0/0 too."""

    rewards: tuple[float, float]
    winner: int | None = Field(None, description="The winning seat; None for a draw.")
    reason: str = Field(description="The engine's reason, or why a forfeited move was refused.")
    forfeit: MoveOutcome | None = Field(None, description="ILLEGAL/UNPARSEABLE if a bad move ended the game.")
    forfeited_by: int | None = Field(None, description="The seat whose bad move ended the game.")
    moves: int = Field(0, description="Moves submitted, the forfeited one included.")
    engine_error: str | None = Field(
        None,
        description="The game engine's exception, when it raised on a move the adapter accepted: the game is "
        "void (0/0, no winner), a fault of the game and a loss for no one. Count it apart from draws.",
    )

    @model_validator(mode="after")
    def _zero_sum(self) -> GameResult:
        if abs(sum(self.rewards)) > 1e-9:
            raise ValueError(f"rewards must sum to zero, got {self.rewards}")
        if (self.winner is None) != (self.rewards[0] == self.rewards[1]):
            raise ValueError(f"winner {self.winner} does not match rewards {self.rewards}")
        if self.engine_error is not None and (self.winner is not None or self.forfeit is not None):
            raise ValueError("a void game (engine_error) has no winner and no forfeit")
        return self

    @property
    def void(self) -> bool:
        """The game engine broke the game: it has no result to learn from or to rate players by."""
        return self.engine_error is not None


class GameRecord(BaseModel):
    """What re-creates a game exactly: replaying `moves` from `seed` reaches the same state."""

    model_config = ConfigDict(extra="forbid")

    game: str
    seed: int
    options: dict[str, Any] = Field(default_factory=dict)
    moves: list[str] = Field(
        default_factory=list,
        description="Canonical actions of the legal moves; the raw text of a final illegal/unparseable one.",
    )


class SeatView(BaseModel):
    """What the seat to move may know: the prompt for a model, the legal moves and facts for a heuristic.

    `info` holds only what this seat is allowed to see (its own card, its own resource values), so a
    heuristic opponent reading it cannot cheat.
    """

    game: str
    seat: int = Field(ge=0, lt=NUM_SEATS)
    turn: int = Field(description="Moves made before this one.")
    messages: list[dict[str, str]] = Field(
        description="Chat messages (system, user) for a model in this seat."
    )
    legal_moves: list[str] = Field(
        description="Canonical legal actions (a finite menu where the game has more)."
    )
    info: dict[str, Any] = Field(default_factory=dict)


@runtime_checkable
class Opponent(Protocol):
    """A player that is not the learning policy: returns the text of a move for the seat to move.

    Async because a model-backed opponent awaits an engine. The random and heuristic opponents live in
    `strop.sandbox.games.opponents`; an opponent that plays an earlier checkpoint needs a model engine,
    which lives in the agents layer (sandbox must not import agents), so it belongs there: an object with
    this `name` and an `act` that sends `view.messages` to the engine and returns the completion's text.
    """

    name: str

    async def act(self, view: SeatView) -> str: ...


class GameOptions(BaseModel):
    """A game's knobs; each adapter subclasses this (unknown options are refused with their names)."""

    model_config = ConfigDict(extra="forbid")


class GameAdapter(ABC):
    """Turns one TextArena game into the contract: prompts, parsing, legality, a heuristic.

    `env` arguments are the TextArena environment (untyped upstream). Adapters hold no per-game state, so
    one instance serves every game of its kind.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    options_model: ClassVar[type[GameOptions]] = GameOptions
    answer_format: ClassVar[str]  # one line that says how to write a move, shown in every prompt

    @abstractmethod
    def make_env(self, options: GameOptions) -> Any:
        """A fresh, un-reset TextArena environment."""

    @abstractmethod
    def rules(self, options: GameOptions, seat: int) -> str:
        """The system prompt: the rules as this seat should read them."""

    @abstractmethod
    def state_text(self, env: Any, seat: int) -> str:
        """The current position as this seat sees it (no hidden information of the other seat)."""

    @abstractmethod
    def info(self, env: Any, seat: int) -> dict[str, Any]:
        """Structured facts this seat may see, for heuristics."""

    @abstractmethod
    def legal_moves(self, env: Any, seat: int) -> list[str]:
        """Canonical legal actions now (a finite menu where the game allows infinitely many)."""

    @abstractmethod
    def parse(self, text: str) -> str | None:
        """The canonical action in a model's text, or None. Idempotent: parse(parse(t)) == parse(t)."""

    @abstractmethod
    def heuristic(self, view: SeatView, rng: random.Random) -> str:
        """A simple fixed strategy's move, from what the seat may see."""

    def illegal_reason(self, env: Any, seat: int, action: str) -> str | None:
        """Why a parsed action is illegal now, or None if it is legal."""
        legal = self.legal_moves(env, seat)
        return None if action in legal else f"{action} is not a legal move now; legal: {', '.join(legal)}"

    def messages(self, env: Any, seat: int, options: GameOptions) -> list[dict[str, str]]:
        """The chat prompt for the seat to move."""
        system = f"{self.rules(options, seat)}\n\nHow to answer: {self.answer_format}"
        user = f"{self.state_text(env, seat)}\n\nYour move. {self.answer_format}"
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def engine_log(env: Any, seat: int, limit: int = 12) -> list[str]:
    """The engine's recent game messages to this seat (results, moves made), oldest first.

    Read from the seat's TextArena observation list without draining it (TextArena's own
    `get_observation` empties it), and only the kinds that are news: not the rules prompt, not the board
    (the adapter renders the current one), not raw player text.
    """
    kinds = {"GAME_MESSAGE", "GAME_ACTION_DESCRIPTION"}
    lines = [
        str(message).strip().lstrip("# ")
        for _sender, message, kind in env.state.observations[seat]
        if getattr(kind, "name", "") in kinds
    ]
    return lines[-limit:]
