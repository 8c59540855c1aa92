"""One request of texts and (prompt, completion) pairs mixed, as protocols other than /v1/score
send them (TEI's /predict batches, OpenRLHF's queries with or without their prompt): scored as
two engine requests, one per kind, and answered in the order sent."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import Request

from reward_service.engine.engine import Engine, check_item_characters, check_item_count
from reward_service.engine.schemas import ScoreRequest
from reward_service.model.inputs import TokenizerInput
from reward_service.serving.abandonment import request_deadline, unless_abandoned


@dataclass(frozen=True)
class ScoredItems:
    rewards: list[float]
    raw: list[list[float]]  # each item's logits with return_raw, else empty rows
    truncated: int


async def score_items(
    engine: Engine,
    items: list[TokenizerInput],
    http_request: Request,
    *,
    model: str | None = None,
    return_raw: bool = False,
) -> ScoredItems:
    """Rewards of texts and pairs, in order. A mix is held to the limits as the one request it
    was sent as (each engine request alone would be under them)."""
    texts = [index for index, item in enumerate(items) if isinstance(item, str)]
    pairs = [index for index, item in enumerate(items) if not isinstance(item, str)]
    if texts and pairs:
        check_item_count(len(items), engine.batching)
        check_item_characters(items, engine.batching)
    groups, requests = [], []
    if texts:
        groups.append(texts)
        requests.append(
            ScoreRequest(model=model, texts=[items[i] for i in texts], return_raw=return_raw)
        )
    if pairs:
        groups.append(pairs)
        requests.append(
            ScoreRequest(
                model=model,
                prompts=[items[i][0] for i in pairs],
                completions=[items[i][1] for i in pairs],
                return_raw=return_raw,
            )
        )
    deadline = request_deadline(http_request)
    responses = await unless_abandoned(
        http_request, asyncio.gather(*(engine.score(r, deadline=deadline) for r in requests))
    )
    rewards: list[float] = [0.0] * len(items)
    raw: list[list[float]] = [[] for _ in items]
    for indices, response in zip(groups, responses, strict=True):
        for position, index in enumerate(indices):
            rewards[index] = response.rewards[position]
            if response.raw is not None:
                raw[index] = response.raw[position]
    return ScoredItems(rewards, raw, sum(response.truncated for response in responses))
