"""gRPC transport: a thin grpc.aio layer over the engine, served beside REST in the same event loop.

Requests become the same `ScoreRequest` objects REST validates and go through the same
`Engine.score`, so gRPC and REST items share one queue per model and can share a batch. The
caller's deadline travels with the items: the batcher drops those whose deadline has passed
before they reach the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from reward_service import errors
from reward_service.engine.engine import Engine
from reward_service.engine.schemas import ModelInfo, ScoreRequest, ScoreResponse
from reward_service.errors import describe_validation_errors
from reward_service.serving.auth import is_authorized

try:
    from reward_service.grpc_gen import reward_pb2, reward_pb2_grpc
except ImportError as error:
    raise ImportError(
        "the gRPC stubs are missing: `make setup` generates them from protos/reward.proto"
    ) from error

logger = logging.getLogger(__name__)

SERVICE_NAME = reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name
SCORE_ROUTE = f"/{SERVICE_NAME}/Score"
SCORE_STREAM_ROUTE = f"/{SERVICE_NAME}/ScoreStream"
LIST_MODELS_ROUTE = f"/{SERVICE_NAME}/ListModels"

# Engine error -> gRPC status. One table for the whole gRPC API. TooManyItems is INVALID_ARGUMENT,
# not RESOURCE_EXHAUSTED: the same request can never succeed, and clients treat
# RESOURCE_EXHAUSTED as "retry later" (which a full queue is).
ERROR_STATUS: dict[type[errors.RewardServiceError], grpc.StatusCode] = {
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ItemTooLong: grpc.StatusCode.INVALID_ARGUMENT,
    errors.TooManyItems: grpc.StatusCode.INVALID_ARGUMENT,
    errors.TooManyCharacters: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.NotReady: grpc.StatusCode.UNAVAILABLE,
    errors.ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# Requests one ScoreStream scores at once: enough to keep the batcher fed; past it the stream stops
# reading, so a fast sender meets HTTP/2 flow control instead of filling the model's queue.
STREAM_MAX_IN_FLIGHT = 64
READINESS_POLL_S = 0.05
# Calls gRPC holds before handing them to the service. Past its default (1,000, then randomly up to
# 3,000) gRPC cancels new calls itself (CANCELLED) instead of letting the service refuse them with
# RESOURCE_EXHAUSTED; a small unary call waits there in about 11 KiB (measured), so 4,096 waiting
# calls cost under 50 MiB. Past this many, gRPC still cancels (clients retry CANCELLED).
MAX_PENDING_CALLS = 4096
KEEPALIVE_TIMEOUT_MS = 20_000


class CurrentHealthServicer(health.aio.HealthServicer):
    """grpc.health.v1 whose Check first brings the statuses up to date (`refresh`): a client that
    has just seen REST's /health/ready turn 200 gets SERVING from Check too, not what the last
    poll saw. Watch streams the changes the poll finds."""

    def __init__(self, refresh: Callable[[], Awaitable[None]]) -> None:
        super().__init__()
        self._refresh = refresh

    async def Check(self, request, context):  # noqa: N802 (gRPC's method name)
        await self._refresh()
        return await super().Check(request, context)


def status_for(error: BaseException) -> grpc.StatusCode:
    if isinstance(error, ValidationError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, errors.RewardServiceError):
        return ERROR_STATUS.get(type(error), grpc.StatusCode.INTERNAL)
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def score_request_from_proto(message: reward_pb2.ScoreRequest) -> ScoreRequest:
    """proto3 cannot tell an absent list from an empty one; both mean "not sent", as in REST."""
    return ScoreRequest(
        model=message.model or None,
        texts=list(message.texts) or None,
        prompts=list(message.prompts) or None,
        completions=list(message.completions) or None,
        return_raw=message.return_raw,
    )


def score_response_to_proto(response: ScoreResponse) -> reward_pb2.ScoreResponse:
    raw = [reward_pb2.RawOutput(logits=row) for row in response.raw or ()]
    return reward_pb2.ScoreResponse(
        model=response.model, rewards=response.rewards, raw=raw, truncated=response.truncated
    )


def model_info_to_proto(info: ModelInfo) -> reward_pb2.ModelInfo:
    mapping = struct_pb2.Struct()
    mapping.update(info.mapping)
    return reward_pb2.ModelInfo(
        name=info.name,
        source=info.source,
        backend=info.backend,
        device=info.device,
        dtype=info.dtype,
        ready=info.ready,
        labels=info.labels,
        max_length=info.max_length,
        mapping=mapping,
        description=info.description,
    )


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's deadline on the engine's clock (time.monotonic()), or None without one. The
    clock is read first, so that the deadline is never later than the caller's."""
    now = time.monotonic()
    remaining_s = context.time_remaining()
    return None if remaining_s is None else now + remaining_s


def _passed(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.metrics = engine.metrics

    async def Score(  # noqa: N802 (the generated base class names the methods)
        self, request: reward_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ScoreResponse:
        try:
            return await self._score(request, _deadline(context), SCORE_ROUTE)
        except (errors.RewardServiceError, ValidationError) as error:
            await _abort(context, error)

    async def ScoreStream(  # noqa: N802
        self,
        request_iterator: AsyncIterator[reward_pb2.ScoreRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[reward_pb2.ScoreResponse]:
        deadline = _deadline(context)
        # Scoring tasks in request order; None once the client has sent its last request.
        in_flight: asyncio.Queue[asyncio.Task | None] = asyncio.Queue(STREAM_MAX_IN_FLIGHT)

        async def read_requests() -> None:
            try:
                async for message in request_iterator:
                    task = asyncio.ensure_future(self._score(message, deadline, SCORE_STREAM_ROUTE))
                    await in_flight.put(task)
            finally:
                await in_flight.put(None)

        reader = asyncio.ensure_future(read_requests())
        try:
            while (task := await in_flight.get()) is not None:
                try:
                    yield await task
                except (errors.RewardServiceError, ValidationError) as error:
                    await _abort(context, error)
            await reader  # re-raises a failure to read the stream
        finally:  # the stream ended early (error, cancellation): drop what is still in flight
            reader.cancel()
            while not in_flight.empty():
                if (task := in_flight.get_nowait()) is not None:
                    _discard(task)

    async def ListModels(  # noqa: N802
        self, request: reward_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ListModelsResponse:
        with self._recorded(LIST_MODELS_ROUTE):
            models = [model_info_to_proto(info) for info in self.engine.model_infos()]
            return reward_pb2.ListModelsResponse(models=models)

    async def _score(
        self, message: reward_pb2.ScoreRequest, deadline: float | None, route: str
    ) -> reward_pb2.ScoreResponse:
        with self._recorded(route, deadline):
            request = score_request_from_proto(message)
            response = await self.engine.score(request, deadline=deadline)
            return score_response_to_proto(response)

    @contextlib.contextmanager
    def _recorded(self, route: str, deadline: float | None = None) -> Iterator[None]:
        """Counts the call by status and times it, in the metrics REST uses (transport="grpc")."""
        started = time.perf_counter()
        status = grpc.StatusCode.OK
        try:
            yield
        except BaseException as error:
            status = status_for(error)
            # gRPC cancels the handler itself when the deadline passes during the await.
            if isinstance(error, asyncio.CancelledError) and _passed(deadline):
                status = grpc.StatusCode.DEADLINE_EXCEEDED
            raise
        finally:
            self.metrics.requests.labels("grpc", route, status.name).inc()
            self.metrics.request_latency.labels("grpc", route).observe(
                time.perf_counter() - started
            )


def _discard(task: asyncio.Task) -> None:
    if task.done() and not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved
    task.cancel()


# Trailing metadata key of every error: the same machine-readable type as REST's `error.type`,
# for the errors that share a status code (a non-finite reward and a failed forward: INTERNAL).
ERROR_TYPE_METADATA_KEY = "reward-error-type"


async def _abort(context: grpc.aio.ServicerContext, error: Exception) -> None:
    if isinstance(error, ValidationError):
        message, kind = describe_validation_errors(error.errors()), errors.InvalidRequest.error_type
    else:
        message = str(error)
        kind = error.error_type if isinstance(error, errors.RewardServiceError) else "internal"
    await context.abort(
        status_for(error), message, trailing_metadata=((ERROR_TYPE_METADATA_KEY, kind),)
    )


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses reward calls without the key (UNAUTHENTICATED) before they reach a handler.

    Health and reflection stay open, as /health/* does on REST: probes carry no key.
    """

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

        async def refuse(request_or_iterator: object, context: grpc.aio.ServicerContext) -> None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "this server needs an API key: send metadata 'authorization: Bearer KEY'",
            )

        self._refuse_unary = grpc.unary_unary_rpc_method_handler(refuse)
        self._refuse_stream = grpc.stream_stream_rpc_method_handler(refuse)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if not method.startswith(f"/{SERVICE_NAME}/"):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        if is_authorized(metadata.get("authorization"), self._api_key):
            return await continuation(handler_call_details)
        return self._refuse_stream if method == SCORE_STREAM_ROUTE else self._refuse_unary


class GrpcServer:
    """The gRPC server with the reward, health and reflection services, over one engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        host: str,
        port: int,
        max_message_bytes: int,
        max_concurrent_rpcs: int | None = None,
        keepalive_s: float = 60.0,
        max_idle_s: float = 300.0,
        api_key: str | None = None,
        tls: tuple[bytes, bytes] | None = None,
    ) -> None:
        """`tls`: the PEM certificate chain and private key to serve over TLS; None: plaintext."""
        self.engine = engine
        self.address = f"{host}:{port}"
        self._tls = tls
        self.server = grpc.aio.server(
            interceptors=[ApiKeyInterceptor(api_key)] if api_key else None,
            maximum_concurrent_rpcs=max_concurrent_rpcs,
            options=[
                # Ping a connection idle this long and drop it if the ping goes unanswered: a
                # peer that vanished without closing holds nothing for long.
                ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
                ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
                ("grpc.max_connection_idle_ms", int(max_idle_s * 1000)),
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                # gRPC sets SO_REUSEPORT by default: a second server on a busy port would then
                # start without error and share its traffic. Fail the bind instead.
                ("grpc.so_reuseport", 0),
                ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
                ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
            ],
        )
        reward_pb2_grpc.add_RewardServiceServicer_to_server(RewardServicer(engine), self.server)
        self.health = CurrentHealthServicer(self._report_engine_health)
        self._reported: dict[str, int] = {}
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self._readiness: asyncio.Task | None = None
        self._stopping: asyncio.Task | None = None

    async def start(self) -> None:
        try:
            if self._tls is None:
                self.server.add_insecure_port(self.address)
            else:
                certificate_chain, private_key = self._tls
                credentials = grpc.ssl_server_credentials([(private_key, certificate_chain)])
                self.server.add_secure_port(self.address, credentials)
        except RuntimeError as error:
            raise errors.GrpcBindError(
                f"cannot listen for gRPC on {self.address} ({error}): pass another --grpc-port, "
                "or --grpc-port 0 to serve REST only"
            ) from None
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        self._readiness = asyncio.create_task(self._report_readiness())
        logger.info("gRPC listening on %s%s", self.address, " (TLS)" if self._tls else "")

    async def begin_shutdown(self) -> None:
        """Health says NOT_SERVING from now on; calls are still served (the engine refuses new
        work with UNAVAILABLE while it answers what it accepted)."""
        if self._readiness is not None:
            self._readiness.cancel()
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace_s: float) -> None:
        """Stops listening at once; calls still running get `grace_s` to finish. Stops once,
        however often it is called."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace_s))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace_s: float) -> None:
        await self.begin_shutdown()
        await self.server.stop(grace_s)

    async def _set_all(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in ["", SERVICE_NAME, *self.engine.specs]:
            await self.health.set(name, status)

    async def _report_readiness(self) -> None:
        """Health follows the engine for as long as the server serves (Watch sees the changes)."""
        while True:
            await self._report_engine_health()
            await asyncio.sleep(READINESS_POLL_S)

    async def _report_engine_health(self) -> None:
        """Each model SERVING while it is warm and answering, the server while all of them are
        (REST's /health/ready). Once shutting down, health ignores these and stays NOT_SERVING."""
        serving, not_serving = (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        statuses = {
            name: serving if self.engine.is_ready(name) else not_serving
            for name in self.engine.specs
        }
        overall = serving if self.engine.ready else not_serving
        statuses.update({"": overall, SERVICE_NAME: overall})
        for name, status in statuses.items():
            if self._reported.get(name) != status:
                await self.health.set(name, status)
                self._reported[name] = status
