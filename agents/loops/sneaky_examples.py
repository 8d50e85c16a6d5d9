"""The training examples one SPC game yields, for the critic and the generator roles: DPO pairs of a winning
over a losing judgement or rewrite of one step, and GAME_TURN examples with the game reward as advantage for
the `pg` trainer. `sneaky_record` builds the episode and hands each judged step and each slot's rewrites here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from strop.agents.loops.base import stable_id
from strop.agents.loops.scrit import trim_critique
from strop.agents.loops.sneaky_rules import centred, generator_messages
from strop.memory.records import AdvantagePayload, ExampleKind, ExampleRecord, Role
from strop.sandbox.tasks.base import Split, Task

if TYPE_CHECKING:
    from strop.agents.loops.sneaky import SneakyConfig


class ExampleWriter:
    """Collects one game's examples; ids are stable, so a record node run twice writes the same ones."""

    def __init__(self, task: Task, eid: str, cfg: SneakyConfig) -> None:
        self.task, self.eid, self.cfg = task, eid, cfg
        self.train = task.split == Split.TRAIN
        self.examples: list[ExampleRecord] = []

    def critic_examples(
        self,
        prompt: list[dict[str, str]],
        i: int,
        r: int | str,
        kind: str,
        judged: list[tuple[dict[str, Any], str, float]],
    ) -> None:
        """PAIRs of a won over a lost judgement of one step (`prompt`, the critic's chat about it) and
        GAME_TURNs with each judgement's reward, as `critic_emit` asks."""
        cfg = self.cfg
        meta = {"slot": i, "target": kind}
        if "pg" in cfg.critic_emit:
            for m, ((c, _, reward), adv) in enumerate(
                zip(judged, centred([x[2] for x in judged]), strict=True)
            ):
                self._pg(
                    Role.CRITIC,
                    stable_id(self.eid, "critic-pg", i, r, m),
                    c,
                    adv,
                    reward,
                    cfg.critic_temperature,
                    meta,
                )
        if "pair" in cfg.critic_emit:
            clean = (lambda t: t.strip()) if cfg.critic_kind == "prm" else trim_critique
            won = [clean(c["text"]) for c, _, reward in judged if reward > 0]
            lost = [clean(c["text"]) for c, _, reward in judged if reward < 0]
            if cfg.complete_pairs:  # a Yes/No answer's opposite is known: it would have had the other outcome
                right, wrong = ("No", "Yes") if kind == "sneaky" else ("Yes", "No")
                won, lost = won or [right], lost or [wrong]
            self._pairs(Role.CRITIC, ("critic-pair", i, r), prompt, won, lost, {**meta, "rewrite": str(r)})

    def generator_examples(
        self, slot: dict[str, Any], i: int, rewrites: list[dict[str, Any]], rewards: list[float]
    ) -> None:
        """GAME_TURNs with each rewrite's reward and PAIRs of a rewrite that got past the critic over a caught
        or invalid one of the same slot, as `generator_emit` asks (training tasks only)."""
        if not self.train:
            return
        meta = {"slot": i, "error_type": slot["error_type"]}
        if "pg" in self.cfg.generator_emit:
            for r, (c, adv, reward) in enumerate(zip(rewrites, centred(rewards), rewards, strict=True)):
                self._pg(
                    Role.GENERATOR,
                    stable_id(self.eid, "generator-pg", i, r),
                    c,
                    adv,
                    reward,
                    self.cfg.generator_temperature,
                    meta,
                )
        if "pair" in self.cfg.generator_emit:
            won = [c["text"].strip() for c, reward in zip(rewrites, rewards, strict=True) if reward > 0]
            lost = [c["text"].strip() for c, reward in zip(rewrites, rewards, strict=True) if reward < 0]
            self._pairs(
                Role.GENERATOR, ("generator-pair", i), generator_messages(self.task, slot), won, lost, meta
            )

    def _pg(
        self,
        role: Role,
        example_id: str,
        c: dict[str, Any],
        advantage: float,
        reward: float,
        temperature: float,
        meta: dict[str, Any],
    ) -> None:
        if (
            (advantage == 0.0 and self.cfg.skip_zero_advantage)
            or not c["token_ids"]
            or not c["prompt_token_ids"]
        ):
            return
        if c["logprobs"] is None or len(c["logprobs"]) != len(c["token_ids"]):
            return
        payload = AdvantagePayload(
            prompt_ids=c["prompt_token_ids"],
            completion_ids=c["token_ids"],
            logprobs=c["logprobs"],
            advantage=advantage,
            temperature=temperature or None,
            model_version=c["model_version"],
            reward=reward,
            completion=c["text"],
            metadata={**meta, "role": str(role)},
        )
        self.examples.append(
            ExampleRecord(
                id=example_id,
                kind=ExampleKind.GAME_TURN,
                role=role,
                payload=payload.model_dump(mode="json"),
                episode_id=self.eid,
                task_id=self.task.id,
                split=str(self.task.split),
            )
        )

    def _pairs(
        self,
        role: Role,
        key: tuple[object, ...],
        prompt: list[dict[str, str]],
        won: list[str],
        lost: list[str],
        meta: dict[str, Any],
    ) -> None:
        won, lost = list(dict.fromkeys(won)), list(dict.fromkeys(t for t in lost if t not in won))
        made = 0
        for shift in range(
            len(lost)
        ):  # along diagonals: the first pairs use as many distinct texts as possible
            for a, chosen in enumerate(won):
                if made >= self.cfg.max_pairs_per_step:
                    return
                rejected = lost[(a + shift) % len(lost)]
                self.examples.append(
                    ExampleRecord(
                        id=stable_id(self.eid, *key, chosen, rejected),
                        kind=ExampleKind.PAIR,
                        role=role,
                        payload={
                            "prompt": prompt,
                            "chosen": [{"role": "assistant", "content": chosen}],
                            "rejected": [{"role": "assistant", "content": rejected}],
                            "metadata": meta,
                        },
                        episode_id=self.eid,
                        task_id=self.task.id,
                        split=str(self.task.split),
                    )
                )
                made += 1
