"""A live game: one TextArena environment behind the step-by-step contract of `base.py`.

TextArena gives a player a second try after an invalid move (error allowance 1) and ends the game on the
second; here a bad move loses at once, deterministically: the adapter checks the parsed action before the
engine sees it, and the engine's own allowance is set to zero as a safety net for anything the adapter
missed (the engine's verdict then stands, recorded as illegal). An exception raised by the engine itself
is not the player's fault: the game ends void (`MoveOutcome.ENGINE_ERROR`, rewards 0/0, no winner), so a
loop with many games in flight keeps going and no one is scored a loss for a bug in the game.

TextArena seeds Python's *global* `random` in `reset` and draws from it during play (Kuhn Poker deals
every round's cards mid-game). With many games in flight, or any other user of `random` in the process,
the deals would depend on interleaving and replay would break. Each game therefore owns its random state:
every call into the engine swaps the game's state in and the caller's back out, under a lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from strop.sandbox.games.base import (
    GameAdapter,
    GameOptions,
    GameOverError,
    GameRecord,
    GameResult,
    Move,
    MoveOutcome,
    SeatView,
)

log = logging.getLogger(__name__)
_RANDOM_LOCK = threading.RLock()  # the global `random` is process-wide


class Game:
    """One game in flight. Build it with `make_game(name, seed)` or `replay_game(record)`."""

    def __init__(self, adapter: GameAdapter, seed: int, options: GameOptions) -> None:
        self.adapter = adapter
        self.name = adapter.name
        self.seed = seed
        self.options = options
        self.history: list[Move] = []
        self._result: GameResult | None = None
        self._random_state: tuple[Any, ...] | None = None
        self._env = adapter.make_env(options)
        with self._own_random():
            self._env.reset(num_players=2, seed=seed)
        self._env.state.error_allowance = 0  # an invalid move the adapter missed ends the game, no retry

    # -- what a loop asks -------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def current_seat(self) -> int | None:
        """The seat to move, or None once the game is over."""
        return None if self.done else int(self._env.state.current_player_id)

    @property
    def turn(self) -> int:
        return len(self.history)

    @property
    def result(self) -> GameResult | None:
        return self._result

    @property
    def rewards(self) -> tuple[float, float] | None:
        return None if self._result is None else self._result.rewards

    def legal_moves(self) -> list[str]:
        seat = self._seat_to_move()
        return self.adapter.legal_moves(self._env, seat)

    def messages(self) -> list[dict[str, str]]:
        """The chat prompt for the seat to move."""
        seat = self._seat_to_move()
        return self.adapter.messages(self._env, seat, self.options)

    def view(self) -> SeatView:
        """Everything the seat to move may see."""
        seat = self._seat_to_move()
        return SeatView(
            game=self.name,
            seat=seat,
            turn=self.turn,
            messages=self.adapter.messages(self._env, seat, self.options),
            legal_moves=self.adapter.legal_moves(self._env, seat),
            info=self.adapter.info(self._env, seat),
        )

    def submit(self, text: str) -> Move:
        """Play the seat to move's text. Never raises for what the text says; raises on a finished game."""
        seat = self._seat_to_move()
        action = self.adapter.parse(text)
        if action is None:
            return self._forfeit(
                seat,
                text,
                None,
                MoveOutcome.UNPARSEABLE,
                f"no move found; expected: {self.adapter.answer_format}",
            )
        if (reason := self.adapter.illegal_reason(self._env, seat, action)) is not None:
            return self._forfeit(seat, text, action, MoveOutcome.ILLEGAL, reason)
        try:
            with self._own_random():
                self._env.step(action)
        except Exception as exc:  # an engine bug must not kill the other games in flight
            log.warning(
                "%s engine raised on %r (seed %d, turn %d): %r", self.name, action, self.seed, self.turn, exc
            )
            return self._void(seat, text, action, exc)
        state = self._env.state
        if state.game_info[seat].get("invalid_move"):
            return self._forfeit(
                seat,
                text,
                action,
                MoveOutcome.ILLEGAL,
                str(state.game_info[seat].get("reason", "invalid move")),
            )
        if state.done:
            self._result = self._engine_result(state)
        move = Move(seat=seat, text=text, action=action, outcome=MoveOutcome.LEGAL, done=self.done)
        self.history.append(move)
        return move

    # -- persistence ------------------------------------------------------------------------------------
    def record(self) -> GameRecord:
        """What re-creates this game: legal moves as canonical actions, a final bad move as its raw text."""
        moves = [
            m.action if m.outcome is MoveOutcome.LEGAL and m.action is not None else m.text
            for m in self.history
        ]
        return GameRecord(game=self.name, seed=self.seed, options=self.options.model_dump(), moves=moves)

    def state_dict(self) -> dict[str, Any]:
        """JSON data of everything that decides the rest of the game (for equality checks after replay)."""
        state = self._env.state
        return {
            "game": self.name,
            "seed": self.seed,
            "turn": self.turn,
            "engine_turn": state.turn,
            "current_seat": self.current_seat,
            "game_state": json.loads(json.dumps(state.game_state, sort_keys=True, default=str)),
            "moves": [m.model_dump(exclude={"text"}) for m in self.history],
            "result": None if self._result is None else self._result.model_dump(),
            "random": hashlib.sha256(repr(self._random_state).encode()).hexdigest()[:16],
        }

    # -- internals --------------------------------------------------------------------------------------
    def _seat_to_move(self) -> int:
        if self._result is not None:
            raise GameOverError(f"{self.name} (seed {self.seed}) is over: {self._result.reason}")
        return int(self._env.state.current_player_id)

    @contextmanager
    def _own_random(self) -> Iterator[None]:
        with _RANDOM_LOCK:
            outer = random.getstate()
            try:
                if self._random_state is not None:
                    random.setstate(self._random_state)
                yield
            finally:
                self._random_state = random.getstate()
                random.setstate(outer)

    def _forfeit(self, seat: int, text: str, action: str | None, outcome: MoveOutcome, reason: str) -> Move:
        rewards = (-1.0, 1.0) if seat == 0 else (1.0, -1.0)
        self._result = GameResult(
            rewards=rewards,
            winner=1 - seat,
            reason=f"seat {seat}: {outcome}: {reason}",
            forfeit=outcome,
            forfeited_by=seat,
            moves=self.turn + 1,
        )
        move = Move(seat=seat, text=text, action=action, outcome=outcome, reason=reason, done=True)
        self.history.append(move)
        return move

    def _void(self, seat: int, text: str, action: str, exc: Exception) -> Move:
        """The engine raised on an accepted move: the game ends with no winner and no loser."""
        reason = f"the game engine raised on {action!r}: {exc!r}"
        self._result = GameResult(
            rewards=(0.0, 0.0),
            winner=None,
            reason=f"seat {seat}: {MoveOutcome.ENGINE_ERROR}: {reason}",
            moves=self.turn + 1,
            engine_error=repr(exc),
        )
        move = Move(
            seat=seat, text=text, action=action, outcome=MoveOutcome.ENGINE_ERROR, reason=reason, done=True
        )
        self.history.append(move)
        return move

    def _engine_result(self, state: Any) -> GameResult:
        raw = state.rewards or {0: 0, 1: 0}
        rewards = (float(raw[0]), float(raw[1]))
        winner = None if rewards[0] == rewards[1] else (0 if rewards[0] > rewards[1] else 1)
        reason = str(state.game_info[0].get("reason", ""))
        return GameResult(rewards=rewards, winner=winner, reason=reason, moves=self.turn + 1)
