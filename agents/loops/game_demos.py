"""Imitation warm start for self-play: a fixed teacher plays whole games, and each of its moves becomes an SFT
example for the policy, prompted exactly as the self-play loop prompts the policy in that position.

Why: a small base model (SmolLM2-135M) mostly answers a game prompt with an illegal move ("[12]", a taken
cell), so nearly every self-play game ends by forfeit after two moves and the policy gradient has nothing to
learn from (docs/games.md). Supervised fine-tuning on a teacher's legal moves, with the same prompts, teaches
the answer format and legal play first; self-play then starts from games that reach a result
(`recipes/selfplay-tictactoe-warm.toml`).

start: the task names a game and a seed (the `games` task set, exactly as `selfplay` reads it:
`selfplay.plan_games`); against an opponent, games come in pairs from one seed, the teacher in seat 0, then
seat 1 -> move: every unfinished game advances one move, the teacher moving in its seats and the opponent in
the others, each seeded by the position (`selfplay.fixed_player`), so a killed run resumes mid-game with the
moves it would have made -> move ... -> record: the games are replayed move by move, and each teacher move
becomes one SFT example whose prompt is that seat's `view.messages` and whose completion is the move text.

No model generates anything here, so the loop asks for no engine (its spec has no roles): a recipe stage
still trains its `train.role` (the policy) on the examples, and `strop run game-demos` needs no weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from string import Formatter
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from strop.agents.loops.base import stable_id
from strop.agents.loops.registry import LoopResources, LoopSpec, register_loop
from strop.agents.loops.selfplay import SelfPlayConfig, fixed_player, plan_games
from strop.memory.records import EpisodeRecord, ExampleKind, ExampleRecord, Role, StepRecord
from strop.sandbox.games import GameResult, MoveOutcome, get_adapter, make_game, replay_game
from strop.sandbox.tasks.base import Split, Task

LOOP_NAME = "game_demos"
TEACHERS = ("heuristic", "random")
OPPONENTS = ("random", "heuristic", "teacher")


class GameDemosConfig(BaseModel):
    """Which games are played, who teaches and against whom, and how a move is written as a completion."""

    model_config = ConfigDict(extra="forbid")

    game: str | None = Field(
        None,
        description="Game to play; None: the task's own (the `games` task set names "
        "one per task), as in the selfplay loop.",
    )
    game_options: dict[str, Any] = Field(
        default_factory=dict, description="Game options over the task's, e.g. {rounds = 5} for kuhn_poker."
    )
    games_per_task: int = Field(
        2,
        ge=1,
        le=64,
        description="Games per episode. Against an opponent they come in "
        "pairs from one seed, the teacher in seat 0, then in seat 1 (so it must be even: "
        "both seats get demonstrated); game pair j > 0 plays a seed derived from the "
        "task's, as in the selfplay loop.",
    )
    teacher: str = Field(
        "heuristic",
        description="Who demonstrates: 'heuristic' (the game's fixed strategy: "
        "TicTacToe wins, blocks, takes the centre, then a corner) or 'random' (a uniformly random "
        "legal move: teaches the format and legality only).",
    )
    opponent: str = Field(
        "random",
        description="Who the teacher plays: 'random', 'heuristic', or 'teacher' (the "
        "teacher plays both seats, and both seats' moves are demonstrated).",
    )
    completion_template: str = Field(
        "{move}",
        description="The completion for a teacher move, with {move} the "
        "move as the game writes it (e.g. '[4]'); it must still parse as that move.",
    )
    seed: int = Field(
        0,
        description="Seeds the teacher's and the opponent's tie-breaking, by position; a recipe "
        "adds the cycle number.",
    )

    @field_validator("teacher")
    @classmethod
    def _known_teacher(cls, v: str) -> str:
        if v not in TEACHERS:
            raise ValueError(f"unknown teacher {v!r}: use one of {', '.join(TEACHERS)}")
        return v

    @field_validator("opponent")
    @classmethod
    def _known_opponent(cls, v: str) -> str:
        if v not in OPPONENTS:
            raise ValueError(
                f"unknown opponent {v!r}: use one of {', '.join(OPPONENTS)} ('teacher': the teacher "
                "plays both seats)"
            )
        return v

    @field_validator("completion_template")
    @classmethod
    def _one_move_field(cls, v: str) -> str:
        fields = {name for _, name, _, _ in Formatter().parse(v) if name is not None}
        if fields != {"move"}:
            raise ValueError(
                f"completion_template {v!r} must use {{move}} and no other field (found "
                f"{sorted(fields) or 'none'}); write a literal brace as {{{{ or }}}}"
            )
        return v

    @model_validator(mode="after")
    def _both_seats(self) -> GameDemosConfig:
        if self.opponent != "teacher" and self.games_per_task % 2:
            raise ValueError(
                f"games_per_task = {self.games_per_task} against an opponent: use an even number, so "
                "the teacher plays each seed from seat 0 and from seat 1 (an odd count would never "
                "show it the second seat's last game)"
            )
        return self

    def match(self) -> SelfPlayConfig:
        """The selfplay config that plans the same games (so tasks, seeds and seats are read one way only)."""
        return SelfPlayConfig(
            game=self.game,
            game_options=self.game_options,
            games_per_task=self.games_per_task,
            opponent=None if self.opponent == "teacher" else self.opponent,
        )


class GameDemosState(TypedDict, total=False):
    """The loop's state, JSON only (a checkpointer persists it; a killed run replays each game's record)."""

    task: dict[str, Any]
    run_id: str
    episode_id: str
    # per game: {"record": GameRecord JSON, "label", "teacher_seats": [...], "opponent": name,
    #            "moves": [{"seat", "turn", "player", "text", "action", "outcome", "reason", "teacher"}],
    #            "done": bool}
    games: list[dict[str, Any]]
    episode: dict[str, Any]


def completion_of(cfg: GameDemosConfig, game: str, move: str) -> str:
    """The teacher's `move` written as a completion; refused if the game would read it as another move.

    A template that changes the move (e.g. one with a number in it that the parser picks up) would train the
    policy to write moves the game reads otherwise: better to stop at the first move than to teach that."""
    text = cfg.completion_template.format(move=move)
    adapter = get_adapter(game)
    if adapter.parse(text) != adapter.parse(move):
        raise ValueError(
            f"completion_template {cfg.completion_template!r} turns the move {move!r} into {text!r}, "
            f"which {game} reads as {adapter.parse(text)!r}; keep the move the last thing it can read"
        )
    return text


def build_graph(config: GameDemosConfig | None = None) -> StateGraph:
    """The uncompiled graph; it takes no engine (the teacher and the opponent are fixed players)."""
    cfg = config or GameDemosConfig()

    def start(state: GameDemosState) -> dict[str, Any]:
        games = []
        for g in plan_games(Task.model_validate(state["task"]), cfg.match()):
            teacher_seats = [0, 1] if cfg.opponent == "teacher" else g["policy_seats"]
            games.append(
                {
                    "record": g["record"],
                    "label": g["label"],
                    "teacher_seats": teacher_seats,
                    "opponent": cfg.opponent,
                    "moves": [],
                    "done": False,
                }
            )
        return {"games": games}

    async def move(state: GameDemosState) -> dict[str, Any]:
        games = [dict(g) for g in state["games"]]
        for g in games:
            if g["done"]:
                continue
            game = replay_game(g["record"])
            view = game.view()
            teaching = view.seat in g["teacher_seats"]
            name = cfg.teacher if teaching else cfg.opponent
            # The opponent's stream is selfplay's ('opponent'): it meets a position as selfplay's opponent would.
            player = fixed_player(
                name, cfg.seed, "teacher" if teaching else "opponent", game.seed, *game.record().moves
            )
            text = await player.act(view)
            if teaching:
                text = completion_of(cfg, game.record().game, text)
            m = game.submit(text)
            # A fixed teacher plays from the legal-move menu; a game engine that raises on its move voids the game.
            if teaching and m.outcome not in (MoveOutcome.LEGAL, MoveOutcome.ENGINE_ERROR):
                raise RuntimeError(
                    f"bug: teacher {cfg.teacher!r} played {text!r} in {g['label']}: {m.reason}"
                )
            g["moves"] = [
                *g["moves"],
                {
                    "seat": view.seat,
                    "turn": view.turn,
                    "player": "teacher" if teaching else name,
                    "text": text,
                    "action": m.action,
                    "outcome": str(m.outcome),
                    "reason": m.reason,
                    "teacher": teaching,
                },
            ]
            g["record"], g["done"] = game.record().model_dump(mode="json"), game.done
        return {"games": games}

    def after_move(state: GameDemosState) -> str:
        return "record" if all(g["done"] for g in state["games"]) else "move"

    def record(state: GameDemosState) -> dict[str, Any]:
        return {"episode": episode_of(state, cfg).model_dump(mode="json")}

    graph = StateGraph(GameDemosState)
    graph.add_node("start", start)
    graph.add_node("move", move)
    graph.add_node("record", record)
    graph.add_edge(START, "start")
    graph.add_edge("start", "move")
    graph.add_conditional_edges("move", after_move, ["move", "record"])
    graph.add_edge("record", END)
    return graph


def episode_of(state: GameDemosState, cfg: GameDemosConfig) -> EpisodeRecord:
    """The episode: every move a step, every teacher move of a training task one SFT example.

    Each game is replayed from its seed move by move, so an example's prompt is the view of the seat to move in
    exactly that position: what the selfplay loop sends the policy there (`view.messages`). A void game (the game
    engine raised) teaches nothing: its moves are kept as steps, its examples dropped."""
    task = Task.model_validate(state["task"])
    eid = state["episode_id"]
    train = task.split == Split.TRAIN
    teacher_version = f"teacher:{cfg.teacher}"
    steps: list[StepRecord] = []
    examples: list[ExampleRecord] = []
    results: list[GameResult] = []
    for i, g in enumerate(state["games"]):
        rec = g["record"]
        game = make_game(rec["game"], rec["seed"], **rec["options"])
        taught: list[ExampleRecord] = []
        for action, m in zip(rec["moves"], g["moves"], strict=True):
            view = game.view()
            assert (view.seat, view.turn) == (m["seat"], m["turn"]), (
                "the replay reaches the recorded position"
            )
            if m["teacher"] and train:
                taught.append(
                    ExampleRecord(
                        id=stable_id(eid, "sft", i, m["turn"]),
                        kind=ExampleKind.SFT,
                        role=Role.POLICY,
                        payload={
                            "prompt": view.messages,
                            "completion": [{"role": "assistant", "content": m["text"]}],
                        },
                        episode_id=eid,
                        task_id=task.id,
                        split=str(task.split),
                    )
                )
            game.submit(action)
        result = game.result
        assert result is not None, "the record node runs after every game has ended"
        results.append(result)
        examples += [] if result.void else taught
        parent = None
        for m in g["moves"]:
            step_id = stable_id(eid, "move", i, m["turn"])
            steps.append(
                StepRecord(
                    id=step_id,
                    parent_id=parent,
                    index=len(steps),
                    role="teacher" if m["teacher"] else "opponent",
                    model_version=teacher_version if m["teacher"] else None,
                    text=m["text"],
                    reward=result.rewards[m["seat"]],
                    metadata={
                        "game": g["label"],
                        "game_index": i,
                        "seed": rec["seed"],
                        "seat": m["seat"],
                        "turn": m["turn"],
                        "player": m["player"],
                        "action": m["action"],
                        "outcome": m["outcome"],
                        "reason": m["reason"],
                        "return": result.rewards[m["seat"]],
                    },
                )
            )
            parent = step_id
    outcome = outcome_of(cfg, state, results, examples=len(examples))
    return EpisodeRecord(
        id=eid,
        run_id=state["run_id"],
        task_id=task.id,
        loop=LOOP_NAME,
        reward=outcome["teacher_return"],
        steps=steps,
        examples=examples,
        outcome=outcome,
    )


def outcome_of(
    cfg: GameDemosConfig, state: GameDemosState, results: list[GameResult], *, examples: int
) -> dict[str, Any]:
    """The summary: n/correct/pass are the runner's totals (teacher moves, legal ones, all legal), and the
    teacher's record over the (game, seat)s it played: wins/draws/losses and its mean return."""
    games = state["games"]
    taught = [m for g in games for m in g["moves"] if m["teacher"]]
    legal = sum(m["outcome"] == "legal" for m in taught)
    by_seat = {str(s): {"games": 0, "wins": 0, "draws": 0, "losses": 0} for s in (0, 1)}
    returns = []
    for g, r in zip(games, results, strict=True):
        for seat in g["teacher_seats"]:
            row = by_seat[str(seat)]
            if r.void:  # a fault of the game: no result for the teacher
                row["void"] = row.get("void", 0) + 1
                continue
            row["games"] += 1
            row["wins" if r.winner == seat else "draws" if r.winner is None else "losses"] += 1
            returns.append(r.rewards[seat])
    total = {k: sum(row[k] for row in by_seat.values()) for k in ("wins", "draws", "losses")}
    return {
        "n": len(taught),
        "correct": legal,
        "pass": legal == len(taught),
        "examples": examples,
        "tokens": 0,
        "game": games[0]["label"],
        "games": len(games),
        "teacher": cfg.teacher,
        "opponent": cfg.opponent,
        **total,
        "teacher_return": sum(returns) / len(returns) if returns else 0.0,
        "void": sum(r.void for r in results),
        "by_seat": by_seat,
        "seat_wins": [sum(r.winner == s for r in results) for s in (0, 1)],
        "results": [
            {
                "label": g["label"],
                "seed": g["record"]["seed"],
                "teacher_seats": g["teacher_seats"],
                "rewards": list(r.rewards),
                "winner": r.winner,
                "forfeit": r.forfeit,
                "forfeited_by": r.forfeited_by,
                "moves": r.moves,
                "reason": r.reason,
                "void": r.void,
            }
            for g, r in zip(games, results, strict=True)
        ],
    }


def summarize(episodes: Sequence[EpisodeRecord]) -> str:
    """One line for the collection printout and the evolve table: moves demonstrated, the teacher's record."""
    o = [ep.outcome for ep in episodes]
    n, ex = sum(x.get("n", 0) for x in o), sum(x.get("examples", 0) for x in o)
    w, d, lo = (sum(x.get(k, 0) for x in o) for k in ("wins", "draws", "losses"))
    who = f"{o[0]['teacher']} vs {o[0]['opponent']}" if o else "teacher"
    return f"{who}: {n} moves demonstrated, {ex} SFT examples; teacher won {w}, drew {d}, lost {lo}"


def _make(resources: LoopResources, config: GameDemosConfig) -> StateGraph:
    return build_graph(config)  # no engine: the examples train whatever role the stage trains (the policy)


SPEC = register_loop(
    LoopSpec(
        name=LOOP_NAME,
        evaluator="game",
        config=GameDemosConfig,
        make=_make,
        roles=(),
        example_kinds=(ExampleKind.SFT,),
        summarize=summarize,
        description="Imitation warm start for self-play: a fixed teacher (heuristic or random) plays whole games of "
        "the `games` task set against a fixed opponent, alternating seats; each teacher move becomes an "
        "SFT example whose prompt is exactly the selfplay loop's prompt in that position. No engine: "
        "the stage trains the policy on the examples.",
    )
)
