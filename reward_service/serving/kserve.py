"""The Open Inference Protocol (KServe v2) over REST, so Triton's `tritonclient.http` and KServe's
inference clients score against the service unchanged. A thin layer over Engine.score: limits,
batching, deadlines and metrics are those of /v1/score.

Routes: GET /v2/health/live, GET /v2/health/ready, GET /v2 (server metadata), GET
/v2/models/{name} (model metadata), GET /v2/models/{name}/ready, POST /v2/models/{name}/infer.
A model is one of the server's configured names; models have no versions.

Inputs (all BYTES, shape [N] or [N, 1], UTF-8): `texts`, or `prompts` with `completions`.
Outputs (FP32): `rewards`, shape [N], always; `logits`, shape [N, labels], only when asked for
in `outputs`. Tensors come as JSON `data` or, with Triton's binary tensor data extension (what
tritonclient sends by default), as bytes after the JSON header whose length the
`Inference-Header-Content-Length` header gives. Request parameter `timeout` (microseconds, as
tritonclient's `infer(timeout=...)` sends it) is a deadline, as `X-Request-Timeout-Ms` is.

Errors are the protocol's `{"error": "..."}`: 400 for a malformed request, 404 for an unknown
model; the engine's refusals keep their status (413 too many items, 429 queue full, 503 not
ready, 504 deadline). The gRPC side of v2 is not served.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reward_service import errors
from reward_service.engine.engine import Engine
from reward_service.engine.schemas import ScoreRequest
from reward_service.errors import describe_validation_errors
from reward_service.serving.abandonment import request_deadline, unless_abandoned
from reward_service.serving.http_errors import ERROR_STATUS
from reward_service.serving.version import server_version

TEXTS, PROMPTS, COMPLETIONS = "texts", "prompts", "completions"
REWARDS, LOGITS = "rewards", "logits"
INPUT_NAMES = (TEXTS, PROMPTS, COMPLETIONS)
OUTPUT_NAMES = (REWARDS, LOGITS)
HEADER_LENGTH = "Inference-Header-Content-Length"
# Triton's extension, which tritonclient uses by default; servers name theirs in /v2's metadata.
BINARY_TENSOR_DATA = "binary_tensor_data"
SERVER_NAME = "reward-service"
# The protocol asks for 400 on a bad request; the engine's 422s are bad requests.
V2_STATUS = {**ERROR_STATUS, errors.InvalidRequest: 400, errors.ItemTooLong: 400}
PLATFORMS = {"torch": "pytorch_transformers", "onnx": "onnx_onnxv1"}

# $parameters: a name to a string, number or boolean.
Parameters = dict[str, bool | int | float | str]


class V2Error(BaseModel):
    error: str = Field(description="What went wrong and what to do about it.")


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(description=f"One of {', '.join(INPUT_NAMES)}.")
    shape: list[int] = Field(description="[N] or [N, 1].")
    datatype: str = Field(description="BYTES.")
    parameters: Parameters = Field(
        default_factory=dict, description="binary_data_size: its bytes follow the JSON header."
    )
    data: list[Any] | None = Field(None, description="The strings, when not sent as binary data.")


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(description=f"One of {', '.join(OUTPUT_NAMES)}.")
    parameters: Parameters = Field(
        default_factory=dict, description="binary_data: answer this output as binary data."
    )


class InferenceRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "inputs": [
                        {
                            "name": TEXTS,
                            "shape": [2],
                            "datatype": "BYTES",
                            "data": ["great", "dull"],
                        }
                    ]
                }
            ]
        },
    )

    id: str | None = Field(None, description="Echoed in the response.")
    parameters: Parameters = Field(
        default_factory=dict,
        description="binary_data_output: answer every output as binary data; timeout: "
        "microseconds the caller waits.",
    )
    inputs: list[RequestInput] = Field(description=f"{TEXTS}, or {PROMPTS} and {COMPLETIONS}.")
    outputs: list[RequestOutput] | None = Field(
        None, description=f"The outputs to answer; {REWARDS} alone when omitted."
    )


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Literal["FP32"] = "FP32"
    parameters: Parameters | None = None
    data: list[float] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    id: str | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: any size.")


class ModelMetadata(BaseModel):
    name: str
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class BadTensorRequest(Exception):  # noqa: N818
    """A request the protocol cannot read or this server cannot take: 400 (or `status`)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def v2_error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(V2Error(error=message).model_dump(), status_code=status, headers=headers)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data after it."""
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise BadTensorRequest(
            f"{HEADER_LENGTH} must be an integer, got {header_length!r}"
        ) from None
    if not 0 <= length <= len(body):
        raise BadTensorRequest(f"{HEADER_LENGTH} is {length}, but the body has {len(body)} bytes")
    return body[:length], body[length:]


def parse_header(header: bytes, *, binary_follows: bool) -> InferenceRequest:
    try:
        return InferenceRequest.model_validate_json(header)
    except ValidationError as error:
        problems = error.errors()
        if problems[0]["type"] != "json_invalid":
            raise BadTensorRequest(describe_validation_errors(problems)) from None
        hint = f" (is {HEADER_LENGTH} its length?)" if binary_follows else ""
        message = problems[0]["msg"].removeprefix("Invalid JSON: ")
        raise BadTensorRequest(f"the request is not valid JSON{hint}: {message}") from None


def decode_bytes_elements(blob: bytes, name: str) -> list[str]:
    """A BYTES tensor's binary form: each element a 4-byte little-endian length, then its bytes."""
    texts, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise BadTensorRequest(f"input {name!r}: its binary data ends inside an element length")
        (length,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        if offset + length > len(blob):
            raise BadTensorRequest(f"input {name!r}: an element runs past its binary data")
        texts.append(utf8(blob[offset : offset + length], name))
        offset += length
    return texts


def utf8(element: bytes, name: str) -> str:
    try:
        return element.decode("utf-8")
    except UnicodeDecodeError:
        raise BadTensorRequest(f"input {name!r}: an element is not UTF-8 text") from None


def flatten(data: list[Any]) -> Iterator[Any]:
    """JSON tensor data in its natural (nested) form or flat, in row-major order."""
    for element in data:
        if isinstance(element, list):
            yield from flatten(element)
        else:
            yield element


def read_inputs(request: InferenceRequest, binary: bytes) -> dict[str, list[str]]:
    """Each input's strings, from its JSON data or its slice of the binary data (in input order)."""
    strings: dict[str, list[str]] = {}
    offset = 0
    for tensor in request.inputs:
        if tensor.name not in INPUT_NAMES:
            raise BadTensorRequest(
                f"unknown input {tensor.name!r}: this server takes {TEXTS!r}, or {PROMPTS!r} "
                f"with {COMPLETIONS!r}"
            )
        if tensor.name in strings:
            raise BadTensorRequest(f"input {tensor.name!r} is given twice")
        if tensor.datatype != "BYTES":
            raise BadTensorRequest(
                f"input {tensor.name!r} must be BYTES (UTF-8 strings), got {tensor.datatype}"
            )
        if "shared_memory_region" in tensor.parameters:
            raise BadTensorRequest("shared memory is not supported: send the tensor data")
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise BadTensorRequest(
                f"input {tensor.name!r} has shape {tensor.shape}; it must be [N] or [N, 1]"
            )
        size = tensor.parameters.get("binary_data_size")
        if size is not None:
            if tensor.data is not None:
                raise BadTensorRequest(f"input {tensor.name!r} has both data and binary_data_size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise BadTensorRequest(f"input {tensor.name!r}: binary_data_size must be a count")
            if offset + size > len(binary):
                raise BadTensorRequest(
                    f"input {tensor.name!r}: binary_data_size {size} runs past the "
                    f"{len(binary)} bytes of binary data"
                )
            elements = decode_bytes_elements(binary[offset : offset + size], tensor.name)
            offset += size
        elif tensor.data is not None:
            elements = list(flatten(tensor.data))
            if not all(isinstance(element, str) for element in elements):
                raise BadTensorRequest(f"input {tensor.name!r}: BYTES data must be strings")
        else:
            raise BadTensorRequest(f"input {tensor.name!r} has no data and no binary_data_size")
        if len(elements) != math.prod(tensor.shape):
            raise BadTensorRequest(
                f"input {tensor.name!r} has shape {tensor.shape} but {len(elements)} elements"
            )
        strings[tensor.name] = elements
    if offset != len(binary):
        raise BadTensorRequest(
            f"{len(binary) - offset} bytes of binary data after the inputs' binary_data_size"
        )
    return strings


def wanted_outputs(request: InferenceRequest) -> dict[str, bool]:
    """Each output to answer, and whether as binary data (the output's `binary_data`, else the
    request's `binary_data_output`)."""
    all_binary = request.parameters.get("binary_data_output") is True
    if not request.outputs:
        return {REWARDS: all_binary}
    wanted = {}
    for output in request.outputs:
        if output.name not in OUTPUT_NAMES:
            raise BadTensorRequest(
                f"unknown output {output.name!r}: this server answers {REWARDS!r} and {LOGITS!r}"
            )
        binary = output.parameters.get("binary_data", all_binary)
        wanted[output.name] = binary is True
    return wanted


def deadline_of(request: InferenceRequest, http_request: Request) -> float | None:
    """The earlier of X-Request-Timeout-Ms and the request's `timeout` (microseconds; 0: none)."""
    deadline = request_deadline(http_request)
    timeout_us = request.parameters.get("timeout")
    if timeout_us is None or timeout_us == 0:
        return deadline
    if isinstance(timeout_us, bool | str) or timeout_us < 0:
        raise BadTensorRequest(f"parameter timeout must be microseconds, got {timeout_us!r}")
    own = time.monotonic() + timeout_us / 1e6
    return own if deadline is None else min(own, deadline)


def encode_response(
    model: str, request_id: str | None, tensors: dict[str, np.ndarray], binary: dict[str, bool]
) -> Response:
    """The JSON response, with the binary outputs' bytes after it, in output order."""
    outputs, blobs = [], []
    for name, values in tensors.items():
        shape = list(values.shape)
        if binary[name]:
            blob = values.astype("<f4").tobytes()
            blobs.append(blob)
            outputs.append(
                ResponseOutput(name=name, shape=shape, parameters={"binary_data_size": len(blob)})
            )
        else:
            outputs.append(ResponseOutput(name=name, shape=shape, data=values.ravel().tolist()))
    header = (
        InferenceResponse(model_name=model, id=request_id, outputs=outputs)
        .model_dump_json(exclude_none=True)
        .encode()
    )
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(blobs),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": V2Error} for status in statuses}


def create_router(engine: Engine) -> APIRouter:
    router = APIRouter(tags=["Open Inference Protocol (KServe v2)"])
    metadata = ServerMetadata(
        name=SERVER_NAME, version=server_version(), extensions=[BINARY_TENSOR_DATA]
    )

    def served_name() -> Any:
        """The path's model: the schema lists the served names; any other answers 404."""
        return Path(
            description="One of the served models.", json_schema_extra={"enum": list(engine.specs)}
        )

    def unknown_model(name: str) -> JSONResponse:
        served = ", ".join(map(repr, engine.specs))
        return v2_error(404, f"no model named {name!r}; this server has {served}")

    @router.get("/v2/health/live", response_model=ServerLive)
    async def server_live() -> ServerLive:
        """The process is up and answering."""
        return ServerLive(live=True)

    @router.get(
        "/v2/health/ready",
        response_model=ServerReady,
        responses={503: {"model": ServerReady, "description": "not every model is ready"}},
    )
    async def server_ready() -> JSONResponse:
        """Ready as /health/ready is: every model loaded, warm and answering, not shutting down."""
        ready = engine.ready
        return JSONResponse(ServerReady(ready=ready).model_dump(), 200 if ready else 503)

    @router.get("/v2", response_model=ServerMetadata)
    async def server_metadata() -> ServerMetadata:
        """The server's name, version and protocol extensions."""
        return metadata

    @router.get("/v2/models/{name}", response_model=ModelMetadata, responses=_responses(404))
    async def model_metadata(name: str = served_name()) -> ModelMetadata | JSONResponse:
        """The model's inputs and outputs (a shape of -1: any size)."""
        if name not in engine.specs:
            return unknown_model(name)
        info = next(info for info in engine.model_infos() if info.name == name)
        labels = len(info.labels) or -1  # known once the model is loaded
        return ModelMetadata(
            name=name,
            platform=PLATFORMS.get(info.backend, info.backend),
            inputs=[
                TensorMetadata(name=tensor, datatype="BYTES", shape=[-1]) for tensor in INPUT_NAMES
            ],
            outputs=[
                TensorMetadata(name=REWARDS, datatype="FP32", shape=[-1]),
                TensorMetadata(name=LOGITS, datatype="FP32", shape=[-1, labels]),
            ],
        )

    @router.get(
        "/v2/models/{name}/ready",
        response_model=ModelReady,
        responses={
            **_responses(404),
            503: {"model": ModelReady, "description": "loading, or not answering"},
        },
    )
    async def model_ready(name: str = served_name()) -> JSONResponse:
        """200 while the model serves; 503 while it loads or is stalled."""
        if name not in engine.specs:
            return unknown_model(name)
        ready = engine.is_ready(name) and not engine.shutting_down
        return JSONResponse(ModelReady(name=name, ready=ready).model_dump(), 200 if ready else 503)

    @router.post(
        "/v2/models/{name}/infer",
        response_model=InferenceResponse,
        responses={
            200: {"content": {"application/octet-stream": {}}},
            **_responses(400, 404, 413, 415, 429, 500, 503, 504),
        },
        openapi_extra={
            "parameters": [
                {
                    "name": HEADER_LENGTH,
                    "in": "header",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 0},
                    "description": "The JSON header's length, when binary tensor data follows it.",
                }
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": inline_schema(InferenceRequest)}},
            },
        },
    )
    async def infer(http_request: Request, name: str = served_name()) -> Response:
        """Scores `texts`, or `prompts` with `completions`: `rewards` (FP32 [N]), and `logits`
        (FP32 [N, labels]) when asked for. Binary tensor data (Triton's extension) or JSON."""
        if name not in engine.specs:
            return unknown_model(name)
        try:
            if http_request.headers.get("content-encoding", "identity") != "identity":
                raise BadTensorRequest("compressed request bodies are not supported", status=415)
            header, binary = split_body(
                await http_request.body(), http_request.headers.get(HEADER_LENGTH)
            )
            request = parse_header(header, binary_follows=HEADER_LENGTH in http_request.headers)
            strings = read_inputs(request, binary)
            outputs = wanted_outputs(request)
            try:
                score_request = ScoreRequest(model=name, return_raw=LOGITS in outputs, **strings)
            except ValidationError as error:
                raise BadTensorRequest(describe_validation_errors(error.errors())) from None
            scored = await unless_abandoned(
                http_request,
                engine.score(score_request, deadline=deadline_of(request, http_request)),
            )
        except BadTensorRequest as error:
            return v2_error(error.status, str(error))
        except errors.RewardServiceError as error:
            headers = (
                {"Retry-After": str(error.retry_after_s)}
                if isinstance(error, errors.QueueFull)
                else None
            )
            return v2_error(V2_STATUS.get(type(error), 500), str(error), headers)
        tensors = {REWARDS: np.asarray(scored.rewards, dtype=np.float32)}
        if LOGITS in outputs:
            tensors[LOGITS] = np.asarray(scored.raw, dtype=np.float32)
        ordered = {output: tensors[output] for output in outputs}
        return encode_response(scored.model, request.id, ordered, outputs)

    return router


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its nested models written in place: a request body that no
    route parses is not in the OpenAPI components, so `$defs` references would dangle."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return resolve(schema)
