"""Request and response objects of the scoring API, shared by every transport.

The REST API documents itself from these models; the gRPC transport builds the same request
objects, so both transports validate input in exactly one place.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from reward_service.client.contract import check_items, item_count


class ScoreRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"texts": ["great movie", "a dull, lifeless film"]},
                {"prompts": ["Review: "], "completions": ["I loved it."], "return_raw": True},
            ]
        },
    )

    model: str | None = Field(None, description="Model name; the server's first model if omitted.")
    texts: list[str] | None = Field(
        None, min_length=1, description="Texts to score, one reward each."
    )
    prompts: list[str] | None = Field(
        None, min_length=1, description="Prompts, paired with completions."
    )
    completions: list[str] | None = Field(
        None, min_length=1, description="Completions, one per prompt, in the same order."
    )
    return_raw: bool = Field(False, description="Also return the classifier's raw logits per item.")

    @model_validator(mode="after")
    def _one_kind_of_input(self) -> ScoreRequest:
        check_items(self.texts, self.prompts, self.completions)
        return self

    @property
    def item_count(self) -> int:
        return item_count(self.texts, self.completions)


class ScoreResponse(BaseModel):
    model: str = Field(description="The model that scored the items.")
    rewards: list[float] = Field(description="One reward per item, in request order.")
    raw: list[list[float]] | None = Field(
        None, description="Raw logits per item (when return_raw was set)."
    )
    truncated: int = Field(description="How many items were truncated to the model's max_length.")


class ModelInfo(BaseModel):
    name: str
    source: str
    backend: str
    device: str
    dtype: str
    ready: bool
    labels: list[str]
    max_length: int
    mapping: dict[str, Any]
    description: str | None = None


class ModelCard(BaseModel):
    """A model in the OpenAI API's shape (`client.models.list()` of the `openai` SDK)."""

    id: str = Field(description="The model's name, as `model` takes it.")
    object: Literal["model"] = "model"
    created: int = Field(description="When this server started serving it (Unix seconds).")
    owned_by: str = "reward-service"


class ModelList(BaseModel):
    """Our own `models`, and the same models as the OpenAI API lists them (`object`, `data`)."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
    models: list[ModelInfo]

    @classmethod
    def of(cls, models: list[ModelInfo], created: int) -> ModelList:
        cards = [ModelCard(id=model.name, created=created) for model in models]
        return cls(data=cards, models=models)


class ErrorBody(BaseModel):
    type: str = Field(description="Error kind, e.g. invalid_request, model_not_found, queue_full.")
    message: str = Field(description="What went wrong and what to do about it.")


class ErrorResponse(BaseModel):
    error: ErrorBody
