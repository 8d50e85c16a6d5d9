"""Rollout workers as Ray actors: `strop run ... --ray auto --workers N`, or a recipe's [scale] ray = "auto".

Each actor is one `Worker` (agents/worker.py) in its own process on whichever node Ray places it, holding its
own engines; `num_cpus`/`num_gpus` are the Ray resources it reserves, so Ray packs actors onto the cluster's
GPUs. Actors pull episodes from the store's queue and write to PostgreSQL directly: nothing but the run id
and the database URL travels through Ray, so an actor that dies costs only its leases.

Ray is imported here only, inside functions: `strop --help` and runs without `--ray` never load it.
"""

from __future__ import annotations

import os
from typing import Any

from strop.agents.worker import WorkerSettings


class RolloutActor:
    """The actor class (Ray wraps it in `ray.remote` with the pool's resources)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = WorkerSettings.model_validate(settings)

    def pid(self) -> int:
        return os.getpid()

    def run(self, run_id: str) -> dict[str, Any]:
        from strop.agents.worker import run_worker

        return run_worker(None, run_id, self.settings).model_dump()  # the store URL is in $STROP_DB


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        from strop.agents.scale import ScaleError

        raise ScaleError(
            "Ray is not installed: pip install 'strop[ray]' on the driver and on every node of the "
            "cluster (or drop --ray to run the workers as local processes)"
        ) from None
    return ray


class RayPool:
    """N rollout actors on a Ray cluster. Connects to the cluster if this process is not connected yet, and
    disconnects at `stop` only if it connected."""

    def __init__(
        self,
        db_url: str,
        n: int,
        settings: WorkerSettings,
        *,
        address: str = "auto",
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
    ) -> None:
        self.db_url, self.n, self.settings = db_url, n, settings
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        self.actors: list[Any] = []
        self.refs: list[Any] = []
        self._pids: list[int] = []
        self._connected = False
        self._errors: list[str] = []
        self._done: set[int] = set()
        self.external = False

    def start(self, run_id: str) -> None:
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=True)
            self._connected = True
        cls = ray.remote(RolloutActor)
        # The URL travels in the actors' environment, as for local worker processes: never on a command line.
        env = {
            "STROP_DB": self.db_url,
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
            "TOKENIZERS_PARALLELISM": "false",
        }
        self.actors = [
            cls.options(
                num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_restarts=0, runtime_env={"env_vars": env}
            ).remote(self.settings.model_dump())
            for _ in range(self.n)
        ]
        self._pids = ray.get([a.pid.remote() for a in self.actors])
        self.refs = [a.run.remote(run_id) for a in self.actors]

    def pids(self) -> list[int]:
        return list(self._pids)

    def alive(self) -> int:
        ray = _ray()
        ready, _ = ray.wait(self.refs, num_returns=len(self.refs), timeout=0)
        for ref in ready:
            i = self.refs.index(ref)
            if i in self._done:
                continue
            self._done.add(i)
            try:
                ray.get(ref)
            except Exception as e:  # the actor died (killed, out of memory) or its worker raised
                self._errors.append(
                    f"actor {i} (pid {self._pids[i]}): {type(e).__name__}: {str(e).splitlines()[0]}"
                )
        return len(self.refs) - len(ready)

    def errors(self) -> list[str]:
        return list(self._errors)

    def stop(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        ray = _ray()
        stats = []
        try:
            ready, _ = ray.wait(self.refs, num_returns=len(self.refs), timeout=timeout)
            for ref in ready:
                try:
                    stats.append(ray.get(ref))
                except Exception:  # a dead actor has no stats; alive() has recorded why
                    continue
        finally:
            for actor in self.actors:
                ray.kill(actor)
            if self._connected:
                ray.shutdown()
        return stats
