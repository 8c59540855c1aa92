"""Runs the engine and its transports in one event loop."""

from __future__ import annotations

import asyncio
import logging
import signal

import uvicorn

from reward_service.config import ServeSettings
from reward_service.default_model import ensure_default_model
from reward_service.engine import Engine
from reward_service.errors import ModelLoadError
from reward_service.grpc_server import GrpcServer
from reward_service.http import create_app
from reward_service.loading import resolve_model_folder
from reward_service.metrics import Metrics

logger = logging.getLogger("reward_service")


def build_engine(settings: ServeSettings) -> Engine:
    """Checks every model source up front, so a bad folder fails in one line before serving."""
    default_source = None if settings.models else str(ensure_default_model(settings.cache_dir))
    specs = settings.model_specs(default_source)
    for spec in specs:
        resolve_model_folder(spec.source, allow_pickle=spec.allow_pickle)
    return Engine(specs, settings.batching, Metrics())


async def serve(settings: ServeSettings) -> int:
    """Serves until SIGINT/SIGTERM; listens at once, and /health/ready says when models are warm."""
    engine = build_engine(settings)
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    app = create_app(engine, api_key=api_key)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            access_log=settings.access_log,
            lifespan="off",
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
            api_key=api_key,
        )
        await grpc_server.start()
    # uvicorn stops on SIGINT/SIGTERM and, once REST is drained, raises the signal again for the
    # previous handler: let that one only ask for exit, so the cleanup below (draining gRPC,
    # stopping the engine) still runs instead of the process dying mid-shutdown.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda *_: setattr(server, "should_exit", True))
    loading = asyncio.create_task(load_models())
    try:
        await server.serve()
    finally:
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        if grpc_server is not None:
            await grpc_server.stop()
        await engine.stop()
    if load_failure:
        raise load_failure[0]
    return 0


def run(settings: ServeSettings) -> int:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (and absent on Windows); asyncio works too
        # (grpc.aio runs on either loop: it wakes the loop from its own poller thread.)
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))
