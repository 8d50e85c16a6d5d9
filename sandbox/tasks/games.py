"""Game seeds as tasks, so self-play runs through the same runner, recipes and splits as everything else.

The runner feeds a loop one `Task` per episode and keys episodes by task id; recipes take fresh training
tasks every cycle and keep held-out tasks for evaluation. A game has no question and no answer, but it has a
seed (Kuhn Poker's deals, Simple Negotiation's holdings and values), so a task here is one (game, seed): the
self-play loop plays that game from that seed, and the evaluation plays held-out seeds against fixed
opponents. The split is a hash of (game, seed), like every other task set's split, so a held-out seed is never
trained on, whatever the seed offset or the number of tasks drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from strop.sandbox.tasks.base import Split, Task, Verdict
from strop.sandbox.tasks.guard import split_of


def game_label(game: str, options: dict[str, Any] | None = None) -> str:
    """A game's name with its options, e.g. 'kuhn_poker[rounds=5]': the key of its baselines and metrics."""
    if not options:
        return game
    return f"{game}[{','.join(f'{k}={options[k]}' for k in sorted(options))}]"


@dataclass(frozen=True)
class GameTaskSet:
    """One task per (game, seed); several games are dealt in turn."""

    games: tuple[str, ...] = field(
        default=("tictactoe",),
        metadata={
            "help": "Games to play: tictactoe, kuhn_poker, simple_negotiation (a list or comma-separated names; "
            "several are dealt in turn, SPIRAL's multi-game training)."
        },
    )
    game_options: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata={
            "help": "Per game, its options, e.g. {kuhn_poker = {rounds = 5}} (see each game's options)."
        },
    )
    seed: int = field(default=0, metadata={"help": "First game seed; splits do not depend on it."})
    heldout_fraction: float = field(
        default=0.2, metadata={"help": "Share of (game, seed) pairs kept held out."}
    )
    name: str = field(default="games", metadata={"help": "Task-set name, the prefix of task ids."})

    def __post_init__(self) -> None:
        from strop.sandbox.games.registry import game_names

        games = self.games
        if isinstance(games, str):  # `games="tictactoe,kuhn_poker"` from a CLI option or a recipe
            games = tuple(g.strip() for g in games.split(",") if g.strip())
        object.__setattr__(self, "games", tuple(games))
        known = game_names()
        bad = [g for g in self.games if g not in known]
        if bad or not self.games:
            raise ValueError(f"games must be drawn from {', '.join(known)}; got {list(self.games)!r}")
        if len(set(self.games)) != len(self.games):
            raise ValueError(f"games lists a game twice: {list(self.games)!r}")
        if extra := sorted(set(self.game_options) - set(self.games)):
            raise ValueError(f"game_options names games that are not played: {extra}")
        if self.game_options:  # checked now, by the game's own options model, not at the first move
            from strop.sandbox.games.registry import get_adapter

            for game, options in self.game_options.items():
                try:
                    get_adapter(game).options_model(**options)
                except ValueError as e:
                    raise ValueError(f"game_options of {game}: {e}") from None
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1); got {self.heldout_fraction}")

    def options_of(self, game: str) -> dict[str, Any]:
        return dict(self.game_options.get(game, {}))

    def tasks(self, split: Split | str, n: int | None = None) -> list[Task]:
        """The first `n` (game, seed) pairs of a split, seeds counting up from `seed` (1000 when n is None)."""
        split = Split(split)
        want = n if n is not None else 1000
        out: list[Task] = []
        i = 0
        while len(out) < want:
            game, seed = self.games[i % len(self.games)], self.seed + i // len(self.games)
            i += 1
            if split_of(f"{game}/{seed}", self.heldout_fraction) != split:
                continue
            options = self.options_of(game)
            out.append(
                Task(
                    id=f"{self.name}/{split}/{game}/{seed}",
                    set_name=self.name,
                    split=split,
                    prompt=f"Play {game_label(game, options)} from seed {seed}; each seat's prompt comes from the game.",
                    answer="",
                    metadata={"game": game, "seed": seed, "options": options, "answer_type": "game"},
                )
            )
        return out

    def verify(self, task: Task, output: str) -> Verdict:
        return Verdict(
            reward=0.0,
            correct=False,
            extracted=None,
            reason="a game task is scored by playing it (the selfplay loop, strop eval-game), not by "
            "checking an answer",
        )
