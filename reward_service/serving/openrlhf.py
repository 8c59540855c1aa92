"""OpenRLHF's remote reward protocol, so `--reward.remote_url http://HOST:PORT/get_reward` works
unchanged: `POST /get_reward` with `{"query": [...], "prompts": [...], "labels": [...]}` answers
`{"rewards": [...], "scores": [...], "extra_logs": {}}`. A thin route over Engine.score."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from reward_service.engine.engine import Engine
from reward_service.engine.schemas import ScoreRequest
from reward_service.errors import TooManyItems
from reward_service.serving.abandonment import request_deadline, unless_abandoned


class OpenRLHFRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenRLHF versions add fields; unknown ones pass

    query: list[str] = Field(min_length=1, description="Prompt + response texts, one per sample.")
    prompts: list[str] | None = Field(
        None,
        description="The prompt of each query; where a query starts with its prompt, the "
        "rest is its completion and the two are scored as a pair.",
    )
    labels: list[Any] | None = Field(None, description="Accepted and ignored (for rule rewards).")


class OpenRLHFResponse(BaseModel):
    rewards: list[float] = Field(description="One reward per query, in order.")
    scores: list[float] = Field(description="The same values (OpenRLHF reads either).")
    extra_logs: dict[str, list[float]] = Field(default_factory=dict)


def split_pairs(query: list[str], prompts: list[str] | None) -> list[tuple[str, str] | None]:
    """(prompt, completion) for each query that starts with its prompt; None scores it whole."""
    if prompts is None or len(prompts) != len(query):
        return [None] * len(query)
    return [
        (prompt, text[len(prompt) :]) if prompt and text.startswith(prompt) else None
        for text, prompt in zip(query, prompts, strict=True)
    ]


def create_router(engine: Engine) -> APIRouter:
    router = APIRouter()

    @router.post("/get_reward", response_model=OpenRLHFResponse)
    async def get_reward(request: OpenRLHFRequest, http_request: Request) -> OpenRLHFResponse:
        """OpenRLHF remote reward: queries scored by the server's first model."""
        limit = engine.batching.max_items_per_request
        if len(request.query) > limit:  # checked here too: a mixed query is two engine requests
            raise TooManyItems(
                f"{len(request.query)} queries in one request; this server takes at most {limit}"
            )
        pairs = split_pairs(request.query, request.prompts)
        paired = [index for index, pair in enumerate(pairs) if pair is not None]
        whole = [index for index, pair in enumerate(pairs) if pair is None]
        requests = []
        if paired:
            requests.append(
                ScoreRequest(
                    prompts=[pairs[i][0] for i in paired], completions=[pairs[i][1] for i in paired]
                )
            )
        if whole:
            requests.append(ScoreRequest(texts=[request.query[i] for i in whole]))
        deadline = request_deadline(http_request)
        responses = await unless_abandoned(
            http_request, asyncio.gather(*(engine.score(r, deadline=deadline) for r in requests))
        )
        rewards = [0.0] * len(request.query)
        for indices, response in zip([i for i in (paired, whole) if i], responses, strict=True):
            for index, reward in zip(indices, response.rewards, strict=True):
                rewards[index] = reward
        return OpenRLHFResponse(rewards=rewards, scores=rewards, extra_logs={})

    return router
