"""Text Embeddings Inference's classifier routes, so a client written for TEI (huggingface_hub's
`InferenceClient.text_classification`, TEI's documented request bodies) works unchanged. Thin
routes over Engine.score on the server's first model: limits, batching, deadlines and metrics
are those of /v1/score.

- `POST /predict` (and `POST /`, where TEI serves a classifier's predict): every label with its
  score, sorted by score, descending. The score is TEI's activation of the model's raw logits
  (softmax over the labels; sigmoid for a one-label model), or the logits with `raw_scores`:
  /v1/score's `raw`. The reward stays on /v1/score: the model's reward mapping of the same raw.
- `POST /rerank`: a query and its texts (a GRPO group: one prompt, K completions) answer
  `[{index, score}]` sorted, each score the reward /v1/score gives the query as prompt and the
  text as completion. `raw_scores` changes nothing there: see RerankRequest.
- `GET /info`: the model and the limits a TEI client reads, with TEI's field names.
- `GET /health`: 200 once ready, 503 otherwise (open without an API key, as TEI keeps it).

Errors keep the service's own format (`{"error": {"type", "message"}}`, serving/http_errors.py).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from reward_service import errors
from reward_service.engine.engine import TOKENIZATION_THREADS, Engine
from reward_service.engine.schemas import ErrorResponse
from reward_service.model.inputs import TokenizerInput
from reward_service.model.loading import LoadedModel
from reward_service.model.mapping import Activation, activate
from reward_service.serving.http_errors import error_response
from reward_service.serving.mixed_items import score_items
from reward_service.serving.version import server_version

# TEI's spellings (its serde aliases): either case.
TruncationDirection = Literal["right", "left", "Right", "Left"]
# A TEI sequence: one text, or a pair scored as /v1/score scores a prompt and its completion.
Sequence = Annotated[list[str], Field(min_length=1, max_length=2)]
INPUTS_SHAPE = (
    "a string, a pair of strings [string, string], or a batch of strings and pairs "
    "[[string], [string, string], ...]"
)


def _input_form(value: Any) -> str | None:
    """TEI reads `inputs` by its first element: a string is one input (a pair with a second
    string), a list starts a batch. Read the same way, a malformed input gets the error of the
    form it started as."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "sequence" if value and isinstance(value[0], str) else "batch"
    return None


PredictInputs = Annotated[
    Annotated[str, Tag("text")]
    | Annotated[Sequence, Tag("sequence")]
    | Annotated[list[Sequence], Tag("batch"), Field(min_length=1)],
    Discriminator(
        _input_form,
        custom_error_type="invalid_inputs",
        custom_error_message=f"inputs must be {INPUTS_SHAPE}",
    ),
]


class PredictRequest(BaseModel):
    # TEI ignores fields it does not know; InferenceClient sends `parameters`.
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {"inputs": "great movie"},
                {"inputs": [["great movie"], ["Review: ", "I loved it."]], "raw_scores": True},
            ]
        },
    )

    inputs: PredictInputs = Field(
        description=f"{INPUTS_SHAPE[0].upper()}{INPUTS_SHAPE[1:]}. One input answers a list of "
        "predictions, a batch a list of them per input."
    )
    truncate: bool | None = Field(
        None,
        description="Cut inputs longer than the model's max_input_length (the default, "
        "auto_truncate in /info); false refuses them (422).",
    )
    truncation_direction: TruncationDirection = Field(
        "right",
        description="The side a long input is cut on. This server cuts on the side the model's "
        "reward_config.json says (truncation_side); an input that would be cut on the other "
        "side is refused (422).",
    )
    raw_scores: bool = Field(False, description="The raw logits, without TEI's activation.")

    def sequences(self) -> list[TokenizerInput]:
        """Each input as the engine takes it: a text, or a (first, second) pair."""
        if isinstance(self.inputs, str):
            return [self.inputs]
        batch = [self.inputs] if isinstance(self.inputs[0], str) else self.inputs
        return [sequence[0] if len(sequence) == 1 else tuple(sequence) for sequence in batch]

    @property
    def is_batch(self) -> bool:
        return not isinstance(self.inputs, str) and not isinstance(self.inputs[0], str)


class Prediction(BaseModel):
    score: float
    label: str


class RerankRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [{"query": "Review: ", "texts": ["I loved it.", "Dull.", "Fine."]}]
        },
    )

    query: str = Field(description="The prompt: scored before each text.")
    texts: list[str] = Field(min_length=1, description="The completions, one score each.")
    truncate: bool | None = Field(None, description="As for /predict.")
    truncation_direction: TruncationDirection = Field("right", description="As for /predict.")
    raw_scores: bool = Field(
        False,
        description="Accepted for TEI's clients; the score is the reward either way. TEI "
        "squashes a reranker's one logit with a sigmoid unless raw_scores: here the score is "
        "already the reward the model's mapping makes of its logits (what /v1/score and a "
        "trainer get), and a second activation would change its scale.",
    )
    return_text: bool = Field(False, description="Answer each text with its score.")


class Rank(BaseModel):
    index: int = Field(description="The text's position in `texts`.")
    text: str | None = Field(None, description="The text (with return_text).")
    score: float = Field(
        description="The reward of the query as prompt and the text as completion."
    )


class ClassifierModel(BaseModel):
    id2label: dict[str, str]
    label2id: dict[str, int]


class ModelType(BaseModel):
    classifier: ClassifierModel


class Info(BaseModel):
    """TEI's /info, from the server's own settings and its first model."""

    model_id: str = Field(description="The model's source: a hub id, or a local folder's name.")
    model_sha: str | None = None
    model_dtype: str
    served_model_name: str = Field(description="The model's name on this server.")
    model_type: ModelType
    max_concurrent_requests: int = Field(
        description="Inputs admitted and not yet answered (max_queue_items); past it 429. TEI "
        "counts a batch's inputs one each too."
    )
    max_input_length: int = Field(description="Tokens the model reads; longer inputs are cut.")
    max_batch_tokens: int = Field(description="Padded tokens per forward pass, at most.")
    max_batch_requests: int | None = Field(description="Inputs per forward pass, at most.")
    max_client_batch_size: int = Field(description="Inputs (or texts) in one request, at most.")
    auto_truncate: bool = Field(description="Whether an input without `truncate` is cut.")
    tokenization_workers: int
    version: str
    sha: str | None = None
    docker_label: str | None = None


def tei_activation(label_count: int) -> Activation:
    """The activation TEI gives a classifier's logits (core/src/infer.rs, `predict`): softmax
    over several labels, sigmoid for one."""
    return "softmax" if label_count > 1 else "sigmoid"


def ranked_predictions(labels: list[str], scores: np.ndarray) -> list[Prediction]:
    """Every label with its score, highest first. TEI sorts ascending (a stable sort), then
    reverses: labels with equal scores come out in reverse index order, so they do here too."""
    ascending = sorted(range(len(labels)), key=lambda index: scores[index])
    return [Prediction(score=scores[index], label=labels[index]) for index in reversed(ascending)]


def check_truncation(
    truncated: int, truncate: bool | None, direction: TruncationDirection, model: LoadedModel
) -> None:
    """Refuses an answer TEI would not give: inputs cut although `truncate` was false, or cut on
    the side the request did not ask for. Checked after scoring, where the cut is known."""
    if not truncated:
        return
    length, side = model.encoder.max_length, model.encoder.truncation_side
    if truncate is False:
        raise errors.InvalidRequest(
            f"{truncated} input(s) are longer than the model's {length} tokens "
            "(max_input_length) and truncate is false: shorten them, or let them be cut "
            "(truncate true, the default)"
        )
    if direction.lower() != side:
        raise errors.InvalidRequest(
            f"{truncated} input(s) are longer than the model's {length} tokens and would be cut "
            f"on the {direction.lower()}; this model cuts on the {side} (truncation_side in its "
            f"reward_config.json): send truncation_direction {side!r}, or shorten them"
        )


def label_scores(
    model: LoadedModel, raw: list[list[float]], raw_scores: bool
) -> list[list[Prediction]]:
    """Each input's ranked predictions: TEI's activation of its logits, or the logits."""
    labels = [model.id2label[index] for index in sorted(model.id2label)]
    logits = np.asarray(raw, dtype=np.float64)
    scores = logits if raw_scores else activate(logits, tei_activation(len(labels)))
    for item, row in enumerate(scores):
        for label, score in zip(labels, row, strict=True):
            if not math.isfinite(score):  # JSON has no NaN; TEI refuses it too
                raise errors.NonFiniteReward(
                    f"model {model.spec.name!r} gave input {item} a score of {score} for label "
                    f"{label!r} (served in {model.backend.dtype})"
                )
    return [ranked_predictions(labels, row.tolist()) for row in scores]


def create_router(engine: Engine) -> APIRouter:
    router = APIRouter(tags=["Text Embeddings Inference"])

    async def predict(body: PredictRequest, http_request: Request) -> list | list[list]:
        model = engine.loaded_model(None)
        scored = await score_items(engine, body.sequences(), http_request, return_raw=True)
        check_truncation(scored.truncated, body.truncate, body.truncation_direction, model)
        predictions = label_scores(model, scored.raw, body.raw_scores)
        return predictions if body.is_batch else predictions[0]

    predict_response = list[Prediction] | list[list[Prediction]]

    @router.post("/predict", response_model=predict_response)
    async def predict_labels(body: PredictRequest, http_request: Request) -> list | list[list]:
        """TEI's predict: every label of the first model with its score, highest first (TEI's
        activation: softmax, or sigmoid for one label; raw logits with raw_scores). The reward
        of the same input is /v1/score's."""
        return await predict(body, http_request)

    @router.post("/", response_model=predict_response)
    async def predict_at_root(body: PredictRequest, http_request: Request) -> list | list[list]:
        """/predict where TEI also serves it for a classifier: InferenceClient posts there."""
        return await predict(body, http_request)

    @router.post("/rerank", response_model=list[Rank], response_model_exclude_none=True)
    async def rerank(body: RerankRequest, http_request: Request) -> list[Rank]:
        """TEI's rerank over a prompt and its completions: the reward of each, highest first."""
        model = engine.loaded_model(None)
        items: list[TokenizerInput] = [(body.query, text) for text in body.texts]
        scored = await score_items(engine, items, http_request)
        check_truncation(scored.truncated, body.truncate, body.truncation_direction, model)
        ranks = [
            Rank(index=index, score=reward, text=body.texts[index] if body.return_text else None)
            for index, reward in enumerate(scored.rewards)
        ]
        # TEI's order: ascending by score (stable), reversed.
        return sorted(ranks, key=lambda rank: rank.score)[::-1]

    @router.get("/info", response_model=Info)
    async def info() -> Info:
        """The first model and the server's limits, with TEI's field names."""
        engine.loaded_model(None)  # NotReady (503) until it is loaded: no half-filled answer
        model = next(info for info in engine.model_infos() if info.name == engine.default_model)
        limits = engine.batching
        return Info(
            model_id=model.source,
            model_dtype=model.dtype,
            served_model_name=model.name,
            model_type=ModelType(
                classifier=ClassifierModel(
                    id2label={str(index): label for index, label in enumerate(model.labels)},
                    label2id={label: index for index, label in enumerate(model.labels)},
                )
            ),
            max_concurrent_requests=limits.max_queue_items,
            max_input_length=model.max_length,
            max_batch_tokens=limits.max_batch_tokens,
            max_batch_requests=limits.max_batch_size,
            max_client_batch_size=limits.max_items_per_request,
            auto_truncate=True,  # /v1/score always cuts to max_length
            tokenization_workers=TOKENIZATION_THREADS,
            version=server_version(),
        )

    @router.get(
        "/health",
        response_class=Response,
        responses={
            200: {"description": "Ready: an empty body, as TEI answers.", "content": None},
            503: {"model": ErrorResponse, "description": "not_ready, shutting_down"},
        },
    )
    async def health() -> Response:
        """TEI's health: 200 once every model is loaded and while each answers, 503 otherwise
        (loading, stalled, shutting down); /health/ready says which."""
        if engine.ready:
            return Response(status_code=200)
        if engine.shutting_down:
            return error_response(
                503, errors.ShuttingDown.error_type, "the server is shutting down"
            )
        problems = engine.problems()
        message = (
            "; ".join(f"model {name!r}: {problem}" for name, problem in problems.items())
            if problems
            else "the models are still loading"
        )
        return error_response(503, errors.NotReady.error_type, message)

    return router
