"""Zero-sum self-play (SPIRAL, arXiv 2506.24119): one policy plays both seats of a two-player text game.

start: the task names a game and a seed (`sandbox/tasks/games.py`); the episode sets up `games_per_task` games
-> move: every unfinished game advances one move; the seats the policy plays are asked in ONE batched
`generate` call (and the runner keeps many episodes in flight, so the engine batches across games too), a
fixed opponent's seats answer without a model; each reply goes to `Game.submit`, and an illegal or
unparseable reply ends that game as a loss for its mover -> move ... -> record.

Each `move` node is checkpointed, and the state holds only JSON: every game as its `GameRecord` (name,
seed, options, moves), from which `replay_game` rebuilds it exactly, so a killed run resumes mid-game.

Every move is a step with the seat's prompt token ids, the reply's token ids and sampling log-probs, and the
return R of its seat (games are zero-sum: the seats' returns sum to 0). With role-conditioned advantage
estimation (`rae = true`, see rae.py) the advantage of a move of seat s is R_s - b[game, s], the baseline
read from the store before this game's return is folded into it; with `rae = false` it is R_s (SPIRAL's
ablation, which collapses). Each policy move of a training task becomes one GAME_TURN example (an
`AdvantagePayload`) for the `pg` trainer kind. With `opponent` set, the policy plays one seat against a
fixed opponent instead: SPIRAL's fixed-opponent baseline, and the game evaluation (`agents/game_eval.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, ConfigDict, Field

from strop.agents.engines.base import Engine, GenerationRequest, Message, SamplingParams
from strop.agents.loops.base import completion_json, stable_id
from strop.agents.loops.rae import BaselineTable, MemoryBaselines
from strop.agents.loops.registry import LoopResources, LoopSpec, register_loop
from strop.agents.loops.selfplay_record import episode_of
from strop.memory.records import ExampleKind, Role
from strop.sandbox.games import HeuristicOpponent, Opponent, RandomOpponent, SeatView, replay_game
from strop.sandbox.games.registry import get_adapter
from strop.sandbox.tasks.base import Task
from strop.sandbox.tasks.games import game_label

LOOP_NAME = "selfplay"
FIXED_OPPONENTS = ("random", "heuristic")


class SelfPlayConfig(BaseModel):
    """One self-play episode: which game, how moves are sampled, how advantages are taken, what is emitted."""

    model_config = ConfigDict(extra="forbid")

    game: str | None = Field(
        None,
        description="Game to play; None: the task's own (the `games` task set names "
        "one per task). A name plays that game on any task, seeded by the task's seed.",
    )
    game_options: dict[str, Any] = Field(
        default_factory=dict, description="Game options over the task's, e.g. {rounds = 5} for kuhn_poker."
    )
    games_per_task: int = Field(
        1,
        ge=1,
        le=64,
        description="Games per episode, played side by side (one batched "
        "call per move); game i > 0 plays a seed derived from the task's. Against an "
        "opponent, games come in pairs from one seed: the policy in seat 0, then seat 1.",
    )
    opponent: str | None = Field(
        None,
        description="None: self-play, the policy in both seats. 'random', "
        "'heuristic' or an opponent given to build_graph by name: the policy plays one "
        "seat against it (SPIRAL's fixed-opponent baseline; the game evaluation).",
    )
    temperature: float = Field(
        1.0,
        ge=0.0,
        le=10.0,
        description="Sampling temperature of every move; the pg trainer's temperature must match it.",
    )
    max_tokens: int = Field(
        64, ge=1, le=32768, description="Most new tokens per move (reasoning and the move)."
    )
    rae: bool = Field(
        True,
        description="Role-conditioned advantage estimation: advantage R - b[game, seat]. "
        "False: advantage R (SPIRAL's ablation; it collapses).",
    )
    decay: float = Field(
        0.95,
        ge=0.0,
        lt=1.0,
        description="EMA decay alpha of the RAE baselines, b <- alpha*b + (1-alpha)*R (SPIRAL: 0.95).",
    )
    baseline_namespace: str | None = Field(
        None,
        description="Whose baselines these episodes read and update "
        "(kept in the store); None: the run's id. Set one (e.g. the recipe "
        "name) to carry baselines over from cycle to cycle.",
    )
    emit: Literal["pg", "none"] = Field(
        "pg",
        description="Training examples: 'pg' (one GAME_TURN example per policy "
        "move of a training task, for the pg trainer) or 'none'.",
    )
    skip_zero_advantage: bool = Field(
        True, description="Drop examples whose advantage is 0 (no gradient; SPIRAL filters them too)."
    )
    seed: int | None = Field(
        None,
        description="Sampling seed; each game and move get their own stream, and "
        "fixed opponents are seeded by position. None: random sampling.",
    )

    def sampling(self, *stream: object) -> SamplingParams:
        seed = None if self.seed is None else int(stable_id(self.seed, *stream)[:12], 16)
        return SamplingParams(
            n=1, temperature=self.temperature, max_tokens=self.max_tokens, seed=seed, logprobs=True
        )


class SelfPlayState(TypedDict, total=False):
    """JSON values only, so any checkpointer can persist it between moves."""

    task: dict[str, Any]
    run_id: str
    episode_id: str
    # per game: {"record": GameRecord JSON, "label", "policy_seats": [...], "opponent": name | None,
    #            "moves": [{"seat", "turn", "player", "text", "action", "outcome", "reason", "completion"}],
    #            "done": bool}
    games: list[dict[str, Any]]
    episode: dict[str, Any]


def match_of(task: Task, cfg: SelfPlayConfig) -> tuple[str, int, dict[str, Any]]:
    """The (game, seed, options) a task asks for under `cfg`."""
    game = cfg.game or task.metadata.get("game")
    if not isinstance(game, str):
        raise ValueError(f"task {task.id} names no game: use the `games` task set, or set the loop's `game`")
    seed = task.metadata.get("seed")
    if not isinstance(seed, int):
        seed = int(stable_id("game-seed", task.id)[:8], 16)
    options = dict(task.metadata.get("options") or {}) if task.metadata.get("game") == game else {}
    options.update(cfg.game_options)
    get_adapter(game).options_model(**options)  # a bad option fails here, named, before any move
    return game, seed, options


def plan_games(task: Task, cfg: SelfPlayConfig) -> list[dict[str, Any]]:
    """The episode's games, not yet started: seeds, and which seats the policy plays."""
    game, seed, options = match_of(task, cfg)
    out = []
    for i in range(cfg.games_per_task):
        j, seats = (i, [0, 1]) if cfg.opponent is None else (i // 2, [i % 2])
        s = seed if j == 0 else int(stable_id("game-seed", seed, j)[:8], 16)
        out.append(
            {
                "record": {"game": game, "seed": s, "options": options, "moves": []},
                "label": game_label(game, options),
                "policy_seats": seats,
                "opponent": cfg.opponent,
                "moves": [],
            }
        )
    return out


def fixed_player(name: str, seed: int | None, tag: str, *stream: object) -> Opponent:
    """The fixed player `name` ('random' or 'heuristic') for one position, seeded by it.

    `stream` is the position (the game's seed and its moves so far): a resumed game gets the reply it would have
    got before the kill, and every model evaluated meets the same opponent in the same position. `tag` keeps
    two players of one position apart (the self-play opponent is 'opponent'; game_demos' teacher 'teacher').
    """
    s = int(stable_id(seed or 0, tag, *stream)[:8], 16)
    return RandomOpponent(s) if name == "random" else HeuristicOpponent(s)


def build_graph(
    policy: Engine,
    config: SelfPlayConfig | None = None,
    *,
    baselines: BaselineTable | None = None,
    opponents: Mapping[str, Opponent] | None = None,
) -> StateGraph:
    """The uncompiled graph.

    `baselines`: where RAE baselines live (a Store, for persistence across runs and workers; default an
    in-process `MemoryBaselines`). `opponents`: extra opponents by name (e.g. an earlier checkpoint,
    `agents.game_eval.EngineOpponent`) that `config.opponent` may name besides 'random' and 'heuristic'.
    """
    cfg = config or SelfPlayConfig()
    named = dict(opponents or {})
    if cfg.opponent is not None and cfg.opponent not in FIXED_OPPONENTS and cfg.opponent not in named:
        raise ValueError(
            f"unknown opponent {cfg.opponent!r}: use {' or '.join(FIXED_OPPONENTS)}, or pass it to "
            "build_graph(opponents={...})"
        )
    table = baselines if baselines is not None else MemoryBaselines()

    def start(state: SelfPlayState) -> dict[str, Any]:
        return {"games": plan_games(Task.model_validate(state["task"]), cfg)}

    async def opponent_move(name: str, view: SeatView, *stream: object) -> str:
        if name in named:
            return await named[name].act(view)
        return await fixed_player(name, cfg.seed, "opponent", *stream).act(view)

    async def move(state: SelfPlayState) -> dict[str, Any]:
        eid = state["episode_id"]
        games = [dict(g) for g in state["games"]]
        live = [(i, replay_game(g["record"])) for i, g in enumerate(games)]
        live = [(i, game) for i, game in live if not game.done]
        asks: list[tuple[int, Any, SeatView]] = []
        answers: list[tuple[int, Any, SeatView]] = []
        for i, game in live:
            view = game.view()
            (asks if view.seat in games[i]["policy_seats"] else answers).append((i, game, view))
        requests = [
            GenerationRequest(
                messages=[Message(**m) for m in view.messages], sampling=cfg.sampling(eid, i, game.turn)
            )
            for i, game, view in asks
        ]
        completions, replies = await asyncio.gather(
            policy.generate(requests) if requests else _nothing(),
            asyncio.gather(
                *(
                    opponent_move(games[i]["opponent"], view, game.seed, *game.record().moves)
                    for i, game, view in answers
                )
            ),
        )
        played = [
            (i, game, view, c[0].text, completion_json(c[0]))
            for (i, game, view), c in zip(asks, completions, strict=True)
        ]
        played += [
            (i, game, view, text, None) for (i, game, view), text in zip(answers, replies, strict=True)
        ]
        for i, game, view, text, completion in played:
            m = game.submit(text)
            g = games[i]
            g["moves"] = [
                *g["moves"],
                {
                    "seat": view.seat,
                    "turn": view.turn,
                    "player": "policy" if completion else g["opponent"],
                    "text": text,
                    "action": m.action,
                    "outcome": str(m.outcome),
                    "reason": m.reason,
                    "completion": completion,
                },
            ]
            g["record"], g["done"] = game.record().model_dump(mode="json"), game.done
        return {"games": games}

    def after_move(state: SelfPlayState) -> str:
        return "move" if not all(g.get("done") for g in state["games"]) else "record"

    async def record(state: SelfPlayState) -> dict[str, Any]:
        episode = await episode_of(state, cfg, table, loop=LOOP_NAME)
        return {"episode": episode.model_dump(mode="json")}

    graph = StateGraph(SelfPlayState)
    graph.add_node("start", start)
    graph.add_node("move", move)
    graph.add_node("record", record)
    graph.add_edge(START, "start")
    graph.add_edge("start", "move")
    graph.add_conditional_edges("move", after_move, ["move", "record"])
    graph.add_edge("record", END)
    return graph


async def _nothing() -> list[Any]:
    return []


def _make(resources: LoopResources, config: SelfPlayConfig) -> StateGraph:
    store = resources.store
    baselines = store if isinstance(store, BaselineTable) else None
    return build_graph(resources.policy, config, baselines=baselines)


SPEC = register_loop(
    LoopSpec(
        name=LOOP_NAME,
        evaluator="game",
        config=SelfPlayConfig,
        make=_make,
        roles=(Role.POLICY,),
        example_kinds=(ExampleKind.GAME_TURN,),
        description="Zero-sum self-play (SPIRAL): one policy plays both seats of a two-player text game (tictactoe, "
        "kuhn_poker, simple_negotiation; tasks from the `games` task set), every move a step with token "
        "ids and log-probs; role-conditioned advantages R - b[game, seat] with the baselines kept in the "
        "store; one GAME_TURN example per move for the pg trainer. `opponent` plays a fixed opponent "
        "instead.",
    )
)
