"""OpenRLHF's remote reward protocol, so `--reward.remote_url http://HOST:PORT/get_reward` works
unchanged: `POST /get_reward` (or `/get_reward/{model}` for one of several models) with
`{"query": [...], "prompts": [...], "labels": [...]}` answers
`{"rewards": [...], "scores": [...], "extra_logs": {...}}`. A thin route over Engine.score.

OpenRLHF decodes `prompt + response` with its special tokens, left padding included; the model's
`strip_markup` (model.markup) clears them, so a query scores as its clean prompt/completion pair.
With an API key set, `http://user:KEY@HOST:PORT/get_reward` works too: OpenRLHF's HTTP clients
send the URL's userinfo as Basic credentials, which the key check accepts (serving.auth).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from reward_service.engine.engine import Engine
from reward_service.model.loading import LoadedModel
from reward_service.model.markup import markup_stripper
from reward_service.serving.mixed_items import score_items


class OpenRLHFRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenRLHF versions add fields; unknown ones pass

    query: list[str] = Field(min_length=1, description="Prompt + response texts, one per sample.")
    prompts: list[str] | None = Field(
        None,
        description="The prompt of each query; where a query starts with its prompt (after "
        "markup such as left padding), the rest is its completion and the two are scored as a "
        "pair.",
    )
    labels: list[Any] | None = Field(None, description="Accepted and ignored (for rule rewards).")


class OpenRLHFResponse(BaseModel):
    rewards: list[float] = Field(description="One reward per query, in order.")
    scores: list[float] = Field(description="The same values (OpenRLHF reads either).")
    extra_logs: dict[str, list[float]] = Field(
        default_factory=dict,
        description="Where the model's reward combines several outputs: each output's value "
        "per query, by label (OpenRLHF logs them beside the reward).",
    )


def split_pairs(
    query: list[str], prompts: list[str] | None, strip: Callable[[str], str] = lambda text: text
) -> list[tuple[str, str] | None]:
    """(prompt, completion) for each query that holds its prompt with nothing but markup before
    it (`strip` clears markup); None scores the query whole."""
    if prompts is None or len(prompts) != len(query):
        return [None] * len(query)
    pairs: list[tuple[str, str] | None] = []
    for text, prompt in zip(query, prompts, strict=True):
        start = text.find(prompt) if prompt else -1
        if start < 0 or strip(text[:start]):
            pairs.append(None)
        else:
            pairs.append((prompt, text[start + len(prompt) :]))
    return pairs


def combines_outputs(model: LoadedModel) -> bool:
    return len(set(model.resolved.indices)) > 1


def objective_logs(model: LoadedModel, raw: list[list[float]]) -> dict[str, list[float]]:
    """Each output the reward combines, per query, from the queries' raw logits."""
    objectives = model.resolved.objectives(np.asarray(raw), model.id2label)
    return {label: values.tolist() for label, values in objectives.items()}


def create_router(engine: Engine) -> APIRouter:
    router = APIRouter()

    async def get_reward(
        request: OpenRLHFRequest, http_request: Request, model_name: str | None
    ) -> OpenRLHFResponse:
        model = engine.loaded_model(model_name)
        strip = markup_stripper(model.mapping.markup_to_strip).clean
        with_objectives = combines_outputs(model)
        pairs = split_pairs(request.query, request.prompts, strip)
        items = [
            text if pair is None else pair for text, pair in zip(request.query, pairs, strict=True)
        ]
        scored = await score_items(
            engine, items, http_request, model=model_name, return_raw=with_objectives
        )
        extra_logs = objective_logs(model, scored.raw) if with_objectives else {}
        return OpenRLHFResponse(
            rewards=scored.rewards, scores=scored.rewards, extra_logs=extra_logs
        )

    @router.post("/get_reward", response_model=OpenRLHFResponse)
    async def get_reward_default(request: OpenRLHFRequest, http_request: Request):
        """OpenRLHF remote reward: queries scored by the server's first model."""
        return await get_reward(request, http_request, None)

    # The schema lists the served names (any other answers 404 model_not_found).
    served_model = Path(
        description="One of the served models.", json_schema_extra={"enum": list(engine.specs)}
    )

    @router.post("/get_reward/{model}", response_model=OpenRLHFResponse)
    async def get_reward_by_model(
        request: OpenRLHFRequest, http_request: Request, model: str = served_model
    ):
        """OpenRLHF remote reward: queries scored by the named model (several reward models in
        one run: one `--reward.remote_url` each)."""
        return await get_reward(request, http_request, model)

    return router
