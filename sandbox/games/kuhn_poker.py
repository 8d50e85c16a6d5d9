"""Kuhn Poker (TextArena `KuhnPoker-v0`): three cards, hidden information, bluffing.

SPIRAL's strongest transfer came from Kuhn Poker alone, so the game must be the real one. TextArena 0.7.4
lets a player bet and call without paying: the pot stays at the two antes whatever is bet, so betting costs
nothing and folding is never right. `_KuhnPokerEnv` makes [bet] and [call] put one chip in the pot, as the
rules (and TextArena's own prompt) say. It also keeps the round's action history, which the engine's
action tree cannot tell apart ([bet] and [check][bet] leave the same choices).

The game lasts `rounds` rounds (TextArena's v0: 3); the first player alternates, seat 1 opening round 1.
The seat with more chips at the end wins (+1/-1); equal chips is a draw.
"""

from __future__ import annotations

import random
import re
from typing import Any, ClassVar

from pydantic import Field
from textarena.envs.KuhnPoker.env import KuhnPokerEnv

from strop.sandbox.games.base import GameAdapter, GameOptions, SeatView, engine_log
from strop.sandbox.games.parsing import find_move, last_match

ACTIONS = ("check", "bet", "call", "fold")
CARDS = {0: "J", 1: "Q", 2: "K"}
_WORD = re.compile(r"^\s*(?:action\s*:?\s*)?(check|bet|call|fold)\s*[.!]?\s*$", re.IGNORECASE)
_FREE_WORD = re.compile(r"\b(check|bet|call|fold)\b", re.IGNORECASE)
_CANONICAL = re.compile(r"\[(check|bet|call|fold)\]", re.IGNORECASE)


class KuhnPokerOptions(GameOptions):
    rounds: int = Field(3, ge=1, le=25, description="Rounds per game (TextArena KuhnPoker-v0 plays 3).")


class _KuhnPokerEnv(KuhnPokerEnv):  # type: ignore[misc]  # textarena is untyped
    """TextArena's Kuhn Poker with bets that cost a chip, and the round's history kept."""

    def _init_round(self) -> None:
        super()._init_round()
        self.state.game_state["round_history"] = []

    def step(self, action: str) -> Any:
        game_state, seat = self.state.game_state, self.state.current_player_id
        match = _CANONICAL.search(action)
        move = match.group(1).lower() if match else ""
        if move in game_state["current_legal_action_tree"]:
            if move in ("bet", "call"):
                game_state["pot"] += 1
                game_state["player_chips"][seat] -= 1
            game_state["round_history"].append(move)
        return super().step(action)


class KuhnPoker(GameAdapter):
    name: ClassVar[str] = "kuhn_poker"
    description: ClassVar[str] = (
        "Kuhn Poker, J/Q/K, bets cost a chip, most chips after `rounds` rounds wins (TextArena KuhnPoker-v0)."
    )
    options_model: ClassVar[type[GameOptions]] = KuhnPokerOptions
    answer_format: ClassVar[str] = "End your reply with one legal action in square brackets, e.g. [check]."

    def make_env(self, options: GameOptions) -> Any:
        assert isinstance(options, KuhnPokerOptions)
        return _KuhnPokerEnv(max_rounds=options.rounds)

    def rules(self, options: GameOptions, seat: int) -> str:
        assert isinstance(options, KuhnPokerOptions)
        n = options.rounds
        return (
            f"You are Player {seat} in a {n}-round game of Kuhn Poker against Player {1 - seat}.\n"
            "The deck has three cards: J < Q < K. Each round both players put 1 chip (the ante) in the pot "
            "and get one card; you never see your opponent's card until a showdown. The first player "
            "alternates each round, Player 1 opening round 1.\n"
            "Actions: [check] pass (only if nobody has bet this round); [bet] add 1 chip (only if nobody has "
            "bet); [call] match the bet with 1 chip; [fold] give up the round, the opponent takes the pot.\n"
            "Check-check or bet-call ends the round in a showdown: the higher card takes the pot.\n"
            f"After {n} rounds the player with more chips wins; equal chips is a draw. "
            "An action that is not legal at that moment loses the whole game at once."
        )

    def state_text(self, env: Any, seat: int) -> str:
        info = self.info(env, seat)
        opened = "You opened this round." if info["opened"] else "Your opponent opened this round."
        history = " then ".join(f"[{a}]" for a in info["history"]) or "nothing yet"
        lines = [
            f"Round {info['round']} of {info['rounds']}. Your card: {info['card']}.",
            f"Chips so far (antes and bets paid): you {info['chips']:+d}, opponent {info['opponent_chips']:+d}. "
            f"Pot: {info['pot']}.",
            f"{opened} Actions this round: {history}.",
            f"Legal actions now: {', '.join(self.legal_moves(env, seat))}.",
        ]
        if events := engine_log(env, seat):
            lines += ["", "Recent events:", *(f"- {e}" for e in events)]
        return "\n".join(lines)

    def info(self, env: Any, seat: int) -> dict[str, Any]:
        gs = env.state.game_state
        return {
            "card": CARDS[gs["player_cards"][seat]],
            "round": gs["current_round"],
            "rounds": env.max_rounds,
            "history": list(gs.get("round_history", [])),
            "opened": gs["starting_player"] == seat,
            "chips": gs["player_chips"][seat],
            "opponent_chips": gs["player_chips"][1 - seat],
            "pot": gs["pot"],
        }

    def legal_moves(self, env: Any, seat: int) -> list[str]:
        tree = env.state.game_state["current_legal_action_tree"]
        return [f"[{a}]" for a in ACTIONS if isinstance(tree, dict) and a in tree]

    def parse(self, text: str) -> str | None:
        return find_move(text, self._read, self._read_free)

    def heuristic(self, view: SeatView, rng: random.Random) -> str:
        """K: bet, or call a bet. J: check, or fold to a bet. Q: bet a third of the time, call half the time."""
        legal, card = set(view.legal_moves), view.info["card"]
        if "[check]" in legal:  # nobody has bet: check or bet
            bet = card == "K" or (card == "Q" and rng.random() < 1 / 3)
            return "[bet]" if bet else "[check]"
        call = card == "K" or (card == "Q" and rng.random() < 0.5)
        return "[call]" if call else "[fold]"

    @staticmethod
    def _read(candidate: str) -> str | None:
        match = _WORD.match(candidate)
        return f"[{match.group(1).lower()}]" if match else None

    @staticmethod
    def _read_free(text: str) -> str | None:
        match = last_match(_FREE_WORD, text)
        return f"[{match.group(1).lower()}]" if match else None
