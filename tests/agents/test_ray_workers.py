"""Rollout workers as Ray actors on a local Ray instance (127.0.0.1, 2 CPUs) over PostgreSQL: 200 episodes with
2 actors, one actor's process SIGKILLed mid-run, and the run still finishes with every episode once. One test,
because starting Ray and importing the worker in each actor is most of its time. Ray is an extra (strop[ray])
that `make test` installs, so this runs in CI."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from strop.agents.ray_pool import RayPool
from strop.agents.scale import ScaleSettings, run_on_workers
from tests.agents.scale_helpers import assert_each_once, register_sim, run_record, sim_spec, tasks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    try:
        import ray
    except ImportError:
        message = "Ray is not installed: it is the strop[ray] extra, which `make setup` installs"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: the Ray tests must run)")
        pytest.skip(message)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    yield
    ray.shutdown()


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[object]:
    from strop.memory import Store

    store = Store(pg_url)
    register_sim(store)
    yield store
    store.close()


def _scale() -> ScaleSettings:
    return ScaleSettings(workers=2, ray="local", actor_cpus=1, lease_ttl=3, poll=0.2, concurrency=16)


async def test_two_actors_run_200_episodes_each_once_though_one_is_sigkilled(local_ray, pg_store) -> None:
    task_list = tasks(200)
    scale = _scale()
    pool = RayPool(pg_store.url, 2, scale.worker_settings(16), address="local", num_cpus=1)
    killed: list[int] = []
    alive: list[int] = []

    def kill_one(counts, pool_) -> None:  # type: ignore[no-untyped-def]
        alive.append(pool_.alive())
        if not killed and counts.done >= 40:
            killed.append(pool_.pids()[0])
            os.kill(killed[0], signal.SIGKILL)  # no chance to release anything: its leases must expire

    res = await run_on_workers(
        pg_store,
        run_record("ray"),
        sim_spec(latency=0.2),  # slow enough that the kill lands mid-run,
        task_list,
        scale,
        progress=False,
        on_progress=kill_one,
        pool=pool,
    )
    assert killed and alive[0] == 2  # both actors pulled episodes until one was killed
    assert res.episodes == 200 and res.episodes_run == 200
    assert_each_once(pg_store, "ray", task_list)
    assert pg_store.get_run("ray").status == "finished"
    assert len(pool.errors()) == 1 and f"pid {killed[0]}" in pool.errors()[0]
