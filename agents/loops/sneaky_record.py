"""The SPC game's bookkeeping, apart from its graph, its rules (`sneaky_rules`) and its training examples
(`sneaky_examples`): the episode with every rewrite, rollout and judgement as a step and critique, the
zero-sum rewards and tallies in its outcome, and a round's figures read back from its episodes.

Pure functions of the loop's state (JSON), so the bookkeeping is tested without engines and a record node
run twice gives the same episode, ids included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from strop.agents.loops.base import stable_id
from strop.agents.loops.sneaky_examples import ExampleWriter
from strop.agents.loops.sneaky_rules import critic_messages, critic_reward, generator_reward, read_judgement
from strop.critics.base import CritiqueVerdict
from strop.memory.records import CritiqueRecord, EpisodeRecord, StepRecord
from strop.sandbox.tasks.base import Split, Task

if TYPE_CHECKING:
    from strop.agents.loops.sneaky import SneakyConfig, SneakyState


# --- the episode ------------------------------------------------------------------------------------------


def episode_of(state: SneakyState, cfg: SneakyConfig, *, loop: str) -> EpisodeRecord:
    """The finished game: every rewrite, rollout and judgement as a step, the rewards, outcome and examples."""
    task = Task.model_validate(state["task"])
    eid = state["episode_id"]
    b = _Builder(task, eid, cfg)
    controls = state.get("controls") or []
    for i, slot in enumerate(state.get("slots") or []):
        judged = {j["rewrite"]: j["completions"] for j in state["judgements"][i]}
        if slot["target"] == "correct":
            sid = stable_id(eid, "original", i)
            b.step(
                sid,
                None,
                "target",
                slot["original"],
                None,
                {"slot": i, "position": slot["position"], "target": "correct"},
            )
            b.judge(slot, i, "orig", sid, "correct", slot["original"], judged.get(None, []))
            continue
        rewards: list[float] = []
        rewrites: list[dict[str, Any]] = []
        for r, (c, check) in enumerate(zip(state["rewrites"][i], state["checks"][i], strict=True)):
            sid = stable_id(eid, "rewrite", i, r)
            meta = {
                "slot": i,
                "rewrite": r,
                "position": slot["position"],
                "error_type": slot["error_type"],
                "original": slot["original"],
                "step": check["step"],
                "status": check["status"],
                "reason": check["reason"],
                "fail_share": check.get("fail_share"),
                "control_fail_share": check.get("control_fail_share"),
            }
            s = b.step(sid, None, "generator", c["text"], c, meta)  # before its children: parents come first
            for k, roll in enumerate(check.get("rollouts") or []):
                b.step(
                    stable_id(eid, "rollout", i, r, k),
                    sid,
                    "rollout",
                    roll["completion"]["text"],
                    roll["completion"],
                    {"slot": i, "rewrite": r, "correct": roll["correct"]},
                    reward=roll["reward"],
                )
            wrong = check["status"] == "wrong"
            critic_rewards = (
                b.judge(slot, i, r, sid, "sneaky", check["step"], judged.get(r, [])) if wrong else []
            )
            s.reward = generator_reward(check["status"], critic_rewards) + 0.0  # no -0.0
            s.metadata["success"] = wrong and s.reward > 0
            rewards.append(s.reward)
            rewrites.append(c)
        for k, roll in enumerate(controls[i] if i < len(controls) else []):
            b.step(
                stable_id(eid, "control", i, k),
                None,
                "control_rollout",
                roll["completion"]["text"],
                roll["completion"],
                {"slot": i, "correct": roll["correct"]},
                reward=roll["reward"],
            )
        b.writer.generator_examples(slot, i, rewrites, rewards)
    return b.episode(state, loop)


class _Builder:
    """Collects one episode's steps, critiques and tallies; its `writer` collects the examples."""

    def __init__(self, task: Task, eid: str, cfg: SneakyConfig) -> None:
        self.task, self.eid, self.cfg = task, eid, cfg
        self.train = task.split == Split.TRAIN
        self.steps: list[StepRecord] = []
        self.critiques: list[CritiqueRecord] = []
        self.writer = ExampleWriter(task, eid, cfg)
        self.tally = {"judged_sneaky": 0, "caught": 0, "judged_correct": 0, "accepted": 0, "unparsed": 0}
        self.critic_rewards: list[float] = []

    def step(
        self,
        sid: str,
        parent: str | None,
        role: str,
        text: str,
        c: dict[str, Any] | None,
        meta: dict[str, Any],
        reward: float | None = None,
    ) -> StepRecord:
        s = StepRecord(
            id=sid,
            parent_id=parent,
            index=len(self.steps),
            role=role,
            text=text,
            reward=reward,
            model_version=c["model_version"] if c else None,
            prompt_token_ids=c["prompt_token_ids"] if c else None,
            token_ids=c["token_ids"] if c else None,
            logprobs=c["logprobs"] if c else None,
            metadata={**meta, **({"finish_reason": c["finish_reason"]} if c else {})},
        )
        self.steps.append(s)
        return s

    def judge(
        self,
        slot: dict[str, Any],
        i: int,
        r: int | str,
        target_id: str,
        kind: str,
        step: str,
        completions: list[dict[str, Any]],
    ) -> list[float]:
        """Store the judgements of one target step (`step`, its text); returns the critic's rewards."""
        rewards, texts = [], []
        for m, c in enumerate(completions):
            j = read_judgement(c, slot, self.cfg)
            reward = critic_reward(kind, j["verdict"])
            rewards.append(reward)
            texts.append((c, j["verdict"], reward))
            self.tally["judged_sneaky" if kind == "sneaky" else "judged_correct"] += 1
            self.tally["caught" if kind == "sneaky" else "accepted"] += reward > 0
            self.tally["unparsed"] += j["verdict"] == "unparsed"
            sid = stable_id(self.eid, "judgement", i, r, m)
            self.step(
                sid,
                target_id,
                "critic",
                c["text"],
                c,
                {"slot": i, "target": kind, "verdict": j["verdict"], "p_yes": j["p_yes"]},
                reward=reward,
            )
            verdict = {"right": CritiqueVerdict.CORRECT, "unparsed": CritiqueVerdict.UNPARSED}.get(
                j["verdict"], CritiqueVerdict.INCORRECT
            )
            self.critiques.append(
                CritiqueRecord(
                    id=stable_id(self.eid, "critique", i, r, m),
                    step_id=target_id,
                    critic_version=c["model_version"],
                    verdict=str(verdict),
                    first_wrong_step=j["first_wrong_step"],
                    text=c["text"],
                    parsed=j["verdict"] != "unparsed",
                    validated=reward > 0,
                )
            )
        self.critic_rewards += rewards
        if self.train and completions:
            self.writer.critic_examples(critic_messages(self.task, slot, step, self.cfg), i, r, kind, texts)
        return rewards

    def episode(self, state: SneakyState, loop: str) -> EpisodeRecord:
        gen = [s for s in self.steps if s.role == "generator"]
        by_error: dict[str, dict[str, int]] = {}
        for s in gen:
            e = by_error.setdefault(str(s.metadata["error_type"]), {"rewrites": 0, "valid": 0, "success": 0})
            e["rewrites"] += 1
            e["valid"] += s.metadata["status"] == "wrong"
            e["success"] += bool(s.metadata["success"])
        n = len(self.critic_rewards)
        wins = sum(r > 0 for r in self.critic_rewards)
        return EpisodeRecord(
            id=self.eid,
            run_id=state["run_id"],
            task_id=self.task.id,
            loop=loop,
            reward=sum(self.critic_rewards) / n if n else 0.0,  # the critic's mean game reward
            # n/correct/pass feed the runner's totals: critic judgements and those that won.
            outcome={
                "n": n,
                "correct": wins,
                "pass": wins > 0,
                "examples": len(self.writer.examples),
                "tokens": sum(len(s.token_ids or []) for s in self.steps),
                "skipped": state.get("skipped"),
                "slots": len(state.get("slots") or []),
                "rewrites": len(gen),
                "rewrites_unparsed": sum(s.metadata["status"] == "unparsed" for s in gen),
                "sneaky_valid": sum(s.metadata["status"] == "wrong" for s in gen),
                "sneaky_success": sum(bool(s.metadata["success"]) for s in gen),
                "generator_reward": sum(s.reward or 0.0 for s in gen),
                "critic_reward": sum(self.critic_rewards),
                **self.tally,
                "by_error_type": by_error,
            },
            steps=self.steps,
            critiques=self.critiques,
            examples=self.writer.examples,
        )


# --- per round ------------------------------------------------------------------------------------------------


def game_rates(episodes: Sequence[EpisodeRecord]) -> dict[str, float | int | None]:
    """A round's figures: the generator's success rate (rewrites that were really wrong and got past the
    critic, of all rewrites), the share really wrong, and the critic's catch and accept rates."""
    t = {
        k: sum(int(e.outcome.get(k, 0)) for e in episodes if e.loop == "sneaky")
        for k in (
            "rewrites",
            "rewrites_unparsed",
            "sneaky_valid",
            "sneaky_success",
            "judged_sneaky",
            "caught",
            "judged_correct",
            "accepted",
        )
    }

    def share(a: str, b: str) -> float | None:
        return t[a] / t[b] if t[b] else None

    return {
        **t,
        "success_rate": share("sneaky_success", "rewrites"),
        "valid_rate": share("sneaky_valid", "rewrites"),
        "catch_rate": share("caught", "judged_sneaky"),
        "accept_rate": share("accepted", "judged_correct"),
    }


def summarize(episodes: Sequence[EpisodeRecord]) -> str:
    """A round in one short line, for the collection printout and the evolve table's `collection` column:
    sneaky successes of all rewrites (and how many were really wrong), the critic's catches and accepts."""
    g = game_rates(episodes)
    pct = "-" if g["success_rate"] is None else f"{100 * g['success_rate']:.0f}%"
    return (
        f"sneaky {g['sneaky_success']}/{g['rewrites']} ({pct}), really wrong {g['sneaky_valid']}; "
        f"caught {g['caught']}/{g['judged_sneaky']}, accepted {g['accepted']}/{g['judged_correct']}"
    )
