"""Games measured: win/draw/loss against fixed opponents per seat, the illegal-move rate, and Elo ratings.

SPIRAL judges a self-play policy by how it plays against players that do not learn: a random legal mover,
a simple heuristic per game, and earlier checkpoints of itself. Against the fixed opponents each held-out
seed is played twice, the policy once in each seat (seats are not equal: moving first in TicTacToe is worth a
lot), greedily, through the self-play loop with `opponent` set and the generic runner, so the games are
batched, stored and resumable like every other evaluation. The figures go on the model version under
`{game}/vs_{opponent}/...` (and `{game}/illegal_rate`), where `strop models list` and the promotion gate of
a `[stages.eval] target = "game"` read them.

Checkpoints play each other through `EngineOpponent` (a model engine behind the sandbox's `Opponent`
protocol; it lives here because sandbox must not import agents), and `elo_ratings` fits one rating per
player to all the pairwise series at once (Bradley-Terry, the model Elo approximates).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from strop.agents.engines.base import Engine, GenerationRequest, Message, SamplingParams
from strop.agents.loops.base import stable_id
from strop.agents.loops.selfplay import FIXED_OPPONENTS, LOOP_NAME, SelfPlayConfig, build_graph
from strop.agents.runner import Runner
from strop.memory.records import RunRecord
from strop.sandbox.games import Opponent, SeatView, SeriesResult, make_game, play_game
from strop.sandbox.tasks.base import Split, TaskSet
from strop.sandbox.tasks.games import game_label

RATES = ("win_rate", "draw_rate", "loss_rate")


class EngineOpponent:
    """A model as an opponent: sends the seat's chat messages to its engine and plays the reply's text."""

    def __init__(
        self,
        engine: Engine,
        name: str | None = None,
        *,
        max_tokens: int = 64,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.engine, self.name = engine, name or engine.model_version
        self.max_tokens, self.temperature, self.seed = max_tokens, temperature, seed

    async def act(self, view: SeatView) -> str:
        seed = int(stable_id(self.seed, view.game, view.turn, view.messages[-1]["content"])[:12], 16)
        request = GenerationRequest(
            messages=[Message(**m) for m in view.messages],
            sampling=SamplingParams(
                n=1, temperature=self.temperature, max_tokens=self.max_tokens, seed=seed, logprobs=False
            ),
        )
        [[completion]] = await self.engine.generate([request])
        return completion.text


class GameEvalConfig(BaseModel):
    """What a game evaluation measures."""

    model_config = ConfigDict(extra="forbid")

    n_tasks: int = Field(
        50,
        ge=1,
        description="Held-out seeds (the first n); each is played once from each seat against each opponent.",
    )
    opponents: list[str] = Field(
        default_factory=lambda: list(FIXED_OPPONENTS),
        description="Opponents: 'random', 'heuristic', or names given in `opponents=`.",
    )
    max_tokens: int = Field(64, ge=1, description="Most new tokens per move.")
    temperature: float = Field(
        0.0, ge=0.0, description="Sampling temperature of the policy's moves (0: greedy)."
    )
    seed: int = Field(0, description="Seeds the fixed opponents' choices (and sampling above temperature 0).")

    def loop_config(self, opponent: str) -> SelfPlayConfig:
        return SelfPlayConfig(
            opponent=opponent,
            games_per_task=2,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            rae=False,
            emit="none",
            seed=self.seed,
        )


class GameEvalResult(BaseModel):
    model_id: str
    label: str = Field(description="The games evaluated, e.g. 'tictactoe' (several joined by '+').")
    n_tasks: int
    # game label -> opponent -> seat ('0'/'1') -> {games, wins, draws, losses, forfeits, opponent_forfeits}
    counts: dict[str, dict[str, dict[str, dict[str, int]]]] = Field(default_factory=dict)
    # game label -> [illegal or unparseable policy moves, policy moves]
    moves: dict[str, list[int]] = Field(default_factory=dict)
    seconds: float = 0.0
    run_ids: list[str] = Field(default_factory=list)
    episodes_run: int = 0

    def scores(self, label: str | None = None) -> dict[str, float]:
        """Flat rates of one game (default: all games pooled): 'vs_random/win_rate', 'vs_random/seat0/...'."""
        labels = [label] if label is not None else list(self.counts)
        out: dict[str, float] = {}
        opponents = dict.fromkeys(o for g in labels for o in self.counts[g])
        for opp in opponents:
            both: dict[str, int] = {"games": 0, "wins": 0, "draws": 0, "losses": 0}
            for seat in ("0", "1"):
                row = {
                    k: sum(self.counts[g].get(opp, {}).get(seat, {}).get(k, 0) for g in labels) for k in both
                }
                out.update({f"vs_{opp}/seat{seat}/{k}": v for k, v in _rates(row).items()})
                both = {k: both[k] + row[k] for k in both}
            out.update({f"vs_{opp}/{k}": v for k, v in _rates(both).items()})
        bad, total = (sum(self.moves.get(g, [0, 0])[i] for g in labels) for i in (0, 1))
        out["illegal_rate"] = bad / total if total else 0.0
        return out

    def metrics(self) -> dict[str, Any]:
        """What goes on the model version: per game, and pooled under the joint label when there are several."""
        out: dict[str, Any] = {}
        for label in [*self.counts, *([self.label] if len(self.counts) > 1 else [])]:
            scores = self.scores(label if label in self.counts else None)
            out.update({f"{label}/{k}": v for k, v in scores.items()})
            out[f"{label}/n_tasks"] = self.n_tasks
        return out

    def series(self, opponent: str, label: str | None = None) -> SeriesResult:
        """The policy's record against `opponent` as a `SeriesResult` (for `elo_ratings`)."""
        labels = [label] if label is not None else list(self.counts)
        rows = [self.counts[g].get(opponent, {}).get(s, {}) for g in labels for s in ("0", "1")]
        total = {
            k: sum(r.get(k, 0) for r in rows)
            for k in ("games", "wins", "draws", "losses", "forfeits", "opponent_forfeits")
        }
        first = sum(self.counts[g].get(opponent, {}).get("0", {}).get("wins", 0) for g in labels) + sum(
            self.counts[g].get(opponent, {}).get("1", {}).get("losses", 0) for g in labels
        )
        return SeriesResult(first_seat_wins=first, **total)


def _rates(row: Mapping[str, int]) -> dict[str, float]:
    n = row["games"]
    if not n:
        return {**dict.fromkeys(RATES, 0.0), "score": 0.0}
    return {
        "win_rate": row["wins"] / n,
        "draw_rate": row["draws"] / n,
        "loss_rate": row["losses"] / n,
        "score": (row["wins"] + 0.5 * row["draws"]) / n,
    }


def eval_label(task_set: Any) -> str:
    """The games a task set deals, as one label: 'tictactoe', or 'tictactoe+kuhn_poker[rounds=5]'."""
    games = getattr(task_set, "games", None)
    if not games:
        return str(task_set.name)
    return "+".join(game_label(g, task_set.options_of(g)) for g in games)


def count_episodes(result: GameEvalResult, opponent: str, outcomes: Sequence[Mapping[str, Any]]) -> None:
    """Add stored episode outcomes (selfplay loop, `opponent` set) to the result's counts."""
    for o in outcomes:
        for r in o["results"]:
            if r.get("void"):  # the game engine broke the game: no result for either player
                continue
            per = result.counts.setdefault(r["label"], {}).setdefault(opponent, {})
            for seat in r["policy_seats"]:
                row = per.setdefault(
                    str(seat),
                    dict.fromkeys(("games", "wins", "draws", "losses", "forfeits", "opponent_forfeits"), 0),
                )
                row["games"] += 1
                row["wins" if r["winner"] == seat else "draws" if r["winner"] is None else "losses"] += 1
                if r["forfeit"] is not None:
                    row["forfeits" if r["forfeited_by"] == seat else "opponent_forfeits"] += 1
        label = o["results"][0]["label"] if o["results"] else o["game"]
        moves = result.moves.setdefault(label, [0, 0])
        moves[0] += int(o["illegal"]) + int(o["unparseable"])
        moves[1] += int(o["n"])


async def evaluate_games(
    policy: Engine,
    task_set: TaskSet,
    *,
    store: Any,
    model_id: str,
    config: GameEvalConfig | None = None,
    label: str | None = None,
    runner: Runner | None = None,
    record: bool = True,
    opponents: Mapping[str, Opponent] | None = None,
) -> GameEvalResult:
    """Play the model `policy` serves (registered as `model_id`) against each opponent on held-out seeds.

    One run per opponent, keyed by what was measured, so a second call reads the games from the store.
    `opponents` adds named opponents (e.g. `EngineOpponent`s of earlier checkpoints) to 'random' and 'heuristic'.
    """
    cfg = config or GameEvalConfig()
    label = label or eval_label(task_set)
    runner = runner or Runner(store)
    tasks = task_set.tasks(Split.HELDOUT, cfg.n_tasks)
    started = time.monotonic()
    res = GameEvalResult(model_id=model_id, label=label, n_tasks=len(tasks))
    for opponent in cfg.opponents:
        loop_cfg = cfg.loop_config(opponent)
        run_id = stable_id(
            "game-eval",
            model_id,
            label,
            len(tasks),
            opponent,
            loop_cfg.model_dump_json(exclude_defaults=True),
        )
        run = RunRecord(
            id=run_id,
            loop=f"{LOOP_NAME}_eval",
            model_ids=[model_id],
            config={"task_set": label, "opponent": opponent, "eval": cfg.model_dump(mode="json")},
        )
        graph = build_graph(policy, loop_cfg, opponents=opponents)
        done = await runner.run(graph, tasks, run, label=f"game eval vs {opponent}")
        res.episodes_run += done.episodes_run
        res.run_ids.append(run_id)
        count_episodes(
            res, opponent, [ep.outcome for ep in await store.alist_episodes(run_id, children=False)]
        )
    res.seconds = time.monotonic() - started
    if record:
        await store.aupdate_model_metrics(model_id, res.metrics())
    return res


async def play_match(
    game: str, a: Opponent, b: Opponent, n_games: int, *, seed: int = 0, concurrency: int = 64, **options: Any
) -> SeriesResult:
    """`play_series` with the games in flight together, so model players' engines batch across them.

    A seeded opponent object shared by concurrent games draws in an order that depends on scheduling; for
    exactly reproducible series give each side a deterministic player (greedy engines, `EngineOpponent`)."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> tuple[int, Any]:
        a_seat = i % 2
        async with sem:
            result = await play_game(make_game(game, seed + i, **options), (a, b) if a_seat == 0 else (b, a))
        return a_seat, result

    out = SeriesResult()
    for a_seat, result in await asyncio.gather(*(one(i) for i in range(n_games))):
        out.add(result, a_seat)
    return out


def elo_ratings(
    series: Mapping[tuple[str, str], SeriesResult],
    *,
    anchor: str | None = "random",
    anchor_rating: float = 1000.0,
    prior_games: float = 1.0,
    iterations: int = 2000,
) -> dict[str, float]:
    """One Elo rating per player, fitted to every pairwise series at once (Bradley-Terry by minorise-maximise).

    `series[(a, b)]` is a's record against b; draws count half. `prior_games` adds that many drawn games to
    every pair that played, so a perfect record gives a large but finite gap rather than infinity. Ratings are
    shifted so `anchor` (when it played) has `anchor_rating`, else so their mean is `anchor_rating`. Players
    that never meet (directly or through others) are not comparable; their offsets are arbitrary.
    """
    wins: dict[tuple[str, str], float] = {}
    games: dict[tuple[str, str], float] = {}
    for (a, b), s in series.items():
        if a == b or s.games == 0:
            continue
        for x, y, w in ((a, b, s.wins + 0.5 * s.draws), (b, a, s.losses + 0.5 * s.draws)):
            wins[(x, y)] = wins.get((x, y), 0.0) + w
            games[(x, y)] = games.get((x, y), 0.0) + s.games
    players = sorted({p for pair in games for p in pair})
    for pair in list(games):
        wins[pair] += prior_games / 2
        games[pair] += prior_games
    gamma = dict.fromkeys(players, 1.0)
    for _ in range(iterations):
        new = {}
        for i in players:
            w = sum(wins[(i, j)] for j in players if (i, j) in games)
            d = sum(games[(i, j)] / (gamma[i] + gamma[j]) for j in players if (i, j) in games)
            new[i] = w / d if d else gamma[i]
        scale = math.exp(sum(math.log(v) for v in new.values()) / len(new)) if new else 1.0
        delta = max((abs(new[p] / scale - gamma[p]) for p in players), default=0.0)
        gamma = {p: new[p] / scale for p in players}
        if delta < 1e-10:
            break
    elo = {p: 400.0 * math.log10(gamma[p]) for p in players}
    shift = anchor_rating - (elo[anchor] if anchor in elo else sum(elo.values()) / max(len(elo), 1))
    return {p: r + shift for p, r in elo.items()}
