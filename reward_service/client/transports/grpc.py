"""gRPC transport: RewardService.Score over the generated stubs (protos/reward.proto)."""

from __future__ import annotations

import threading
from typing import Any

import grpc
from google.protobuf import json_format

# The server's error classes name the machine-readable types it sends with each error.
from reward_service import errors as wire
from reward_service.client.contract import (
    Chunk,
    ClientConfig,
    ItemLimitExceeded,
    Retryable,
    Scores,
)
from reward_service.client.errors import (
    BadRequest,
    ModelNotFound,
    NonFiniteReward,
    RewardClientError,
    ServerError,
    Unauthorized,
    UntrustedServer,
)

try:
    from reward_service.grpc_gen import reward_pb2, reward_pb2_grpc
except ImportError as error:
    raise ImportError(
        "the gRPC stubs are missing: `make setup` generates them from protos/reward.proto"
    ) from error

Code = grpc.StatusCode
# CANCELLED too: a server shutting down cancels the calls it still holds.
RETRYABLE_CODES = {
    Code.UNAVAILABLE,
    Code.RESOURCE_EXHAUSTED,
    Code.DEADLINE_EXCEEDED,
    Code.CANCELLED,
}
# gRPC reports a certificate that does not verify as UNAVAILABLE, like a server that is down; only
# the details (from BoringSSL, and gRPC's own hostname check) tell the two apart.
UNTRUSTED_CERTIFICATE_MARKERS = ("CERTIFICATE_VERIFY_FAILED", "Hostname Verification Check failed")
ERROR_TYPES: dict[grpc.StatusCode, type[RewardClientError]] = {
    Code.INVALID_ARGUMENT: BadRequest,
    Code.FAILED_PRECONDITION: BadRequest,
    Code.OUT_OF_RANGE: BadRequest,
    Code.NOT_FOUND: ModelNotFound,
    Code.UNAUTHENTICATED: Unauthorized,
    Code.PERMISSION_DENIED: Unauthorized,
}
# gRPC's own reconnect backoff grows to two minutes by default; the retry loop already backs off,
# so let the channel try again soon after a server comes back.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def target(url: str) -> str:
    return url.removeprefix("grpcs://").removeprefix("grpc://")


def channel_credentials(url: str, config: ClientConfig) -> grpc.ChannelCredentials | None:
    """TLS credentials for a grpcs:// URL (verified against `ca_file`, else the system's CAs);
    None for plaintext grpc://."""
    if not url.startswith("grpcs://"):
        return None
    roots = config.ca_file.read_bytes() if config.ca_file is not None else None
    return grpc.ssl_channel_credentials(root_certificates=roots)


# The attempt's timeout again as metadata, beside gRPC's own deadline: a proxy in front of the
# servers (Ray Serve's) does not pass the deadline on, and the replica reads this instead.
TIMEOUT_METADATA_KEY = "x-request-timeout-ms"


def metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def call_metadata(
    base: tuple[tuple[str, str], ...], timeout_s: float
) -> tuple[tuple[str, str], ...]:
    return (*base, (TIMEOUT_METADATA_KEY, str(max(1, round(timeout_s * 1000)))))


def score_message(chunk: Chunk, model: str | None) -> reward_pb2.ScoreRequest:
    return reward_pb2.ScoreRequest(
        model=model or "",
        texts=chunk.texts or (),
        prompts=chunk.prompts or (),
        completions=chunk.completions or (),
    )


def model_entry(info: reward_pb2.ModelInfo) -> dict[str, Any]:
    """A ListModels entry in the shape GET /v1/models gives it."""
    return {
        "name": info.name,
        "source": info.source,
        "backend": info.backend,
        "device": info.device,
        "dtype": info.dtype,
        "ready": info.ready,
        "labels": list(info.labels),
        "max_length": info.max_length,
        "mapping": json_format.MessageToDict(info.mapping),
        "description": info.description if info.HasField("description") else None,
    }


def classify(error: grpc.RpcError, url: str) -> Exception:
    """The exception an RPC error becomes: Retryable for the retry loop, or the caller's error.
    (More items than the server takes is INVALID_ARGUMENT here: over gRPC the client relies on
    `max_items_per_request`, while over HTTP it also learns the limit from a 413.)"""
    code, details = error.code(), error.details() or ""
    if code == Code.UNAVAILABLE and any(m in details for m in UNTRUSTED_CERTIFICATE_MARKERS):
        return UntrustedServer(
            f"{url}'s TLS certificate did not verify ({details}); pass the CA that issued it as "
            "ca_file (the trainer's --reward-ca-file)",
            status=code.name,
            endpoint=url,
        )
    if code in RETRYABLE_CODES:
        return Retryable(f"gRPC {code.name}: {details}")
    if code in (Code.INTERNAL, Code.UNKNOWN) and _error_type(error) is None:
        # Every error the reward service sends names its type; one without is a proxy's in
        # front of it (Ray Serve's, when a replica dies under a call): another replica answers.
        return Retryable(f"gRPC {code.name} from a proxy, not the reward service: {details}")
    if _error_type(error) == wire.TooManyCharacters.error_type:
        # The same items fit in smaller requests.
        return ItemLimitExceeded(f"gRPC {code.name}: {details}", url, too_many_items=False)
    error_type = ERROR_TYPES.get(code, ServerError)
    if error_type is ServerError and _error_type(error) == wire.NonFiniteReward.error_type:
        error_type = NonFiniteReward
    return error_type(f"gRPC {code.name} from {url}: {details}", status=code.name, endpoint=url)


def _error_type(error: grpc.RpcError) -> str | None:
    """The server's machine-readable error type (trailing metadata `reward-error-type`)."""
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    return dict(trailing or ()).get("reward-error-type")


class GrpcTransport:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.metadata = metadata(config.api_key)
        self._stubs: dict[str, tuple[grpc.Channel, reward_pb2_grpc.RewardServiceStub]] = {}
        self._lock = threading.Lock()

    def _stub(self, url: str) -> reward_pb2_grpc.RewardServiceStub:
        with self._lock:
            if url not in self._stubs:
                credentials = channel_credentials(url, self.config)
                channel = (
                    grpc.insecure_channel(target(url), options=CHANNEL_OPTIONS)
                    if credentials is None
                    else grpc.secure_channel(target(url), credentials, options=CHANNEL_OPTIONS)
                )
                self._stubs[url] = (channel, reward_pb2_grpc.RewardServiceStub(channel))
            return self._stubs[url][1]

    def score(self, url: str, chunk: Chunk, model: str | None, timeout_s: float) -> Scores:
        try:
            response = self._stub(url).Score(
                score_message(chunk, model),
                timeout=timeout_s,
                metadata=call_metadata(self.metadata, timeout_s),
            )
        except grpc.RpcError as error:
            raise classify(error, url) from error
        return Scores(list(response.rewards), response.truncated)

    def list_models(self, url: str, timeout_s: float) -> list[dict[str, Any]]:
        try:
            response = self._stub(url).ListModels(
                reward_pb2.ListModelsRequest(), timeout=timeout_s, metadata=self.metadata
            )
        except grpc.RpcError as error:
            raise classify(error, url) from error
        return [model_entry(info) for info in response.models]

    def close(self) -> None:
        for channel, _ in self._stubs.values():
            channel.close()
        self._stubs.clear()


class AsyncGrpcTransport:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.metadata = metadata(config.api_key)
        self._stubs: dict[str, tuple[grpc.aio.Channel, reward_pb2_grpc.RewardServiceStub]] = {}

    def _stub(self, url: str) -> reward_pb2_grpc.RewardServiceStub:
        if url not in self._stubs:
            credentials = channel_credentials(url, self.config)
            channel = (
                grpc.aio.insecure_channel(target(url), options=CHANNEL_OPTIONS)
                if credentials is None
                else grpc.aio.secure_channel(target(url), credentials, options=CHANNEL_OPTIONS)
            )
            self._stubs[url] = (channel, reward_pb2_grpc.RewardServiceStub(channel))
        return self._stubs[url][1]

    async def score(self, url: str, chunk: Chunk, model: str | None, timeout_s: float) -> Scores:
        try:
            response = await self._stub(url).Score(
                score_message(chunk, model),
                timeout=timeout_s,
                metadata=call_metadata(self.metadata, timeout_s),
            )
        except grpc.RpcError as error:
            raise classify(error, url) from error
        return Scores(list(response.rewards), response.truncated)

    async def list_models(self, url: str, timeout_s: float) -> list[dict[str, Any]]:
        try:
            response = await self._stub(url).ListModels(
                reward_pb2.ListModelsRequest(), timeout=timeout_s, metadata=self.metadata
            )
        except grpc.RpcError as error:
            raise classify(error, url) from error
        return [model_entry(info) for info in response.models]

    async def aclose(self) -> None:
        for channel, _ in self._stubs.values():
            await channel.close()
        self._stubs.clear()
