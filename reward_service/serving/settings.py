"""Everything `reward-service serve` takes: flags, or REWARD_SERVICE_* environment variables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    model_validator,
)
from pydantic_settings import SettingsConfigDict

from reward_service.cache import default_cache_dir
from reward_service.engine.limits import BatchingConfig
from reward_service.flags import Flag
from reward_service.model.mapping import RewardMapping
from reward_service.model.spec import (
    DEFAULT_MODEL_NAME,
    MODEL_NAME_PATTERN,
    BackendName,
    Device,
    DType,
    ModelSpec,
)
from reward_service.variables import LayerOptions, OptionSettings

# The RewardMapping fields that are options of their own (--scale, REWARD_SERVICE_SCALE), for
# every model; --output and --normalize have a syntax of their own (LABEL[:WEIGHT], MEAN,STD).
MAPPING_FIELDS = (
    "activation",
    "reduce",
    "scale",
    "shift",
    "input_format",
    "template",
    "max_length",
    "truncation_side",
)


def outputs_from_flags(entries: Sequence[str]) -> list[dict[str, Any]]:
    """RewardMapping.outputs from --output LABEL[:WEIGHT] entries."""
    outputs = []
    for entry in entries:
        label, _, weight = entry.rpartition(":") if ":" in entry else (entry, "", "")
        outputs.append({"label": label, "weight": float(weight)} if weight else {"label": entry})
    return outputs


def normalization_from_flag(text: str) -> dict[str, float]:
    """RewardMapping.normalization from --normalize MEAN,STD."""
    mean, _, std = text.partition(",")
    if not std:
        raise ValueError(f"expected MEAN,STD (e.g. 0.5,2), got {text!r}")
    return {"mean": float(mean), "std": float(std)}


def _outputs_variable(text: str) -> list[dict[str, Any]]:
    # A repeated flag's variable is a JSON list, as REWARD_SERVICE_MODELS is.
    example = 'a JSON list of LABEL[:WEIGHT], e.g. ["POSITIVE", "NEGATIVE:-1"]'
    try:
        entries = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"expected {example}") from None
    if not isinstance(entries, list) or not all(isinstance(entry, str) for entry in entries):
        raise ValueError(f"expected {example}")
    return outputs_from_flags(entries)


def _not_empty(key: SecretStr | None) -> SecretStr | None:
    # `docker run -e REWARD_SERVICE_API_KEY=$KEY` with KEY unset must not serve an empty key.
    if key is not None and not key.get_secret_value():
        raise ValueError("the API key is empty: give one, or leave the option out")
    return key


class RayServeOptions(BaseModel):
    """`serve --ray`: replicas of this server on Ray Serve (reward_service/serving/ray_serve.py),
    each a whole engine with its batcher, behind Serve's HTTP and gRPC proxies."""

    model_config = ConfigDict(extra="forbid", title="Ray Serve (with --ray)")

    address: str | None = Field(
        None,
        description="A running Ray cluster to deploy on (auto, or ray://HOST:10001); default: "
        "start a local Ray on this machine.",
    )
    num_replicas: int = Field(
        1, ge=1, description="Replicas, each one engine (without --ray-max-replicas)."
    )
    min_replicas: int = Field(1, ge=0, description="With --ray-max-replicas: the fewest replicas.")
    max_replicas: int | None = Field(
        None,
        ge=1,
        description="Autoscale between --ray-min-replicas and this many replicas, on the "
        "requests each replica holds (--ray-target-ongoing-requests).",
    )
    target_ongoing_requests: float = Field(
        16, gt=0, description="Autoscaling: the requests in flight per replica it aims at."
    )
    upscale_delay_s: float = Field(
        30, ge=0, description="Autoscaling: how long load must stay above target to add one."
    )
    # Serve refuses a window no longer than the interval at which replicas report (10 s).
    look_back_period_s: float = Field(
        30, gt=10, description="Autoscaling: the window over which load is averaged."
    )
    downscale_delay_s: float = Field(
        600, ge=0, description="Autoscaling: how long load must stay below target to drop one."
    )
    # Serve's default (5) starves the batcher: a replica would hold 5 requests at a time, so a
    # batch could never hold more than 5 requests' items. Past this many, Serve queues requests
    # in its proxy and routes them to a replica with room (back-pressure stays the engine's:
    # its queue limit answers 429 / RESOURCE_EXHAUSTED).
    max_ongoing_requests: int = Field(
        256, ge=1, description="Requests one replica holds at once; more wait in Serve's proxy."
    )
    num_cpus: float = Field(
        1, gt=0, description="CPUs Ray reserves per replica (its torch threads follow it)."
    )
    num_gpus: float = Field(0, ge=0, description="GPUs Ray reserves per replica (with --device).")
    metrics_port: int = Field(
        8080,
        ge=0,
        le=65535,
        description="Where a local Ray exports every replica's metrics, summed by Prometheus "
        "(GET /metrics through Serve answers from one replica); 0 picks a free one.",
    )
    health_check_period_s: float = Field(
        2, gt=0, description="How often Serve asks each replica whether its engine is ready."
    )

    @model_validator(mode="after")
    def _replica_range(self) -> RayServeOptions:
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(
                f"--ray-max-replicas ({self.max_replicas}) is below --ray-min-replicas "
                f"({self.min_replicas})"
            )
        return self


class ServeSettings(OptionSettings):
    """Everything `reward-service serve` takes; flags override REWARD_SERVICE_* variables, one
    per option (grouped ones included: reward_service.variables)."""

    model_config = SettingsConfigDict(env_prefix="REWARD_SERVICE_", extra="forbid")
    # Read elsewhere: the cache folder (cache.py), the default model to build (default_model.py),
    # and a client's CA file (policy-trainer), which a shell shared with a trainer may hold.
    other_variables: ClassVar[tuple[str, ...]] = (
        "REWARD_SERVICE_CACHE",
        "REWARD_SERVICE_DEFAULT_MODEL",
        "REWARD_SERVICE_CA_FILE",
    )

    models: Annotated[list[str], Flag("--model", repeat=True, metavar="[NAME=]SOURCE")] = Field(
        default_factory=list,
        description="A model folder or hub id, optionally named; repeat for several models. "
        "Without it, the project's default reward model.",
    )
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="REST port; 0 picks a free one.")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 serves REST only.")
    grpc_max_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest gRPC request or response message."
    )
    # The same 16 MiB as a gRPC message: a request that fits one transport fits the other.
    max_body_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Largest REST request body; larger ones get 413 unread.",
    )
    # 16 bodies of the largest size at once; PPO's chunks are far smaller, so they rarely meet it.
    max_body_bytes_in_flight: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="REST request bodies being received at once, in bytes in all (each counts "
        "its Content-Length until it is in); past it 429 `too_many_bytes_in_flight`, unread. "
        "At least --max-body-bytes.",
    )
    api_key: Annotated[SecretStr | None, AfterValidator(_not_empty)] = Field(
        None,
        description="When set, REST requests (but /health/*, /v2/health/* and /metrics) need it "
        "as a bearer token, `Authorization: Bearer KEY`, and gRPC reward calls as "
        "`authorization` metadata; REWARD_SERVICE_API_KEY keeps it out of the process list.",
    )
    api_key_file: Path | None = Field(
        None,
        description="A file whose first line is the API key (a mounted secret): out of the "
        "process list and the environment.",
    )
    insecure_no_auth: bool = Field(
        False,
        description="Serve an address other than loopback without an API key. Without it, such "
        "a server makes a random key and prints it once.",
    )
    expose_model_paths: bool = Field(
        False,
        description="Show each model's local path in /v1/models and ListModels; by default a "
        "local folder shows as its name only (a hub id shows in full).",
    )
    # The names uvicorn gives them; the same files serve gRPC.
    ssl_certfile: FilePath | None = Field(
        None,
        description="A PEM certificate (chain): REST and gRPC are then served over TLS only "
        "(https://, grpcs://). Needs --ssl-keyfile.",
    )
    ssl_keyfile: FilePath | None = Field(
        None, description="The certificate's PEM private key (unencrypted)."
    )
    # Connection caps and read deadlines: a slow or stalled client can't pin connections or memory.
    max_connections: int = Field(
        1024,
        ge=1,
        description="REST connections open at once, at most; past it uvicorn answers new "
        "requests 503 (clients retry).",
    )
    timeout_request_start_s: float = Field(
        10.0,
        gt=0,
        description="A REST request's headers must arrive within this many seconds of its "
        "first byte (of the connection's opening, for the first); else the connection closes.",
    )
    timeout_request_complete_s: float = Field(
        60.0,
        gt=0,
        description="A whole REST request, body included, must arrive within this many "
        "seconds; else the connection closes and its items are dropped (16 MiB in 60 s needs "
        "about 2.2 Mbit/s).",
    )
    grpc_max_concurrent_rpcs: int = Field(
        1024,
        ge=1,
        description="gRPC calls handled at once, at most; past it RESOURCE_EXHAUSTED.",
    )
    grpc_keepalive_s: float = Field(
        60.0,
        gt=0,
        description="The server pings a gRPC connection idle this long, and closes it if the "
        "ping goes unanswered for 20 s (a vanished peer).",
    )
    grpc_max_idle_s: float = Field(
        300.0,
        gt=0,
        description="A gRPC connection with no call for this long is closed (clients reconnect "
        "on their next call).",
    )
    # Under the 30 s that Kubernetes (terminationGracePeriodSeconds) waits before SIGKILL.
    shutdown_grace_s: float = Field(
        25.0,
        gt=0,
        description="On SIGTERM: not ready, new requests refused (503 / UNAVAILABLE 'shutting "
        "down'), the accepted ones answered, exit within this many seconds.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    access_log: bool = Field(False, description="Log every request.")
    batching: Annotated[BatchingConfig, Flag(prefix="")] = Field(default_factory=BatchingConfig)
    backend: BackendName = Field(
        "auto",
        description="Inference backend (auto: onnx where the folder holds model.onnx, else torch).",
    )
    device: Device = Field("cpu", description="cpu, cuda, cuda:N or auto.")
    dtype: DType = Field(
        "auto",
        description="The weights' and activations' precision. auto: the one the model folder's "
        "precision gate chose (precision_gate.json: bfloat16 for the default model) where the "
        "device computes it natively, float32 otherwise.",
    )
    allow_pickle: bool = Field(
        False, description="Allow pickle (.bin) weights, which can run code when loaded."
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir, description="Where built models are kept."
    )
    preset: str | None = Field(
        None, description="sentiment, toxicity, toxicity-any, hate or reward-model."
    )
    ray: bool = Field(
        False,
        description="Serve on Ray Serve: replicas of this server behind its proxies "
        "(pip install '.[ray]'; see docs/production.md, Scaling out).",
    )
    ray_serve: Annotated[RayServeOptions, Flag(prefix="ray-")] = Field(
        default_factory=RayServeOptions
    )
    mapping_overrides: Annotated[
        dict[str, Any],
        LayerOptions(
            RewardMapping,
            MAPPING_FIELDS,
            spelled=(
                ("outputs", "outputs", _outputs_variable),
                ("normalize", "normalization", normalization_from_flag),
            ),
        ),
    ] = Field(
        default_factory=dict,
        description="RewardMapping fields that override each model folder's reward_config.json.",
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> ServeSettings:
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("give the API key once: --api-key or --api-key-file, not both")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("TLS needs both --ssl-certfile and --ssl-keyfile")
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ValueError(
                f"--max-body-bytes-in-flight ({self.max_body_bytes_in_flight}) is less than "
                f"--max-body-bytes ({self.max_body_bytes}): the largest body would never fit"
            )
        return self

    def tls_files(self) -> tuple[bytes, bytes] | None:
        """The certificate chain and private key, read; None when TLS is off."""
        if self.ssl_certfile is None or self.ssl_keyfile is None:
            return None
        return self.ssl_certfile.read_bytes(), self.ssl_keyfile.read_bytes()

    def resolved_api_key(self) -> str | None:
        """The key from --api-key or the first line of --api-key-file; None without either."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_file is None:
            return None
        try:
            key = self.api_key_file.read_text().splitlines()[0].strip()
        except (OSError, IndexError) as error:
            raise ValueError(f"cannot read an API key from {self.api_key_file}: {error}") from None
        if not key:
            raise ValueError(f"{self.api_key_file} holds no API key on its first line")
        return key

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
                )
            )
        return specs
