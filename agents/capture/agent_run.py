"""`AgentRun`: episodes for an agent someone else wrote, and clients bound to each, in-process or remote.

Why over HTTP even in-process: a user's agent (LangGraph, the `openai` client, the Agents SDK) is code we did
not write, and its one seam is a base URL. Local mode (`AgentRun(engine)`) serves `strop serve`'s app from the
current event loop (the hf engine's queues belong to the loop that made them) on 127.0.0.1 and a free port;
remote mode (`AgentRun(base_url=...)`) talks to a `strop serve MODEL --db URL`. Both go through the same
endpoints, so what a test checks locally is what runs against a server.

    async with AgentRun(engine, store=store) as run:
        async with await run.episode(task) as ep:
            answer = await my_agent(task, ep.client())      # or ep.chat_model() for LangChain
            await ep.reward_with(VerifierCritic(task_set), answer)
            await ep.finish(answer)

`rollouts` runs an agent function n times per task (a group) and turns what goes wrong into failed episodes
with the error kept: an exception, a hang past `timeout_s`, an agent that never called the model.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

import httpx

from strop.agents.capture.episodes import CapturedEpisode
from strop.agents.capture.hub import CaptureHub, StoreSink
from strop.agents.capture.rollouts import (
    AgentFn,
    RewardSource,
    RolloutSettings,
    TaskRollouts,
    check_agent,
    describe,
    rollout_task,
    score,
)
from strop.critics.base import Critique
from strop.sandbox.tasks.base import Task

# sent when no key is given: a server without --api-key checks none, and clients insist on one
API_KEY = "strop"
API_KEY_ENV = "STROP_API_KEY"  # what `strop serve` reads its key from; a remote run sends it by default


class AgentRunError(RuntimeError):
    """A request to the capture endpoints that failed; `status_code` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status_code: int = 0) -> None:
        super().__init__(message)
        self.status_code = status_code


class AgentEpisode:
    """One open episode: its base URL, clients bound to it, and how to reward and close it.

    As an async context manager it finishes on a normal exit (if still open) and, when the body raises, fails
    the episode with the error (type and message) stored, then re-raises.
    """

    def __init__(
        self, run: AgentRun, info: dict[str, Any], task: Task | None, captured: CapturedEpisode | None
    ) -> None:
        self.run = run
        self.id: str = info["id"]
        self.base_url: str = info["base_url"]
        self.task = task
        self.status: str = str(info.get("status", "running"))
        # local mode: the hub's live record of the episode (its calls with token ids); None when remote
        self.captured = captured

    def __repr__(self) -> str:
        return f"AgentEpisode(id={self.id!r}, status={self.status!r}, base_url={self.base_url!r})"

    def client(self, **kwargs: Any) -> Any:
        """An `openai.AsyncOpenAI` whose base URL is this episode's: every call it makes is recorded."""
        import openai

        kwargs.setdefault("http_client", self.run.http)
        kwargs.setdefault("api_key", self.run.api_key)
        return openai.AsyncOpenAI(base_url=self.base_url, **kwargs)

    def chat_model(self, model: str = "strop", **kwargs: Any) -> Any:
        """LangChain's `ChatOpenAI` bound to this episode (any model name is served by the episode's model).

        Use it asynchronously (`ainvoke`, `astream`): in local mode a sync call would block the event loop
        that serves it."""
        try:
            from langchain_openai import ChatOpenAI
        except ImportError as e:
            raise ImportError(
                "AgentEpisode.chat_model needs LangChain's OpenAI chat model: pip install 'strop[langchain]'"
            ) from e
        kwargs.setdefault("http_async_client", self.run.http)
        kwargs.setdefault("api_key", self.run.api_key)
        return ChatOpenAI(model=model, base_url=self.base_url, **kwargs)

    async def reward(self, value: float | dict[str, float]) -> dict[str, Any]:
        """Record a reward (a number, or named rewards whose sum is the episode's)."""
        body = (
            {"rewards": {k: float(v) for k, v in value.items()}}
            if isinstance(value, dict)
            else {"reward": float(value)}
        )
        return await self._post("reward", body)

    async def reward_with(self, critic: RewardSource, answer: str) -> Critique | None:
        """Reward `answer` with a strop critic (or a task set's verifier); returns the critique."""
        if self.task is None:
            raise ValueError(f"episode {self.id} was opened without a task: reward it with reward(value)")
        value, critique = await score(critic, self.task, answer)
        if value is not None:
            await self.reward(value)
        return critique

    async def finish(self, answer: str | None = None) -> dict[str, Any]:
        return await self._post("finish", {} if answer is None else {"answer": answer})

    async def fail(self, error: str | BaseException) -> dict[str, Any]:
        """Close as failed with the error kept; a failed episode is never trained on."""
        text = describe(error) if isinstance(error, BaseException) else str(error)
        return await self._post("fail", {"error": text})

    async def abort(self, reason: str = "aborted by the client") -> dict[str, Any]:
        return await self._post("abort", {"reason": reason})

    async def summary(self) -> dict[str, Any]:
        """What the server knows of the episode (status, rewards, calls, drift; `episode`: the full record)."""
        return await self.run.request("GET", f"/episodes/{self.id}")

    async def calls(self) -> int:
        """Calls recorded so far."""
        if self.captured is not None:
            return len(self.captured.calls)
        return int((await self.summary())["calls"])

    async def _post(self, what: str, body: dict[str, Any]) -> dict[str, Any]:
        out = await self.run.request("POST", f"/episodes/{self.id}/{what}", body)
        self.status = str(out.get("status", self.status))
        return out

    async def __aenter__(self) -> AgentEpisode:
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self.status != "running":
            return
        try:
            if exc is None:
                await self.finish()
            else:
                await self.fail(exc if not isinstance(exc, asyncio.CancelledError) else "cancelled")
        except (AgentRunError, httpx.HTTPError) as e:
            if exc is None:
                raise
            exc.add_note(f"(closing episode {self.id} as failed did not work either: {describe(e)})")


class AgentRun:
    """Opens capture episodes and hands out clients bound to them; see the module docstring.

    Local: `AgentRun(engine, store=None, run_id=None, sft=False)`: episodes live in memory, or in `store`
    (written call by call, credited per group as its last episode closes; `sft` adds SFT examples). Remote:
    `AgentRun(base_url="http://host:port")` against `strop serve MODEL --db URL` (the server owns the store);
    `api_key` (default: $STROP_API_KEY) is sent on every request, episode endpoints and episode clients alike,
    for a server started with --api-key.
    The local server starts on first use in the current event loop and stops at `close()`.
    """

    def __init__(
        self,
        engine: Any = None,
        *,
        store: Any = None,
        run_id: str | None = None,
        sft: bool = False,
        base_url: str | None = None,
        api_key: str | None = None,
        keep_closed: int = 10_000,
        request_timeout_s: float = 600.0,
        max_queue: int = 65_536,
    ) -> None:
        if (engine is None) == (base_url is None):
            raise ValueError(
                "AgentRun needs an engine (in-process: AgentRun(engine)) or a server (AgentRun(base_url="
                "'http://host:port') for `strop serve MODEL --db URL`), not both"
            )
        if base_url is not None and (store is not None or sft):
            raise ValueError(
                "store and sft belong to the server in remote mode: start it with `strop serve MODEL --db URL`"
            )
        self.engine = engine
        self.api_key = api_key or os.environ.get(API_KEY_ENV) or API_KEY
        self.request_timeout_s = request_timeout_s
        # local mode: rows queued before 429; rollouts are bounded by their own slots, so this only guards memory
        self.max_queue = max_queue
        self.hub: CaptureHub | None = None
        if engine is not None:
            sink = StoreSink(store) if store is not None else None
            self.hub = CaptureHub(sink, run_id=run_id, sft=sft, keep_closed=keep_closed)
        self.run_id = self.hub.run_id if self.hub is not None else run_id
        root = (base_url or "").rstrip("/")
        self.root = root[: -len("/v1")] if root.endswith("/v1") else root
        self._http: httpx.AsyncClient | None = None
        self._server: Any = None
        self._tick: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def http(self) -> httpx.AsyncClient:
        """The connection pool every client of this run shares (closed with the run)."""
        if self._http is None:
            raise AgentRunError(
                "the AgentRun is not started: use `async with AgentRun(...)` or await start()"
            )
        return self._http

    async def start(self) -> AgentRun:
        """Start the local server (local mode) and the connection pool; idempotent."""
        if self._http is not None:
            self._same_loop()
            return self
        async with self._lock:
            if self._closed:
                raise AgentRunError("this AgentRun is closed: make a new one")
            if self._http is None:
                self._loop = asyncio.get_running_loop()
                if self.engine is not None:
                    await self._serve()
                self._http = httpx.AsyncClient(
                    headers={"Authorization": f"Bearer {self.api_key}"},  # a keyed `strop serve` checks it
                    timeout=httpx.Timeout(self.request_timeout_s, connect=10.0),
                    limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256),
                )
        return self

    async def _serve(self) -> None:
        """uvicorn's startup and tick loop without `serve()`: serve() takes over SIGINT, which an embedding
        program (a notebook, a user's script) must keep."""
        import uvicorn

        from strop.agents.server import create_app

        assert self.hub is not None
        app = create_app(self.engine, hub=self.hub, max_queue=self.max_queue)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,  # the OS picks a free port: no race between finding one and binding it
            lifespan="off",
            log_config=None,
            log_level=None,
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup()
        except SystemExit as e:  # uvicorn exits the process when it cannot bind
            raise AgentRunError("the local capture server could not start on 127.0.0.1") from e
        port = server.servers[0].sockets[0].getsockname()[1]
        self._server = server
        self.root = f"http://127.0.0.1:{port}"
        self._tick = asyncio.create_task(server.main_loop(), name=f"strop-agent-run:{port}")

    def _same_loop(self) -> None:
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            raise AgentRunError(
                "this AgentRun was started in another event loop; make one per event loop (asyncio.run)"
            )

    async def close(self) -> None:
        """Abort episodes still open (local mode), stop the server and close the connections; idempotent."""
        self._closed = True
        if self.hub is not None:
            for ep in self.hub.episodes():
                if ep.open:
                    await self.hub.abort(ep.id, "the AgentRun closed before the episode ended")
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()
        server, self._server = self._server, None
        if server is not None:
            server.should_exit = True
            if self._tick is not None:
                await self._tick
                self._tick = None
            await server.shutdown()

    async def __aenter__(self) -> AgentRun:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One call to the capture endpoints; an error status raises AgentRunError with the server's message."""
        await self.start()
        try:
            r = await self.http.request(method, f"{self.root}{path}", json=body)
        except httpx.HTTPError as e:
            raise AgentRunError(f"{method} {self.root}{path}: {describe(e)} (is the server up?)") from e
        if r.status_code >= 400:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text
            raise AgentRunError(f"{method} {path}: {r.status_code} {message}", r.status_code)
        return r.json()  # type: ignore[no-any-return]

    async def episode(
        self,
        task: Task | None = None,
        *,
        task_id: str | None = None,
        group: str | None = None,
        group_size: int = 1,
        seed: int | None = None,
        seed_stride: int = 1,
        metadata: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> AgentEpisode:
        """Open an episode (for `task`, or an ad-hoc id). Episodes of one `group` (default: the task) are
        credited together once `group_size` of them closed. `seed`: calls that send none sample with seed +
        call index * seed_stride, so a rerun of the agent samples the same tokens."""
        body: dict[str, Any] = {
            "task_id": task.id if task is not None else task_id,
            "run_id": run_id or self.run_id,
            "metadata": metadata or {},
            "group": group,
            "group_size": group_size,
            "seed": seed,
            "split": str(task.split) if task is not None else "train",
        }
        if seed_stride != 1:  # only when used: a server without the field still takes the rest
            body["seed_stride"] = seed_stride
        info = await self.request("POST", "/episodes", {k: v for k, v in body.items() if v is not None})
        captured = await self.hub.get(info["id"], open_only=False) if self.hub is not None else None
        return AgentEpisode(self, info, task, captured)

    async def rollouts(
        self,
        agent_fn: AgentFn,
        tasks: Sequence[Task],
        *,
        n: int = 4,
        concurrency: int = 16,
        timeout_s: float = 120.0,
        reward: RewardSource = None,
        seed: int | None = None,
    ) -> list[TaskRollouts]:
        """Run `agent_fn(task, client)` n times per task, `concurrency` at once; each task's n episodes form a
        group (group = the task id). `reward`: a critic, a task set (its verifier), a function (task, answer)
        -> float, or None (recorded, not trained on). `seed`: see `rollout_task`. Returns, per task, each
        rollout's status, answer, reward and error."""
        check_agent(agent_fn)
        slots = asyncio.Semaphore(concurrency)
        settings = RolloutSettings(n=n, slots=slots, timeout_s=timeout_s, reward=reward, seed=seed)
        return list(await asyncio.gather(*(rollout_task(self, agent_fn, t, settings) for t in tasks)))

    async def rollout_task(
        self,
        agent_fn: AgentFn,
        task: Task,
        *,
        n: int = 4,
        group: str | None = None,
        run_id: str | None = None,
        slots: asyncio.Semaphore | None = None,
        timeout_s: float = 120.0,
        reward: RewardSource = None,
        seed: int | None = None,
    ) -> TaskRollouts:
        """The n rollouts of one task as a group (`group`, default the task id; `run_id`, default the run's).
        With `seed`, rollout k's call j samples with `task_seed(seed, task.id) + k + j * n` (best-of-N's
        sample k uses `task_seed(seed, task.id) + k`); calls that send a seed keep theirs."""
        settings = RolloutSettings(
            n=n, group=group, run_id=run_id, slots=slots, timeout_s=timeout_s, reward=reward, seed=seed
        )
        return await rollout_task(self, agent_fn, task, settings)
