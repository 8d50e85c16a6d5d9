"""The episode endpoints of `strop serve`: open, reward, finish, fail, abort, and an OpenAI base URL per episode.

`POST /episodes` returns `base_url` = `.../episodes/{id}/v1`; any OpenAI client (or LangChain's `ChatOpenAI`)
pointed there is served exactly like `/v1`, and each call is recorded as a step of that episode. Closing is
idempotent: a repeated finish, fail or abort answers as the first did. A call to an unknown or closed episode is a
404 that names it (code `episode_not_found` or `episode_closed`). With `strop serve --api-key`, these endpoints
take the same key as `/v1` (the app-wide middleware in server_auth.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from strop.agents.capture.episodes import CapturedEpisode, CaptureError, ClosedEpisodeError, Rewards
from strop.agents.capture.hub import CaptureHub
from strop.agents.server_api import ChatCompletionRequest, CompletionRequest  # module level: FastAPI resolves

# the route bodies' (string) annotations in this module's globals; a local import left them query parameters


class OpenEpisode(BaseModel):
    """The body of POST /episodes; every field may be left out."""

    model_config = ConfigDict(extra="forbid")

    task_id: str | None = Field(None, description="The task the agent works on (default: an ad-hoc id).")
    run_id: str | None = Field(None, description="The run it belongs to (default: the server's capture run).")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Anything to keep with the episode.")
    group: str | None = Field(None, description="Episodes credited together (default: the task).")
    group_size: int = Field(1, ge=1, le=4096, description="How many episodes the group waits for.")
    seed: int | None = Field(
        None, description="Calls without a seed sample with seed + call index * seed_stride."
    )
    seed_stride: int = Field(1, ge=1, description="Seed step between calls (the agent loop: its n).")
    split: str = Field("train", description="The task's split; held-out episodes are never trained on.")


class RewardBody(BaseModel):
    """`{"reward": 1.0}`, `{"rewards": {"correct": 1, "format": 0.1}}`, or `{"name": "correct", "value": 1}`."""

    model_config = ConfigDict(extra="forbid")

    reward: float | None = None
    rewards: dict[str, float] | None = None
    name: str | None = None
    value: float | None = None

    @model_validator(mode="after")
    def _one_form(self) -> RewardBody:
        forms = [self.reward is not None, self.rewards is not None, self.value is not None]
        if sum(forms) != 1 or (self.name is not None and self.value is None):
            raise ValueError('send one of {"reward": x}, {"rewards": {name: x}} or {"name": n, "value": x}')
        return self

    def named(self) -> dict[str, float]:
        if self.rewards is not None:
            return self.rewards
        if self.value is not None:
            return {self.name or "reward": self.value}
        return {"reward": float(self.reward or 0.0)}


class CloseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    answer: str | None = Field(None, description="The agent's final answer, kept with the episode.")
    reason: str | None = Field(None, description="Why it was aborted.")
    error: str | None = Field(None, description="Why it failed (POST .../fail): kept with the episode.")


def summary(episode: CapturedEpisode, base_url: str | None = None) -> dict[str, Any]:
    out = {
        "id": episode.id,
        "object": "episode",
        "run_id": episode.run_id,
        "task_id": episode.task_id,
        "group": episode.group,
        "status": str(episode.status),
        "reward": episode.reward,
        "rewards": episode.rewards,
        "calls": len(episode.calls),
        "drift": episode.drift(),
        **episode.tool_call_counts(),
    }
    if base_url is not None:
        out["base_url"] = base_url
    if episode.error is not None:
        out["error"] = episode.error
    return out


def add_episode_routes(
    app: FastAPI,
    hub: CaptureHub,
    *,
    chat: Callable[..., Awaitable[Any]],
    complete: Callable[..., Awaitable[Any]],
    models: Callable[[], Awaitable[dict[str, Any]]],
    error: Callable[..., JSONResponse],
) -> None:
    """Mount the episode endpoints on `app`; `chat`/`complete` serve a request under an episode id."""

    def refused(e: CaptureError) -> JSONResponse:
        code = "episode_closed" if isinstance(e, ClosedEpisodeError) else "episode_not_found"
        return error(404, str(e), code=code)

    async def body_of(request: Request, model: type[BaseModel]) -> BaseModel | JSONResponse:
        raw = await request.body()
        try:
            return model.model_validate_json(raw or b"{}")
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(p) for p in first.get("loc", ())) or None
            return error(400, f"invalid {model.__name__} body: {first.get('msg')}", param=field)

    @app.post("/episodes")
    async def open_episode(request: Request) -> Any:
        body = await body_of(request, OpenEpisode)
        if isinstance(body, JSONResponse):
            return body
        assert isinstance(body, OpenEpisode)
        ep = await hub.open(**body.model_dump())
        base = str(request.base_url).rstrip("/")
        return summary(ep, f"{base}/episodes/{ep.id}/v1")

    @app.get("/episodes/{episode_id}")
    async def show(episode_id: str) -> Any:
        try:
            ep = await hub.get(episode_id, open_only=False)
        except CaptureError as e:
            return refused(e)
        return {**summary(ep), "episode": ep.record().model_dump(mode="json")}

    @app.post("/episodes/{episode_id}/reward")
    async def reward(episode_id: str, request: Request) -> Any:
        body = await body_of(request, RewardBody)
        if isinstance(body, JSONResponse):
            return body
        assert isinstance(body, RewardBody)
        try:
            values = Rewards(values=body.named()).values
            ep = await hub.reward(episode_id, values)
        except ValidationError as e:
            return error(400, f"invalid reward: {e.errors()[0].get('msg')}", param="reward")
        except CaptureError as e:
            return refused(e)
        return summary(ep)

    async def _close(episode_id: str, request: Request, how: str) -> Any:
        body = await body_of(request, CloseBody)
        if isinstance(body, JSONResponse):
            return body
        assert isinstance(body, CloseBody)
        try:
            if how == "finish":
                ep = await hub.finish(episode_id, answer=body.answer)
            elif how == "fail":
                ep = await hub.fail(episode_id, body.error or body.reason or "failed (no error given)")
            else:
                ep = await hub.abort(episode_id, body.reason or "aborted by the client")
        except CaptureError as e:
            return refused(e)
        return summary(ep)

    @app.post("/episodes/{episode_id}/finish")
    async def finish(episode_id: str, request: Request) -> Any:
        return await _close(episode_id, request, "finish")

    @app.post("/episodes/{episode_id}/fail")
    async def fail(episode_id: str, request: Request) -> Any:
        """The agent raised or hung: the episode is kept with its error and never trained on."""
        return await _close(episode_id, request, "fail")

    @app.post("/episodes/{episode_id}/abort")
    async def abort(episode_id: str, request: Request) -> Any:
        return await _close(episode_id, request, "abort")

    @app.get("/episodes/{episode_id}/v1/models")
    async def episode_models(episode_id: str) -> Any:
        try:
            await hub.get(episode_id)
        except CaptureError as e:
            return refused(e)
        return await models()

    @app.post("/episodes/{episode_id}/v1/chat/completions", response_model=None)
    async def episode_chat(episode_id: str, body: ChatCompletionRequest, http: Request) -> Any:
        return await chat(body, episode_id, http)  # http: a client that goes away cancels its generation

    @app.post("/episodes/{episode_id}/v1/completions", response_model=None)
    async def episode_complete(episode_id: str, body: CompletionRequest, http: Request) -> Any:
        return await complete(body, episode_id, http)
