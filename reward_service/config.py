"""What a served model is and what the batching limits are: the engine's configuration."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Device = str  # "cpu", "cuda", "cuda:1" or "auto"
DType = Literal["float32", "float16", "bfloat16"]
BackendName = Literal["auto", "torch", "onnx"]

DEFAULT_MODEL_NAME = "default"
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class BatchingConfig(BaseModel):
    """Limits for the per-model queue, the batches formed from it and the requests it admits."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(32, ge=1, description="Items per forward pass, at most.")
    max_batch_tokens: int = Field(
        16384, ge=1, description="Padded tokens (longest item x items) per forward pass, at most."
    )
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        description=(
            "How long a batch may wait for more items once the model is free. 0 runs whatever is "
            "queued at once; items arriving during a forward pass still share the next batch."
        ),
    )
    max_queue_items: int = Field(
        4096, ge=1, description="Items admitted and not yet answered; past it requests get 429."
    )
    max_items_per_request: int = Field(1024, ge=1, description="Items in one request, at most.")
    # The longest input a served encoder takes is 512 tokens, about 2,500 characters: 32,768
    # leaves room for texts that truncation shortens, and bounds the tokenizer's work per item.
    max_chars_per_item: int = Field(
        32768,
        ge=1,
        description="Characters in one text (or prompt + completion), at most; longer items are "
        "refused, not truncated.",
    )

    @model_validator(mode="after")
    def _request_fits_queue(self) -> BatchingConfig:
        if self.max_items_per_request > self.max_queue_items:
            raise ValueError(
                f"max_items_per_request ({self.max_items_per_request}) must not exceed "
                f"max_queue_items ({self.max_queue_items}): such a request could never be admitted"
            )
        return self


class ModelSpec(BaseModel):
    """One model to serve: where it comes from, how it runs, and how its logits become a reward."""

    model_config = ConfigDict(extra="forbid")

    name: str
    source: str = Field(
        description="A local Hugging Face folder, or a hub id where a network exists."
    )
    backend: BackendName = "auto"
    device: Device = "cpu"
    dtype: DType = "float32"
    allow_pickle: bool = Field(
        False, description="Load pickle (.bin) weights, which can run code; safetensors otherwise."
    )
    preset: str | None = None
    mapping_overrides: dict[str, Any] = Field(default_factory=dict)


def default_cache_dir() -> Path:
    """Where built models (the default reward model) are kept between runs."""
    configured = os.environ.get("REWARD_SERVICE_CACHE")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "reward-service"


class ServeSettings(BaseSettings):
    """Everything `reward-service serve` takes; flags override REWARD_SERVICE_* variables."""

    model_config = SettingsConfigDict(env_prefix="REWARD_SERVICE_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 serves REST only.")
    grpc_max_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest gRPC request or response message."
    )
    models: list[str] = Field(
        default_factory=list,
        description="NAME=SOURCE or SOURCE (a folder or hub id); the default model if empty.",
    )
    backend: BackendName = "auto"
    device: Device = "cpu"
    dtype: DType = "float32"
    allow_pickle: bool = False
    preset: str | None = None
    mapping_overrides: dict[str, Any] = Field(default_factory=dict)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    # The same 16 MiB as a gRPC message: a request that fits one transport fits the other.
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest REST request body; larger ones get 413."
    )
    # Under the 30 s that Kubernetes (terminationGracePeriodSeconds) waits before SIGKILL.
    shutdown_grace_s: float = Field(
        25.0,
        gt=0,
        description="After SIGTERM: time to answer the requests already accepted, then exit.",
    )
    api_key: SecretStr | None = Field(
        None,
        description="When set, REST requests (but /health/* and /metrics) need it as a bearer "
        "token, `Authorization: Bearer KEY`, and gRPC reward calls as `authorization` metadata.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = False
    cache_dir: Path = Field(default_factory=default_cache_dir)

    def model_specs(self, default_source: str | None = None) -> list[ModelSpec]:
        entries = self.models or (
            [f"{DEFAULT_MODEL_NAME}={default_source}"] if default_source else []
        )
        specs = []
        for entry in entries:
            name, _, source = entry.partition("=") if "=" in entry else ("", "", entry)
            name = name or Path(source.rstrip("/")).name
            if not MODEL_NAME_PATTERN.match(name):
                raise ValueError(
                    f"model name {name!r} may hold only letters, digits, '.', '_' and '-' "
                    "(give one with NAME=SOURCE)"
                )
            specs.append(
                ModelSpec(
                    name=name,
                    source=source,
                    backend=self.backend,
                    device=self.device,
                    dtype=self.dtype,
                    allow_pickle=self.allow_pickle,
                    preset=self.preset,
                    mapping_overrides=self.mapping_overrides,
                )  # fmt: skip
            )
        return specs
