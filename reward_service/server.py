"""Runs the engine and its transports in one event loop."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from reward_service.config import ServeSettings
from reward_service.default_model import ensure_default_model
from reward_service.engine import Engine
from reward_service.errors import ModelLoadError
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
    app = create_app(engine)
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

    loading = asyncio.create_task(load_models())
    try:
        await server.serve()
    finally:
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        await engine.stop()
    if load_failure:
        raise load_failure[0]
    return 0


def run(settings: ServeSettings) -> int:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (and absent on Windows); asyncio works too
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))
