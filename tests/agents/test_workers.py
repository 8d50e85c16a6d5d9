"""Rollout workers on the store's queue, on both databases: in-process workers sharing a run, the version check
per claim, episodes that raise, and the driver with local worker processes (one SIGKILLed mid-run)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from strop.agents.scale import ScaleError, ScaleSettings, run_on_workers
from strop.agents.work_spec import WorkSpecError
from strop.agents.worker import Worker, WorkerSettings
from strop.memory.records import ModelStatus
from tests.agents.scale_helpers import assert_each_once, register_sim, run_record, sim_spec, tasks


async def _enqueue(store, run_id: str, spec, task_list) -> None:
    from strop.agents.loops.base import episode_id
    from strop.agents.work_spec import WORK_KEY

    store.create_run(run_record(run_id))
    store.enqueue_work(
        run_id,
        [(episode_id(run_id, t.id), t.id, t.model_dump(mode="json")) for t in task_list],
        run_config={WORK_KEY: spec.model_dump(mode="json")},
    )


async def test_two_workers_share_a_run_and_write_each_episode_once(store) -> None:
    register_sim(store)
    task_list = tasks(40)
    await _enqueue(store, "r1", sim_spec(checkpoints=True), task_list)  # the checkpointed path
    settings = WorkerSettings(concurrency=8, lease_ttl=10, poll=0.05)
    a, b = Worker(store, settings), Worker(store, settings)
    sa, sb = await asyncio.gather(a.run("r1"), b.run("r1"))
    assert sa.episodes + sb.episodes == 40 and sa.episodes > 0 and sb.episodes > 0
    assert sa.lost == sb.lost == 0
    assert_each_once(store, "r1", task_list)
    ep = store.list_episodes("r1")[0]
    assert len(ep.steps) == 2 and ep.steps[0].model_version == "sim-v1"


async def test_workers_reload_when_the_run_wants_another_version(store) -> None:
    register_sim(store)
    register_sim(store, "sim-v2", status="candidate")
    worker = Worker(store, WorkerSettings(concurrency=4, poll=0.05, exit_when_idle=True))
    await _enqueue(store, "c1", sim_spec("sim-v1"), tasks(6))
    await _enqueue(store, "c2", sim_spec("sim-v2"), tasks(6))
    stats = await worker.run()  # serves every open run, oldest first
    assert stats.episodes == 12 and stats.reloads == 1
    versions = {r: {s.model_version for e in store.list_episodes(r) for s in e.steps} for r in ("c1", "c2")}
    assert versions == {"c1": {"sim-v1"}, "c2": {"sim-v2"}}


async def test_a_following_role_picks_up_a_promotion_at_the_next_claim(store) -> None:
    register_sim(store)
    register_sim(store, "sim-v2", status="candidate")
    task_list = tasks(12)
    await _enqueue(store, "f", sim_spec(follow=True, latency=0.01), task_list)
    worker = Worker(store, WorkerSettings(concurrency=2, poll=0.05))
    run = asyncio.create_task(worker.run("f"))
    while store.work_counts("f").done < 4:
        await asyncio.sleep(0.01)
    store.set_model_status("sim-v2", ModelStatus.PROMOTED)
    await run
    used = [s.model_version for e in store.list_episodes("f") for s in e.steps]
    assert used[0] == "sim-v1" and used[-1] == "sim-v2" and worker.stats.reloads == 1
    assert_each_once(store, "f", task_list)


async def test_an_episode_that_keeps_raising_ends_failed_and_the_driver_says_so(store, monkeypatch) -> None:
    register_sim(store)
    task_list = tasks(5)
    await _enqueue(store, "bad", sim_spec(max_attempts=2), task_list)
    from strop.agents.sim_engine import SimEngine

    real = SimEngine.generate

    async def generate(self, requests):  # type: ignore[no-untyped-def]
        if any(task_list[2].prompt in str(r) for r in requests):
            raise RuntimeError("engine blew up")
        return await real(self, requests)

    monkeypatch.setattr(SimEngine, "generate", generate)
    stats = await Worker(store, WorkerSettings(concurrency=4, poll=0.05)).run("bad")
    assert stats.episodes == 4 and stats.failed == 2
    [failed] = store.list_work("bad", "failed")
    assert failed.task_id == task_list[2].id and "engine blew up" in failed.error


async def test_an_item_the_engine_refuses_is_recorded_failed_at_once_not_retried(store, monkeypatch) -> None:
    from strop.agents.engines.base import PromptTooLongError
    from strop.agents.sim_engine import SimEngine
    from strop.memory.records import EpisodeStatus

    register_sim(store)
    task_list = tasks(4)
    await _enqueue(store, "long", sim_spec(max_attempts=3), task_list)
    real, calls = SimEngine.generate, []

    async def generate(self, requests):  # type: ignore[no-untyped-def]
        if any(task_list[1].prompt in str(r) for r in requests):
            calls.append(1)
            raise PromptTooLongError(
                "the prompt alone is 5000 tokens, over the context window of 1024 tokens"
            )
        return await real(self, requests)

    monkeypatch.setattr(SimEngine, "generate", generate)
    stats = await Worker(store, WorkerSettings(concurrency=4, poll=0.05)).run("long")
    assert len(calls) == 1 and stats.failed == 1  # deterministic: one try, not max_attempts
    assert_each_once(store, "long", task_list)  # the item is done: its episode stands for it
    [bad] = [e for e in store.list_episodes("long", children=False) if e.status == EpisodeStatus.FAILED]
    assert bad.task_id == task_list[1].id and bad.outcome["error_kind"] == "too_long"
    assert "context window" in bad.outcome["error"]


async def test_a_run_without_a_work_spec_is_refused_with_the_fix(store) -> None:
    store.create_run(run_record("plain"))
    with pytest.raises(WorkSpecError, match="--workers N"):
        await Worker(store, WorkerSettings(poll=0.05)).run("plain")


class _DeadPool:
    """A pool whose workers all died at once (killed by the OOM killer, say)."""

    external = False

    def start(self, run_id: str) -> None: ...

    def alive(self) -> int:
        return 0

    def errors(self) -> list[str]:
        return ["worker pid 1 exited with status -9"]

    def stop(self) -> list[dict]:
        return []


async def test_the_driver_gives_up_when_every_worker_is_gone(store) -> None:
    with pytest.raises(ScaleError, match=r"all 2 workers are gone with 3 episode.*status -9.*--run-id g"):
        await run_on_workers(
            store,
            run_record("g"),
            sim_spec(),
            tasks(3),
            ScaleSettings(workers=2),
            progress=False,
            pool=_DeadPool(),
        )
    assert store.get_run("g").status == "failed"
    assert store.work_counts("g").todo == 3  # kept for the rerun


def test_two_strop_worker_processes_join_one_run(pg_url) -> None:
    import re
    import subprocess
    import sys

    from strop.memory import Store

    store = Store(pg_url)
    register_sim(store)
    cmd = [
        sys.executable,
        "-m",
        "strop",
        "worker",
        "--db",
        pg_url,
        "--concurrency",
        "8",
        "--poll",
        "0.2",
        "--wait",
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)
    ]
    try:
        for p in procs:  # both up and polling before the run appears, so both get a share of it
            assert p.stdout.readline().startswith("worker "), p.stdout.read()
        task_list = tasks(60)
        # The driver with external workers: it starts none, enqueues, and waits for the queue to drain.
        res = asyncio.run(
            run_on_workers(
                store,
                run_record("join"),
                sim_spec(latency=0.2),
                task_list,
                ScaleSettings(external=True),
                progress=False,
            )
        )
        assert res.episodes == res.episodes_run == 60
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)  # graceful: finish what is in flight, print the tally, exit 0
    outs = [p.communicate(timeout=30)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    written = [int(re.search(r"(\d+) episodes written", out).group(1)) for out in outs]
    assert sum(written) == 60 and min(written) > 0, outs  # both joined and shared the work
    assert_each_once(store, "join", task_list)
    assert len({w.owner for w in store.list_work("join")}) == 2
    store.close()


def _worker_children() -> list[int]:
    """Pids of this process's `python -m strop.agents.worker` children (what `strop run --workers` starts)."""
    from pathlib import Path

    me, found = str(os.getpid()), []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if ppid == me and b"strop.agents.worker" in cmd:
            found.append(int(proc.name))
    return found


def test_strop_run_workers_2_on_the_tiny_model_survives_a_sigkilled_worker(pg_url, tiny_model_path) -> None:
    import threading
    import time

    from typer.testing import CliRunner

    from strop.cli import app
    from strop.memory import Store

    store = Store(pg_url)
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:  # SIGKILL one worker once a few episodes are in
        while not stop.is_set() and not killed:
            run = store.get_run("tinyw")
            if run is not None and store.work_counts("tinyw").done >= 4 and (pids := _worker_children()):
                killed.append(pids[0])
                os.kill(pids[0], signal.SIGKILL)
            time.sleep(0.05)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        out = CliRunner().invoke(
            app,
            [
                "run",
                "best-of-n",
                "-m",
                "tiny",
                "-o",
                "digits=1",
                "--n",
                "2",
                "--max-tokens",
                "16",
                "--episodes",
                "16",
                "--workers",
                "2",
                "--concurrency",  # claims of 4: the run takes a few batches, so the kill lands mid-run
                "4",
                "--lease-ttl",
                "2",
                "--run-id",
                "tinyw",
                "--db",
                pg_url,
            ],
        )
    finally:
        stop.set()
        thread.join()
    assert out.exit_code == 0, out.output
    assert killed and "16 episodes, 32 answers" in out.output
    assert_each_once(store, "tinyw", _train_tasks(16))
    steps = [s for e in store.list_episodes("tinyw") for s in e.steps]
    assert len(steps) == 32 and all(s.token_ids for s in steps)  # real generations, token ids kept
    assert store.get_run("tinyw").status == "finished"
    store.close()


def _train_tasks(n: int) -> list:
    from strop.sandbox.tasks import Split, load_task_set

    return load_task_set("arithmetic", digits=1).tasks(Split.TRAIN, n)


def test_the_cli_and_recipes_load_neither_ray_nor_langgraph() -> None:
    import json
    import subprocess
    import sys

    code = (
        "import sys, json; from strop.cli import app; import strop.training.recipe, strop.agents.scale; "
        "print(json.dumps([m for m in ('ray', 'langgraph', 'sqlalchemy', 'torch') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
