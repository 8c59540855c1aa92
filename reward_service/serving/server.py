"""Runs the engine and its transports in one event loop, and shuts them down gracefully."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
import signal
import sys
import threading
import time
from types import FrameType

import uvicorn

from reward_service.engine.engine import Engine
from reward_service.engine.metrics import Metrics
from reward_service.errors import ModelLoadError, ShuttingDown
from reward_service.model.loading import resolve_model_folder
from reward_service.serving.grpc import GrpcServer
from reward_service.serving.http import create_app
from reward_service.serving.http_protocol import deadline_protocol
from reward_service.serving.settings import ServeSettings
from reward_service.training.default_model import ensure_default_model

logger = logging.getLogger("reward_service")

# The exit status when a model stopped answering (EX_SOFTWARE: an internal error).
EXIT_ENGINE_FAILED = 70

# Of the grace period, the parts kept, once the accepted work is answered, for refusing a little
# longer (see GracefulShutdown._drain) and then for closing the connections.
MAX_LINGER_S = 0.5
MAX_CLOSE_RESERVE_S = 2.0


def build_engine(settings: ServeSettings) -> Engine:
    """Checks every model source up front, so a bad folder fails in one line before serving."""
    default_source = None if settings.models else str(ensure_default_model(settings.cache_dir))
    specs = settings.model_specs(default_source)
    for spec in specs:
        resolve_model_folder(spec.source, allow_pickle=spec.allow_pickle)
    return Engine(
        specs, settings.batching, Metrics(), expose_model_paths=settings.expose_model_paths
    )


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only. A host name other than localhost
    counts as reachable from outside: it may resolve to any address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, has_api_key: bool) -> str | None:
    """The warning for a server anyone on the network can use, or None."""
    if has_api_key or is_loopback(host):
        return None
    return (
        f"listening on {host} without an API key (--insecure-no-auth): anyone who can reach this "
        "address can use the server"
    )


def api_key_for(settings: ServeSettings) -> str | None:
    """The key the server requires. An address other than loopback is never served open by
    accident: without a key (and without --insecure-no-auth) the server makes a random one and
    prints it once, as Jupyter does with its token."""
    key = settings.resolved_api_key()
    if key is not None or is_loopback(settings.host) or settings.insecure_no_auth:
        return key
    key = secrets.token_urlsafe(32)
    print(
        f"reward-service: {settings.host} is reachable from other machines and no API key was "
        f"given, so this run requires this one:\n\n    {key}\n\n(send it as `Authorization: "
        "Bearer KEY`; choose your own with --api-key-file or REWARD_SERVICE_API_KEY, or serve "
        "without one with --insecure-no-auth)",
        file=sys.stderr,
        flush=True,
    )
    return key


class GracefulShutdown:
    """What SIGTERM (or SIGINT) does: readiness turns false (REST /health/ready 503
    "shutting_down", gRPC health NOT_SERVING) and new requests are refused with "shutting down"
    (HTTP 503, gRPC UNAVAILABLE) at once; the requests already accepted are answered; then, after
    a moment's more refusing if there was traffic, the listeners close and the process exits, all
    within `grace_s`. Accepted requests still
    unanswered when the grace period is nearly over are answered "shutting down" too. A second
    signal skips the wait; a watchdog ends the process if it is still alive after `grace_s`.
    """

    def __init__(
        self, engine: Engine, rest: uvicorn.Server, grpc_server: GrpcServer | None, grace_s: float
    ) -> None:
        self.engine = engine
        self.rest = rest
        self.grpc_server = grpc_server
        self.grace_s = grace_s
        self.linger_s = min(MAX_LINGER_S, grace_s / 10)
        self.close_reserve_s = min(MAX_CLOSE_RESERVE_S, grace_s / 4)
        self._loop = asyncio.get_running_loop()
        self._draining: asyncio.Task | None = None
        self.exit_code = 0

    def on_signal(self, signum: int, frame: FrameType | None = None) -> None:
        """A signal handler: hands the signal to the event loop."""
        self._loop.call_soon_threadsafe(self._begin, signal.Signals(signum).name)

    def on_engine_failure(self, reason: str) -> None:
        """A model can no longer answer (its batching task died: a bug): drain as on SIGTERM and
        exit with EXIT_ENGINE_FAILED, for a supervisor (Docker, Kubernetes, systemd) to restart
        the server; serving on with that model would answer its requests never."""
        logger.critical("%s: the server stops (exit status %d)", reason, EXIT_ENGINE_FAILED)
        self.exit_code = EXIT_ENGINE_FAILED
        if self._draining is None:
            self._begin("engine failure")

    def _begin(self, signal_name: str) -> None:
        if self._draining is not None:
            logger.warning("%s again: answering the accepted requests now and exiting", signal_name)
            self._abort_accepted("the server was told to stop at once")
            self.rest.should_exit = True
            return
        threading.Thread(target=self._watchdog, name="shutdown-watchdog", daemon=True).start()
        self._draining = self._loop.create_task(self._drain(signal_name))

    async def _drain(self, signal_name: str) -> None:
        started = time.monotonic()
        busy = self.engine.accepted_requests > 0
        logger.warning(
            "%s: shutting down within %.1f s: not ready, refusing new requests, answering the %d "
            "accepted",
            signal_name,
            self.grace_s,
            self.engine.accepted_requests,
        )
        self.engine.begin_shutdown()
        if self.grpc_server is not None:
            await self.grpc_server.begin_shutdown()
        elapsed_s = time.monotonic() - started
        budget_s = self.grace_s - self.linger_s - self.close_reserve_s - elapsed_s
        if await self.engine.wait_idle(max(budget_s, 0.0)):
            logger.info(
                "every accepted request answered in %.2f s; exiting", time.monotonic() - started
            )
        else:
            logger.error(
                "the grace period is over with %d accepted requests unanswered: answering them "
                "'shutting down'",
                self.engine.accepted_requests,
            )
            self._abort_accepted("the shutdown grace period ended before this request was scored")
        # Still listening, and refusing: a client answered during the drain that comes straight
        # back meets the "shutting down" refusal, not a listener closing under its connection.
        if busy or self.engine.refused_while_shutting_down:
            await asyncio.sleep(self.linger_s)
        self.rest.should_exit = True  # uvicorn closes its listener and connections; gRPC follows

    def _abort_accepted(self, why: str) -> None:
        self.engine.abort_accepted(ShuttingDown(f"{why}: retry on another replica"))

    def _watchdog(self) -> None:
        time.sleep(self.grace_s)
        print(
            f"reward-service: still running {self.grace_s} s after the shutdown signal: exiting",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)


class _Server(uvicorn.Server):
    """uvicorn, except that SIGINT/SIGTERM start the graceful shutdown instead of its own."""

    graceful_shutdown: GracefulShutdown | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.graceful_shutdown is None:
            super().handle_exit(sig, frame)
        else:
            self.graceful_shutdown.on_signal(sig, frame)


async def serve(settings: ServeSettings) -> int:
    """Serves until SIGINT/SIGTERM; listens at once, and /health/ready says when models are warm."""
    engine = build_engine(settings)
    api_key = api_key_for(settings)
    warning = exposure_warning(settings.host, api_key is not None)
    if warning:
        logger.warning(warning)
    app = create_app(
        engine,
        api_key=api_key,
        max_body_bytes=settings.max_body_bytes,
        max_body_bytes_in_flight=settings.max_body_bytes_in_flight,
    )
    server = _Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            access_log=settings.access_log,
            lifespan="off",
            timeout_graceful_shutdown=min(MAX_CLOSE_RESERVE_S, settings.shutdown_grace_s / 4),
            limit_concurrency=settings.max_connections,
            ssl_certfile=settings.ssl_certfile,
            ssl_keyfile=settings.ssl_keyfile,
            http=deadline_protocol(
                request_start_s=settings.timeout_request_start_s,
                request_complete_s=settings.timeout_request_complete_s,
                on_timeout=lambda phase: engine.metrics.http_read_timeouts.labels(phase).inc(),
            ),
        )
    )
    load_failure: list[ModelLoadError] = []

    async def load_models() -> None:
        try:
            await engine.start()
        except ModelLoadError as error:
            load_failure.append(error)
            server.should_exit = True

    # gRPC shares the engine and this event loop, so its items join the same batches as REST's.
    grpc_server = None
    if settings.grpc_port:
        grpc_server = GrpcServer(
            engine,
            host=settings.host,
            port=settings.grpc_port,
            max_message_bytes=settings.grpc_max_message_bytes,
            max_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
            keepalive_s=settings.grpc_keepalive_s,
            max_idle_s=settings.grpc_max_idle_s,
            api_key=api_key,
            tls=settings.tls_files(),
        )
        await grpc_server.start()
    shutdown = GracefulShutdown(engine, server, grpc_server, settings.shutdown_grace_s)
    server.graceful_shutdown = shutdown
    # uvicorn installs its handlers (which call handle_exit) while it serves; these cover the
    # moments before and after.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, shutdown.on_signal)
    loading = asyncio.create_task(load_models())

    async def stop_on_engine_failure() -> None:
        await engine.failed.wait()
        shutdown.on_engine_failure(engine.fatal_error or "the engine failed")

    watching = asyncio.create_task(stop_on_engine_failure())
    try:
        await server.serve()
    finally:
        for task in (loading, watching):
            task.cancel()
        await asyncio.gather(loading, watching, return_exceptions=True)
        if grpc_server is not None:
            await grpc_server.stop(shutdown.close_reserve_s)
        await engine.stop()
    if load_failure:
        raise load_failure[0]
    return shutdown.exit_code


def run(settings: ServeSettings) -> int:
    # The Rust tokenizer's batch calls otherwise spread over every core, taking them from the
    # forward pass; the server tokenises on one thread of its own (read on every call).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import uvloop
    except ImportError:  # uvloop is optional (and absent on Windows); asyncio works too
        # (grpc.aio runs on either loop: it wakes the loop from its own poller thread.)
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))
