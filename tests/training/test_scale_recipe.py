"""A recipe's [scale] section: validated like every other field, and `strop evolve` collecting through the
store's work queue with rollout workers instead of in its own process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from strop.training.recipe import RecipeError, load_recipe

RECIPE = """
name = "scaled"
roles = {{ policy = "tiny" }}
cycles = 1
output_dir = "{out}"

[scale]
{scale}

[[stages]]
name = "collect"
loop = "best_of_n"
tasks = {{ name = "arithmetic", options = {{ digits = 1 }}, train_per_cycle = 6, heldout = 4 }}
config = {{ n = 2, temperature = 1.0, max_tokens = 8, seed = 0 }}
"""


def _recipe(tmp_path: Path, scale: str) -> Path:
    p = tmp_path / "r.toml"
    p.write_text(RECIPE.format(out=tmp_path / "run", scale=scale))
    return p


def test_scale_settings_parse_and_a_typo_is_named(tmp_path: Path) -> None:
    r = load_recipe(_recipe(tmp_path, 'workers = 4\nray = "auto"\nactor_gpus = 0.5\nlease_ttl = 30'))
    assert (r.scale.workers, r.scale.ray, r.scale.actor_gpus, r.scale.lease_ttl) == (4, "auto", 0.5, 30)
    assert load_recipe(_recipe(tmp_path, "")).scale.workers == 0  # default: collect in-process
    with pytest.raises(RecipeError, match=r"scale.wokers: unknown field"):
        load_recipe(_recipe(tmp_path, "wokers = 4"))


class InProcessPool:
    """Workers as tasks of this event loop: the driver's whole path, without process start-up."""

    external = False

    def __init__(self, store, n: int, settings) -> None:  # type: ignore[no-untyped-def]
        self.store, self.n, self.settings = store, n, settings
        self.tasks: list[asyncio.Task] = []

    def start(self, run_id: str) -> None:
        from strop.agents.worker import Worker

        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(Worker(self.store, self.settings).run(run_id)) for _ in range(self.n)]

    def alive(self) -> int:
        return sum(not t.done() for t in self.tasks)

    def errors(self) -> list[str]:
        return [repr(t.exception()) for t in self.tasks if t.done() and t.exception()]

    def stop(self) -> list[dict]:
        return [t.result().model_dump() for t in self.tasks if t.done() and not t.exception()]


def test_evolve_collects_on_the_recipes_workers(tmp_path: Path, store, tiny_model_path, monkeypatch) -> None:
    import strop.agents.scale as scale_mod
    from strop.training.evolve import Evolution

    pools: list[InProcessPool] = []

    def make_pool(scale, db_url, concurrency, store_=None):  # type: ignore[no-untyped-def]
        pools.append(InProcessPool(store, scale.workers, scale.worker_settings(concurrency)))
        return pools[-1]

    monkeypatch.setattr(scale_mod, "make_pool", make_pool)
    recipe = load_recipe(_recipe(tmp_path, "workers = 2\nlease_ttl = 10"), db=store.url)
    evo = Evolution(recipe, store, progress=False)
    asyncio.run(evo.run(1))
    run_id = evo.collect_run_id(1, 0)
    run = store.get_run(run_id)
    assert run.status == "finished" and run.config["work"]["roles"]["policy"]["lineage"] == "tiny"
    assert store.work_counts(run_id).done == 6 and len(store.list_episodes(run_id)) == 6
    assert len(pools) == 1 and len(pools[0].tasks) == 2  # the driver ran no episode itself
