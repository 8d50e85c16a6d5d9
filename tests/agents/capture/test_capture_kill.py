"""A `strop serve --db` killed mid-episode: the episode stays `running` with the calls it made, is never trained
on, and a server restarted on the same store serves new episodes while the orphan stays as it was.

The real CLI in its own process (SIGKILL gives it no chance to clean up), over the real tiny model, on SQLite and
PostgreSQL (the store writes are the same code; a restart costs a few seconds of model loading).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from strop.memory.records import ExampleKind

QUESTION = [{"role": "user", "content": "What is 12 + 34?"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Serve:
    """`strop serve tiny --db URL` in a child process; its output goes to a log read back on failure."""

    def __init__(self, sqlite_url: str, log: Path) -> None:
        self.port = _free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.log = log
        strop = Path(sys.executable).with_name("strop")
        cmd = [str(strop), "serve", "tiny", "--db", sqlite_url, "--port", str(self.port), "--device", "cpu"]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"strop serve exited:\n{log.read_text()}"
            try:
                if httpx.get(f"{self.root}/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.kill()
        raise AssertionError(f"strop serve did not answer within 120 s:\n{log.read_text()}")

    def post(self, path: str, body: dict[str, object] | None = None) -> httpx.Response:
        return httpx.post(f"{self.root}{path}", json=body or {}, timeout=60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[list[_Serve]]:
    """The servers a test started; any still alive is killed at the end."""
    started: list[_Serve] = []
    yield started
    for s in started:
        s.kill()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_mid_episode_leaves_it_running_and_untrained(
    sqlite_url: str, tmp_path: Path, tiny_model_path: Path, served: list[_Serve]
) -> None:
    from strop.memory import Store

    run = "run-kill"
    first = _Serve(sqlite_url, tmp_path / "serve.log")
    served.append(first)
    ep = first.post("/episodes", {"task_id": "t-killed", "run_id": run}).json()
    client = openai.OpenAI(base_url=ep["base_url"], api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model="m", messages=QUESTION, max_tokens=6, temperature=1.0)
    client.close()
    assert first.post(f"/episodes/{ep['id']}/reward", {"reward": 1.0}).status_code == 200
    first.kill()  # before finish
    assert first.proc.returncode == -signal.SIGKILL

    store = Store(sqlite_url)
    try:
        orphan = store.get_episode(ep["id"])
        assert orphan is not None and orphan.status == "running"
        [step] = orphan.steps
        assert step.token_ids == reply.choices[0].model_extra["token_ids"] and step.logprobs
        assert orphan.examples == [] and orphan.reward == 1.0
        assert [e.id for e in store.captures.list_open()] == [ep["id"]]
        assert store.episode_ids(run) == set()  # not done work: a rerun of the run redoes its task

        second = _Serve(sqlite_url, tmp_path / "serve.log")
        served.append(second)
        # the orphan lived in the dead server's memory: the new one refuses calls and closes for it
        call = second.post(
            f"/episodes/{ep['id']}/v1/chat/completions", {"messages": QUESTION, "max_tokens": 2}
        )
        assert call.status_code == 404 and call.json()["error"]["code"] == "episode_closed", call.text
        assert (
            ep["id"] in call.json()["error"]["message"] and "never trained" in call.json()["error"]["message"]
        )
        assert second.post(f"/episodes/{ep['id']}/finish").status_code == 404

        fresh = second.post("/episodes", {"task_id": "t-fresh", "run_id": run}).json()
        client = openai.OpenAI(base_url=fresh["base_url"], api_key="unused", max_retries=0)
        client.chat.completions.create(model="m", messages=QUESTION, max_tokens=6, temperature=1.0)
        client.close()
        assert second.post(f"/episodes/{fresh['id']}/reward", {"reward": 1.0}).status_code == 200
        assert second.post(f"/episodes/{fresh['id']}/finish").json()["status"] == "finished"

        done = store.get_episode(fresh["id"])
        assert done is not None and done.status == "finished" and len(done.steps) == 1
        assert [x.kind for x in done.examples] == [ExampleKind.ADVANTAGE]  # a group of one: its raw reward
        orphan = store.get_episode(ep["id"])
        assert orphan is not None and orphan.status == "running" and orphan.examples == []
        assert len(orphan.steps) == 1
        assert [e.id for e in store.captures.list_open()] == [ep["id"]]
        assert store.episode_ids(run) == {fresh["id"]}
        assert store.count_examples(run_ids=[run]) == 1
    finally:
        store.close()
