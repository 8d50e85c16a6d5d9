"""Simple Negotiation (TextArena `SimpleNegotiation-v0`): trading with private values.

Each seat holds five resources and values them privately (near public base values); the seat whose total
value rises more wins. A move is one action: an offer, [Accept] or [Deny]. Only the canonical action reaches
the engine and the opponent, never the model's surrounding text, so a seat's reasoning stays private.

Two engine quirks are fixed in `_SimpleNegotiationEnv`, because both make the game lopsided:
- TextArena keeps a declined offer on the table, so its proposer could later "accept" it (trading with
  itself). Here an offer stands for one reply: accepted at once, or it lapses.
- TextArena ends the game after `max_turns + 1` moves, so seat 0 gets one move more. Here `turns` is the
  exact number of moves (the engine gets `turns - 1`).
Stricter than the engine: [Accept] with no offer to accept is illegal (the engine shrugs it off).
"""

from __future__ import annotations

import math
import random
import re
from typing import Any, ClassVar

from pydantic import Field
from textarena.envs.SimpleNegotiation.env import SimpleNegotiationEnv

from strop.sandbox.games.base import GameAdapter, GameOptions, SeatView, engine_log
from strop.sandbox.games.parsing import find_move, last_match

RESOURCES = ("Wheat", "Wood", "Sheep", "Brick", "Ore")
_OFFER = re.compile(r"^\s*offer\s*:?\s*(.+)$", re.IGNORECASE | re.DOTALL)
_SIDES = re.compile(r"\s*(?:->|→|=>|\bfor\b)\s*", re.IGNORECASE)
_ITEM = re.compile(r"(\d+)\s*x?\s+([A-Za-z]+)")
_ACCEPT = re.compile(r"^\W*(?:i\s+)?accept(?:\s+(?:the|your)?\s*offer)?\W*$", re.IGNORECASE)
_DENY = re.compile(
    r"^\W*(?:i\s+)?(?:deny|reject|decline|pass)(?:\s+(?:the|your)?\s*offer)?\W*$", re.IGNORECASE
)
_FREE_OFFER = re.compile(r"offer\s*:?\s*([^\n\[\]]+?(?:->|→|=>)[^\n\[\]]+)", re.IGNORECASE)

Bundle = dict[str, int]


class NegotiationOptions(GameOptions):
    turns: int = Field(10, ge=2, le=60, description="Moves in the whole game, both seats together.")


class _SimpleNegotiationEnv(SimpleNegotiationEnv):  # type: ignore[misc]  # textarena is untyped
    """TextArena's Simple Negotiation where an offer lapses unless its recipient accepts it at once."""

    def _check_and_execute_existing_offer(self, player_id: int, action: str) -> None:
        super()._check_and_execute_existing_offer(player_id=player_id, action=action)
        if self.state.game_state["current_offer"] and not self.state.done:
            self.state.game_state["current_offer"] = None  # declined (or ignored): it lapses


def _bundle(text: str) -> Bundle | None:
    """'2 Wheat, 1 Ore' -> {'Wheat': 2, 'Ore': 1}; None if anything in it is not a quantity of a resource."""
    items = _ITEM.findall(text)
    leftover = [w for w in re.split(r"[\s,;&.+]+", _ITEM.sub(" ", text)) if w and w.lower() != "and"]
    if not items or leftover:
        return None
    bundle: Bundle = {}
    for qty, raw in items:
        name = raw.title()
        if name not in RESOURCES and name.endswith("s") and name[:-1] in RESOURCES:
            name = name[:-1]
        if name not in RESOURCES or int(qty) <= 0:
            return None
        bundle[name] = bundle.get(name, 0) + int(qty)
    return bundle


def _side(bundle: Bundle) -> str:
    return ", ".join(f"{bundle[r]} {r}" for r in RESOURCES if bundle.get(r))


def _offer_text(give: Bundle, ask: Bundle) -> str:
    return f"[Offer: {_side(give)} -> {_side(ask)}]"


def _read_offer(body: str) -> str | None:
    sides = _SIDES.split(body.strip().rstrip("."), maxsplit=1)
    if len(sides) != 2:
        return None
    give, ask = _bundle(sides[0]), _bundle(sides[1])
    return _offer_text(give, ask) if give and ask else None


def parse_offer(action: str) -> tuple[Bundle, Bundle]:
    """(what the proposer gives, what it asks for) of a canonical offer."""
    give, ask = action.removeprefix("[Offer: ").removesuffix("]").split(" -> ")
    return _bundle(give) or {}, _bundle(ask) or {}


def _value(bundle: Bundle, values: dict[str, int]) -> int:
    return sum(q * values[r] for r, q in bundle.items())


def _holds(resources: dict[str, int], bundle: Bundle) -> bool:
    return all(resources.get(r, 0) >= q for r, q in bundle.items())


class SimpleNegotiation(GameAdapter):
    name: ClassVar[str] = "simple_negotiation"
    description: ClassVar[str] = (
        "Trade five resources with private values; the larger gain in value wins "
        "(TextArena SimpleNegotiation-v0)."
    )
    options_model: ClassVar[type[GameOptions]] = NegotiationOptions
    answer_format: ClassVar[str] = (
        "End your reply with exactly one action: [Offer: 2 Wheat, 1 Wood -> 1 Brick] "
        "(you give -> you get), [Accept] or [Deny]."
    )

    def make_env(self, options: GameOptions) -> Any:
        assert isinstance(options, NegotiationOptions)
        return _SimpleNegotiationEnv(max_turns=options.turns - 1)

    def rules(self, options: GameOptions, seat: int) -> str:
        assert isinstance(options, NegotiationOptions)
        return (
            f"You are Player {seat} in a trading game against Player {1 - seat}. There are five resources: "
            "Wheat, Wood, Sheep, Brick and Ore. Each player holds some of each and values them privately, "
            "near the base values 5, 10, 15, 25 and 40 per unit.\n"
            "On your turn you take one action: make an offer, [Offer: 2 Wheat, 1 Wood -> 1 Brick] (what you "
            "give -> what you ask for; you must hold what you give); accept the offer your opponent has just "
            "made, [Accept] (you must hold what it asks for); or [Deny] to decline or pass. An offer stands "
            "for one reply: unless accepted at once, it lapses.\n"
            f"The game lasts {options.turns} moves, players alternating, Player 0 first. At the end the "
            "player whose total value (by their own values) rose more wins; equal gains is a draw. "
            "An illegal action (accepting nothing, offering what you lack) loses the game at once."
        )

    def state_text(self, env: Any, seat: int) -> str:
        info = self.info(env, seat)
        lines = ["Your resources (quantity x your value per unit):"]
        lines += [f"  {r}: {info['resources'][r]} x {info['values'][r]}" for r in RESOURCES]
        lines.append(f"Your total value: {info['value']} (change since the start: {info['change']:+d}).")
        if offer := info["offer"]:
            lines.append(
                f"Player {1 - seat} offers you: you get {_side(offer['get'])}, you give "
                f"{_side(offer['give'])}. Reply [Accept] to take it; anything else declines it."
            )
        else:
            lines.append("No offer is waiting for your reply.")
        lines.append(f"Moves left in the game, this one included: {info['moves_left']}.")
        if events := engine_log(env, seat):
            lines += ["", "Recent events:", *(f"- {e}" for e in events)]
        return "\n".join(lines)

    def info(self, env: Any, seat: int) -> dict[str, Any]:
        gs = env.state.game_state
        values = dict(gs["player_values"][seat])
        offer = gs["current_offer"]
        mine = None
        if offer and offer["to_player"] == seat:
            get, give = dict(offer["offered_resources"]), dict(offer["requested_resources"])
            mine = {"get": get, "give": give, "gain": _value(get, values) - _value(give, values)}
        return {
            "resources": dict(gs["player_resources"][seat]),
            "values": values,
            "base_values": dict(env.base_values),
            "value": gs["inventory_value"][seat]["current"],
            "change": gs["inventory_value"][seat]["change"],
            "offer": mine,
            "moves_left": env.state.max_turns + 1 - env.state.turn,
        }

    def legal_moves(self, env: Any, seat: int) -> list[str]:
        """[Deny], [Accept] when there is an offer to accept, and one-for-one offers of what the seat holds."""
        gs = env.state.game_state
        resources = gs["player_resources"][seat]
        moves = ["[Deny]"]
        if self.illegal_reason(env, seat, "[Accept]") is None:
            moves.append("[Accept]")
        moves += [
            _offer_text({a: 1}, {b: 1}) for a in RESOURCES if resources[a] >= 1 for b in RESOURCES if b != a
        ]
        return moves

    def illegal_reason(self, env: Any, seat: int, action: str) -> str | None:
        gs = env.state.game_state
        resources = gs["player_resources"][seat]
        if action == "[Accept]":
            offer = gs["current_offer"]
            if not offer or offer["to_player"] != seat:
                return "there is no offer to accept"
            if not _holds(resources, offer["requested_resources"]):
                return "you do not hold what the offer asks for"
            return None
        if action.startswith("[Offer: "):
            give, _ask = parse_offer(action)
            return None if _holds(resources, give) else "you do not hold what you offered"
        return None  # [Deny]

    def parse(self, text: str) -> str | None:
        return find_move(text, self._parse_move, self._parse_free_move)

    def heuristic(self, view: SeatView, rng: random.Random) -> str:
        """Accept an offer that gains value; else offer a fair-by-base-values trade that gains a little."""
        info = view.info
        if info["offer"] and info["offer"]["gain"] > 0 and "[Accept]" in view.legal_moves:
            return "[Accept]"
        values, base, held = info["values"], info["base_values"], info["resources"]
        best: tuple[int, str] | None = None
        for give in RESOURCES:
            for get in RESOURCES:
                qty = math.ceil(base[get] / base[give])  # fair to an opponent valuing near the base
                gain = values[get] - qty * values[give]
                if give != get and held[give] >= qty and gain > 0 and (best is None or gain > best[0]):
                    best = (gain, _offer_text({give: qty}, {get: 1}))
        return best[1] if best else "[Deny]"

    @staticmethod
    def _parse_move(candidate: str) -> str | None:
        if _ACCEPT.match(candidate):
            return "[Accept]"
        if _DENY.match(candidate):
            return "[Deny]"
        match = _OFFER.match(candidate)
        return _read_offer(match.group(1)) if match else None

    @staticmethod
    def _parse_free_move(text: str) -> str | None:
        if match := last_match(_FREE_OFFER, text):
            return _read_offer(match.group(1))
        stripped = text.strip()
        return SimpleNegotiation._parse_move(stripped) if len(stripped) < 40 else None
