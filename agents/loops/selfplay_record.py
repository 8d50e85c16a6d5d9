"""A finished self-play episode as the store keeps it: returns, RAE advantages, steps, examples, outcome.

Kept apart from the graph (selfplay.py) because this is the bookkeeping that must be right for training to
mean anything, and tests read it directly:
- zero-sum returns: every move is credited with the final return R of its own seat (the game's rewards sum to
  zero, so in self-play one seat's gain is exactly the other's loss, and both are trained);
- RAE: one baseline update per (game, policy seat), in game order, each with an id derived from (episode,
  game, seat), so a record node that runs again after a kill replays the same updates and gets the same
  baselines back instead of moving them twice;
- only training tasks update baselines and emit examples; held-out games (evaluation) leave both alone;
- a void game (the game engine raised on an accepted move, `GameResult.void`) is no draw: its 0/0 says nothing
  about the moves, so it updates no baseline, emits no example, and is counted as `void`, apart from draws.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from strop.agents.loops.base import stable_id
from strop.agents.loops.rae import BaselineTable, advantage
from strop.memory.records import (
    AdvantagePayload,
    BaselineUpdate,
    EpisodeRecord,
    ExampleKind,
    ExampleRecord,
    Role,
    StepRecord,
)
from strop.sandbox.games import GameResult, replay_game
from strop.sandbox.tasks.base import Split, Task

if TYPE_CHECKING:
    from strop.agents.loops.selfplay import SelfPlayConfig, SelfPlayState


async def role_baselines(
    state: SelfPlayState, cfg: SelfPlayConfig, table: BaselineTable, results: list[GameResult]
) -> dict[tuple[int, int], float]:
    """Per (game index, policy seat), the baseline before this game's return: what its advantage subtracts.

    Updates the baselines as a side effect (training tasks with `rae` only; empty otherwise)."""
    task = Task.model_validate(state["task"])
    if not cfg.rae or task.split != Split.TRAIN:
        return {}
    namespace = cfg.baseline_namespace or state["run_id"]
    keys = [
        (i, seat) for i, g in enumerate(state["games"]) if not results[i].void for seat in g["policy_seats"]
    ]
    updates = [
        BaselineUpdate(
            id=stable_id(state["episode_id"], "rae", i, seat),
            namespace=namespace,
            game=state["games"][i]["label"],
            role=str(seat),
            reward=results[i].rewards[seat],
            decay=cfg.decay,
        )
        for i, seat in keys
    ]
    done = await table.aupdate_baselines(updates)
    return {key: r.before for key, r in zip(keys, done, strict=True)}


async def episode_of(
    state: SelfPlayState, cfg: SelfPlayConfig, table: BaselineTable, *, loop: str
) -> EpisodeRecord:
    task = Task.model_validate(state["task"])
    eid = state["episode_id"]
    train = task.split == Split.TRAIN
    games = state["games"]
    results: list[GameResult] = []
    for g in games:
        result = replay_game(g["record"]).result
        assert result is not None, "the record node runs after every game has ended"
        results.append(result)
    baselines = await role_baselines(state, cfg, table, results)
    steps: list[StepRecord] = []
    examples: list[ExampleRecord] = []
    for i, g in enumerate(games):
        parent = None
        for m in g["moves"]:
            seat, c = m["seat"], m["completion"]
            ret = results[i].rewards[seat]
            b = baselines.get((i, seat)) if c is not None else None
            adv = advantage(ret, b) if c is not None else None
            step_id = stable_id(eid, "move", i, m["turn"])
            steps.append(
                StepRecord(
                    id=step_id,
                    parent_id=parent,
                    index=len(steps),
                    role="assistant" if c is not None else "opponent",
                    model_version=(c or {}).get("model_version"),
                    text=m["text"],
                    prompt_token_ids=(c or {}).get("prompt_token_ids"),
                    token_ids=(c or {}).get("token_ids"),
                    logprobs=(c or {}).get("logprobs"),
                    reward=ret,
                    value=b,
                    metadata={
                        "game": g["label"],
                        "game_index": i,
                        "seed": g["record"]["seed"],
                        "seat": seat,
                        "turn": m["turn"],
                        "player": m["player"],
                        "action": m["action"],
                        "outcome": m["outcome"],
                        "reason": m["reason"],
                        "return": ret,
                        "baseline": b,
                        "advantage": adv,
                        "finish_reason": (c or {}).get("finish_reason"),
                    },
                )
            )
            parent = step_id
            if c is not None and train and cfg.emit == "pg" and not results[i].void:
                examples += _example(cfg, task, eid, i, g, m, ret, adv, b)
    return EpisodeRecord(
        id=eid,
        run_id=state["run_id"],
        task_id=task.id,
        loop=loop,
        reward=_policy_return(games, results),
        steps=steps,
        examples=examples,
        outcome=outcome_of(cfg, state, results, baselines, examples=len(examples)),
    )


def outcome_of(
    cfg: SelfPlayConfig,
    state: SelfPlayState,
    results: list[GameResult],
    baselines: dict[tuple[int, int], float],
    *,
    examples: int,
) -> dict[str, Any]:
    """The episode summary: n/correct/pass are the runner's totals (policy moves, legal ones, all legal)."""
    games = state["games"]
    policy_moves = [m for g in games for m in g["moves"] if m["completion"] is not None]
    legal = sum(m["outcome"] == "legal" for m in policy_moves)
    bad = Counter(m["outcome"] for m in policy_moves if m["outcome"] != "legal")
    by_seat = {str(s): {"games": 0, "wins": 0, "draws": 0, "losses": 0} for s in (0, 1)}
    for g, r in zip(games, results, strict=True):
        for seat in g["policy_seats"]:
            row = by_seat[str(seat)]
            if r.void:  # a fault of the game: no result for either seat
                row["void"] = row.get("void", 0) + 1
                continue
            row["games"] += 1
            row["wins" if r.winner == seat else "draws" if r.winner is None else "losses"] += 1
    return {
        "n": len(policy_moves),
        "correct": legal,
        "pass": legal == len(policy_moves),
        "examples": examples,
        "tokens": sum(len(m["completion"]["token_ids"]) for m in policy_moves),
        "game": games[0]["label"],
        "games": len(games),
        "opponent": cfg.opponent,
        "seat_wins": [sum(r.winner == s for r in results) for s in (0, 1)],
        "draws": sum(r.winner is None and not r.void for r in results),
        "void": sum(r.void for r in results),
        "illegal": bad["illegal"],
        "unparseable": bad["unparseable"],
        "by_seat": by_seat,
        "results": [
            {
                "label": g["label"],
                "seed": g["record"]["seed"],
                "policy_seats": g["policy_seats"],
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
        "rae": cfg.rae,
        "baselines": {f"{i}/{s}": b for (i, s), b in baselines.items()},
    }


def _policy_return(games: list[dict[str, Any]], results: list[GameResult]) -> float:
    """Mean return of the seats the policy played: its score against an opponent; 0 in self-play, where the
    policy plays both seats of a zero-sum game. Void games are left out (0 when every game was void)."""
    rets = [
        r.rewards[s] for g, r in zip(games, results, strict=True) if not r.void for s in g["policy_seats"]
    ]
    return sum(rets) / len(rets) if rets else 0.0


def _example(
    cfg: SelfPlayConfig,
    task: Task,
    eid: str,
    i: int,
    g: dict[str, Any],
    m: dict[str, Any],
    ret: float,
    adv: float | None,
    baseline: float | None,
) -> list[ExampleRecord]:
    c = m["completion"]
    if adv is None or not c["token_ids"] or c["logprobs"] is None:
        return []  # an empty reply has no tokens to train
    if adv == 0.0 and cfg.skip_zero_advantage:
        return []
    meta = {
        "game": g["label"],
        "seat": m["seat"],
        "turn": m["turn"],
        "game_index": i,
        "outcome": m["outcome"],
        "rae": cfg.rae,
        "baseline": baseline,
        "opponent": g["opponent"],
    }
    payload = AdvantagePayload(
        prompt_ids=c["prompt_token_ids"],
        completion_ids=c["token_ids"],
        logprobs=c["logprobs"],
        advantage=adv,
        temperature=cfg.temperature or None,
        model_version=c["model_version"],
        reward=ret,
        completion=m["text"],
        metadata={k: v for k, v in meta.items() if v is not None},
    )
    return [
        ExampleRecord(
            id=stable_id(eid, "pg", i, m["turn"]),
            kind=ExampleKind.GAME_TURN,
            role=Role.POLICY,
            payload=payload.model_dump(mode="json", exclude_none=True),
            episode_id=eid,
            task_id=task.id,
            split=str(task.split),
        )
    ]
