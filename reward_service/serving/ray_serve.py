"""The server on Ray Serve: replicas that are each a whole engine, behind Serve's proxies.

Each replica (`RewardReplica`) holds its own engine, batcher and the FastAPI app REST serves
(every route: /v1/score, /get_reward, /v2, TEI's), and answers the gRPC contract of
protos/reward.proto through Serve's gRPC proxy with the same servicer the single server runs.
Serve adds what one process cannot: a replica that dies or fails its health check is replaced,
replicas scale with load, and a replica scaled down drains first.

What Serve's proxies do not do, the replica does: the gRPC proxy runs no interceptors, so the
API key is checked in each method; it drops the caller's deadline, so the client also sends it as
metadata (`x-request-timeout-ms`, as REST's header); it takes messages up to ~2 GiB, so our limit
is checked here. Serve's own batching (`@serve.batch`) is not used: the engine's batcher groups by
length, within a token budget, with deadlines and a bounded queue.

    reward-service serve --ray [--ray-num-replicas N | --ray-max-replicas N] ...
    serve run reward_service.serving.ray_serve:build_app    # or a config file: deploy/kuberay/
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from ray import serve
from ray.serve.config import HTTPOptions, gRPCOptions

from reward_service.client.transports.grpc import TIMEOUT_METADATA_KEY
from reward_service.engine.engine import Engine
from reward_service.engine.metrics import Metrics
from reward_service.grpc_gen import reward_pb2
from reward_service.serving.auth import is_authorized
from reward_service.serving.grpc import SERVICE_NAME, RewardServicer
from reward_service.serving.http import create_app
from reward_service.serving.ray_metrics import SYNC_PERIOD_S, RayMetricsMirror
from reward_service.serving.server import api_key_for, exposure_warning
from reward_service.serving.settings import ServeSettings
from reward_service.training.default_model import ensure_default_model

logger = logging.getLogger("reward_service")

APP_NAME = "reward"
DEPLOYMENT_NAME = "RewardReplica"
# What Serve's gRPC proxy registers, to route each service's methods to the replicas' methods of
# the same names.
GRPC_SERVICER_FUNCTIONS = (
    "reward_service.grpc_gen.reward_pb2_grpc.add_RewardServiceServicer_to_server",
    # grpc.health.v1's Check, answered by the replica (`Check` below) from its engine.
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
)


class GrpcCallAborted(Exception):  # noqa: N818
    """Raised by `ServeContext.abort`: the status is set; Serve sends it to the caller."""


class ServeContext:
    """The part of grpc.aio.ServicerContext our servicer uses, over Serve's gRPC context: so the
    replica answers gRPC with the very servicer the single server runs."""

    def __init__(self, serve_context: Any, deadline: float | None) -> None:
        self._context = serve_context
        self._deadline = deadline

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata=()) -> None:
        self._context.set_code(code)
        self._context.set_details(details)
        self._context.set_trailing_metadata(list(trailing_metadata))
        raise GrpcCallAborted(details)


def metadata_deadline(metadata: list[tuple[str, str]]) -> float | None:
    """The caller's deadline (time.monotonic()) from `x-request-timeout-ms`, or None. The clock
    is read first, so that the deadline is never later than the caller's."""
    now = time.monotonic()
    value = dict(metadata).get(TIMEOUT_METADATA_KEY)
    try:
        return None if value is None else now + max(0.0, float(value)) / 1000
    except ValueError:
        return None


class RewardReplica:
    """One replica: an engine with its batcher, REST's app and gRPC's servicer over it."""

    async def __init__(self, settings_values: dict[str, Any], api_key: str | None) -> None:
        settings = ServeSettings(**settings_values)
        self.engine = Engine(
            settings.model_specs(),
            settings.batching,
            Metrics(),
            expose_model_paths=settings.expose_model_paths,
        )
        # Loaded and warmed before Serve routes anything here: a replica is added (at start, on
        # upscale, after a crash) only once it can score.
        await self.engine.start()
        self.api_key = api_key
        self.max_message_bytes = settings.grpc_max_message_bytes
        self.rest_app = create_app(
            self.engine,
            api_key=api_key,
            max_body_bytes=settings.max_body_bytes,
            max_body_bytes_in_flight=settings.max_body_bytes_in_flight,
        )
        self.servicer = RewardServicer(self.engine)
        self._mirror = RayMetricsMirror(self.engine.metrics.registry)
        self._mirroring = asyncio.create_task(self._mirror_metrics())

    async def _mirror_metrics(self) -> None:
        while True:
            self._mirror.sync()
            await asyncio.sleep(SYNC_PERIOD_S)

    def __serve_build_asgi_app__(self):  # noqa: N807 (Serve's late-bound ingress hook)
        return self.rest_app

    async def check_health(self) -> None:
        """Serve's health check: a replica whose engine cannot answer (a model stalled or its
        batcher dead) fails it and is replaced, as /health/ready would say."""
        if self.engine.fatal_error:
            raise RuntimeError(self.engine.fatal_error)
        if problems := self.engine.problems():
            raise RuntimeError(f"not ready: {problems}")

    def _context(self, grpc_context: Any) -> ServeContext | None:
        """The servicer's context for a call, or None once the call is refused (no key)."""
        metadata = grpc_context.invocation_metadata()
        if self.api_key and not is_authorized(dict(metadata).get("authorization"), self.api_key):
            grpc_context.set_code(grpc.StatusCode.UNAUTHENTICATED)
            grpc_context.set_details(
                "this server needs an API key: send metadata 'authorization: Bearer KEY'"
            )
            return None
        return ServeContext(grpc_context, metadata_deadline(metadata))

    def _too_large(self, message: Any, grpc_context: Any) -> bool:
        """gRPC's own check of a message against --grpc-max-message-bytes, which Serve's proxy
        (limit ~2 GiB) does not make; same status and wording as grpc's."""
        size = message.ByteSize()
        if size <= self.max_message_bytes:
            return False
        grpc_context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
        grpc_context.set_details(
            f"Received message larger than max ({size} vs. {self.max_message_bytes})"
        )
        return True

    async def Score(self, request, grpc_context):  # noqa: N802 (the proto's method name)
        context = self._context(grpc_context)
        if context is None or self._too_large(request, grpc_context):
            return reward_pb2.ScoreResponse()  # the caller gets the status set, not this
        try:
            return await self.servicer.Score(request, context)
        except GrpcCallAborted:
            return reward_pb2.ScoreResponse()  # the caller gets the status, not this

    async def ScoreStream(self, request_stream, grpc_context):  # noqa: N802
        context = self._context(grpc_context)
        if context is None:
            return

        async def checked_requests():
            async for message in request_stream:
                if self._too_large(message, grpc_context):
                    raise GrpcCallAborted("message too large")
                yield message

        try:
            async for response in self.servicer.ScoreStream(checked_requests(), context):
                yield response
        except GrpcCallAborted:
            return

    async def ListModels(self, request, grpc_context):  # noqa: N802
        context = self._context(grpc_context)
        if context is None:
            return reward_pb2.ListModelsResponse()
        return await self.servicer.ListModels(request, context)

    async def Check(self, request, grpc_context):  # noqa: N802 (grpc.health.v1.Health/Check)
        """grpc.health.v1 through Serve's proxy, as the single server answers it: "" and the
        reward service SERVING while every model is ready, a model's name while it is. Open, as
        probes carry no key. (Watch, a stream of changes, is the single server's only.)"""
        if request.service in ("", SERVICE_NAME):
            ready = self.engine.ready
        elif request.service in self.engine.specs:
            ready = self.engine.is_ready(request.service)
        else:
            grpc_context.set_code(grpc.StatusCode.NOT_FOUND)
            grpc_context.set_details(f"unknown service {request.service!r}")
            return health_pb2.HealthCheckResponse()
        serving = health_pb2.HealthCheckResponse.SERVING
        return health_pb2.HealthCheckResponse(
            status=serving if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def __del__(self) -> None:
        # Serve calls this once the replica is drained (graceful_shutdown_timeout_s).
        self._mirroring.cancel()
        self._mirror.sync()
        await self.engine.stop()


def deployment_options(settings: ServeSettings) -> dict[str, Any]:
    """Serve's options for the replicas, from the settings (--ray-*)."""
    ray = settings.ray_serve
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "max_ongoing_requests": ray.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": ray.num_cpus, "num_gpus": ray.num_gpus},
        "health_check_period_s": ray.health_check_period_s,
        # A replica scaled down or replaced answers what it holds first, within the grace period
        # a SIGTERM'd single server has.
        "graceful_shutdown_timeout_s": settings.shutdown_grace_s,
        "graceful_shutdown_wait_loop_s": 0.5,
        # Serve logs every request unless told not to: --access-log, as the single server.
        "logging_config": {
            "enable_access_log": settings.access_log,
            "log_level": settings.log_level.upper(),
        },
    }
    if ray.max_replicas is None:
        options["num_replicas"] = ray.num_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": ray.min_replicas,
            "initial_replicas": max(ray.min_replicas, 1),
            "max_replicas": ray.max_replicas,
            "target_ongoing_requests": ray.target_ongoing_requests,
            "upscale_delay_s": ray.upscale_delay_s,
            "downscale_delay_s": ray.downscale_delay_s,
            "look_back_period_s": ray.look_back_period_s,
        }
    return options


def replica_values(settings: ServeSettings) -> dict[str, Any]:
    """The settings as the replicas rebuild them: every field given, so that no replica reads
    variables of its own, and no secret in them (the key travels on its own)."""
    return settings.model_dump(mode="json", exclude={"api_key", "api_key_file", "ray", "ray_serve"})


def with_models(settings: ServeSettings) -> ServeSettings:
    """The settings naming their models: without --model, the default model, built here once
    (not by every replica)."""
    if settings.models:
        return settings
    default = ensure_default_model(settings.cache_dir)
    return settings.model_copy(update={"models": [f"default={default}"]})


def application(settings: ServeSettings, api_key: str | None):
    """The Serve application: `RewardReplica` with the options the settings give."""
    deployment = serve.deployment(**deployment_options(settings))(serve.ingress()(RewardReplica))
    return deployment.bind(replica_values(with_models(settings)), api_key)


def build_app(args: dict[str, Any]):
    """Serve's application builder, for `serve run` and config files (KubeRay's serveConfigV2):
    `args` are `reward-service serve`'s settings by field name (REWARD_SERVICE_* variables fill
    in the rest)."""
    settings = ServeSettings(**args)
    return application(settings, settings.resolved_api_key())


def proxy_options(settings: ServeSettings) -> tuple[HTTPOptions, gRPCOptions | None]:
    """Where Serve's proxies listen: REST on --host/--port; gRPC on --grpc-port (all addresses:
    Serve's gRPC proxy takes no host) unless 0."""
    http = HTTPOptions(host=settings.host, port=settings.port)
    if not settings.grpc_port:
        return http, None
    grpc_options = gRPCOptions(
        port=settings.grpc_port, grpc_servicer_functions=list(GRPC_SERVICER_FUNCTIONS)
    )
    return http, grpc_options


def run(settings: ServeSettings) -> int:
    """`reward-service serve --ray`: deploys, then serves until SIGINT/SIGTERM, and shuts Serve
    down (the replicas drain) and the Ray it started."""
    import ray

    # Serve's gRPC proxy listens on every address whatever --host says: without a key it would
    # serve the network open, so it gets one as a server bound to 0.0.0.0 does.
    exposed_host = "0.0.0.0" if settings.grpc_port else settings.host
    api_key = api_key_for(settings.model_copy(update={"host": exposed_host}))
    if warning := exposure_warning(exposed_host, api_key is not None):
        logger.warning(warning)

    options = settings.ray_serve
    local = options.address is None
    ray_context = ray.init(
        # "local": a Ray of its own, even where another runs on this machine (ray.init would
        # join that one, and Serve's shutdown at exit would take its applications down too).
        address=options.address or "local",
        include_dashboard=False,
        logging_level=logging.WARNING,
        # A Ray started here exports every replica's metrics on this port (ray_metrics.py); a
        # cluster's nodes export on the port they were started with.
        **({"_metrics_export_port": options.metrics_port} if local else {}),
    )
    stop = threading.Event()
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda signum, frame: stop.set())
    try:
        http, grpc_options = proxy_options(settings)
        serve.start(http_options=http, grpc_options=grpc_options)
        serve.run(application(settings, api_key), name=APP_NAME, route_prefix="/")
        logger.info(
            "Ray Serve: %s at http://%s:%d%s; every replica's metrics: %s",
            APP_NAME,
            settings.host,
            settings.port,
            f" and grpc://{settings.host}:{settings.grpc_port}" if grpc_options else "",
            f"http://127.0.0.1:{ray_context.address_info['metrics_export_port']}/metrics"
            if local
            else "each node's Ray metrics port",
        )
        while not stop.wait(1.0):
            pass
        logger.warning("stopping: the replicas answer what they hold, then Serve shuts down")
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
