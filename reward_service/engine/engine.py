"""The engine: the models a server holds, and the one scoring path every transport calls."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from reward_service.engine.limits import BatchingConfig
from reward_service.engine.metrics import Metrics
from reward_service.engine.queue import ModelQueue
from reward_service.engine.schemas import ModelInfo, ScoreRequest, ScoreResponse
from reward_service.errors import (
    InvalidRequest,
    ItemTooLong,
    ModelLoadError,
    ModelNotFound,
    NotReady,
    ShuttingDown,
    TooManyCharacters,
    TooManyItems,
    first_line,
)
from reward_service.model.inputs import TokenizerInput, characters, format_inputs
from reward_service.model.loading import LoadedModel, load_model
from reward_service.model.mapping import mapping_summary
from reward_service.model.spec import ModelSpec

logger = logging.getLogger(__name__)

# Threads that tokenise requests (TEI's /info publishes it as tokenization_workers).
TOKENIZATION_THREADS = 1


class Engine:
    """The models one server holds, and `score`, the one path every transport calls.

    `start` loads and warms the models in turn on the compute thread; `score` checks a request
    against the limits, shapes its items by the model's mapping (model.inputs) and waits on that
    model's queue. It also counts the requests accepted and not yet answered, which graceful
    shutdown (serving/server.py) waits on.
    """

    def __init__(
        self,
        specs: list[ModelSpec],
        batching: BatchingConfig | None = None,
        metrics: Metrics | None = None,
        *,
        expose_model_paths: bool = False,
    ) -> None:
        """`expose_model_paths`: list a local model by its path, not only its folder's name
        (a path tells a caller about the machine's layout)."""
        if not specs:
            raise ValueError("an engine needs at least one model")
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        self.specs = {spec.name: spec for spec in specs}
        self.default_model = specs[0].name
        self.batching = batching or BatchingConfig()
        self.metrics = metrics or Metrics()
        # What /v1/models shows as each model's source, decided once: a local folder by its
        # name (unless paths are exposed), a hub id as given.
        self._public_sources = {
            spec.name: spec.source
            if expose_model_paths or not Path(spec.source).expanduser().exists()
            else Path(spec.source.rstrip("/")).name
            for spec in specs
        }
        self._queues: dict[str, ModelQueue] = {}
        # Tokenisation runs off the event loop; the Rust tokenizer releases the GIL.
        self._tokenize_executor = ThreadPoolExecutor(
            TOKENIZATION_THREADS, thread_name_prefix="tokenize"
        )
        # Every torch call (load, warm-up, forward passes of every model) runs on this one thread.
        # A thread that runs torch ops gets its own OpenMP thread team; with more OpenMP threads
        # than cores, libgomp stops spin-waiting between parallel regions and every region pays
        # a wake-up. Measured on 2 cores: a MiniLM-L6 forward of one text took about 2 ms longer
        # (15 -> 17 ms) once a second thread had run torch ops. One thread also keeps the
        # forward passes of several models from fighting over the cores.
        self._compute_executor = ThreadPoolExecutor(1, thread_name_prefix="compute")
        # Graceful shutdown: requests accepted (past the shutting-down check) and not yet answered.
        self.shutting_down = False
        self.refused_while_shutting_down = 0
        self._accepted = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Set once a model's batching task has died (a bug): the server then drains and exits
        # non-zero, so that a supervisor restarts it, rather than serve a model that never answers.
        self.fatal_error: str | None = None
        self.failed = asyncio.Event()

    @property
    def ready(self) -> bool:
        return (
            len(self._queues) == len(self.specs) and not self.shutting_down and not self.problems()
        )

    def problems(self) -> dict[str, str]:
        """Each warm model that cannot be counted on to answer, and why (see ModelQueue.problem)."""
        now = time.monotonic()
        found = {name: queue.problem(now) for name, queue in self._queues.items()}
        return {name: problem for name, problem in found.items() if problem is not None}

    @property
    def accepted_requests(self) -> int:
        """Requests accepted and not yet answered."""
        return self._accepted

    def begin_shutdown(self) -> None:
        """Refuse new requests (ShuttingDown) from now on; the accepted ones are still answered."""
        self.shutting_down = True

    async def wait_idle(self, timeout_s: float) -> bool:
        """Whether every accepted request was answered within `timeout_s`."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def abort_accepted(self, error: Exception) -> None:
        """Answers every request still queued or in a forward pass with `error` (the grace period
        is over: an answer the caller can retry elsewhere beats a dropped connection)."""
        for queue in self._queues.values():
            queue.abort(error)

    def is_ready(self, name: str) -> bool:
        queue = self._queues.get(name)
        return queue is not None and queue.problem(time.monotonic()) is None

    async def start(self) -> None:
        """Loads and warms up every model in turn; each serves as soon as it is warm."""
        loop = asyncio.get_running_loop()
        for spec in self.specs.values():
            model = await loop.run_in_executor(self._compute_executor, load_model, spec)
            queue = ModelQueue(
                model,
                self.batching,
                self.metrics,
                self._tokenize_executor,
                self._compute_executor,
            )
            try:
                await loop.run_in_executor(self._compute_executor, queue.warm_up)
            except Exception as error:
                # Else the loading task dies unseen and the server stays "loading" forever.
                raise ModelLoadError(
                    f"model {spec.name!r} failed its warm-up forward pass: "
                    f"{type(error).__name__}: {first_line(error)}"
                ) from error
            queue.on_batching_died = self._batching_died
            queue.start()
            self._queues[spec.name] = queue
            logger.info("model %r is ready", spec.name)

    def _batching_died(self, name: str, error: BaseException) -> None:
        if self.fatal_error is None:
            self.fatal_error = f"model {name!r} stopped scoring: {type(error).__name__}: {error}"
            self.failed.set()

    async def stop(self) -> None:
        for queue in self._queues.values():
            await queue.stop()
        self._queues.clear()
        self._tokenize_executor.shutdown(wait=False, cancel_futures=True)
        self._compute_executor.shutdown(wait=False, cancel_futures=True)

    async def score(self, request: ScoreRequest, *, deadline: float | None = None) -> ScoreResponse:
        """Scores one request; `deadline` (time.monotonic() seconds) drops it unscored if passed."""
        if self.shutting_down:
            self.refused_while_shutting_down += 1
            raise ShuttingDown("the server is shutting down: retry on another replica")
        self._accepted += 1
        self._idle.clear()
        try:
            return await self._score(request, deadline)
        finally:
            self._accepted -= 1
            if not self._accepted:
                self._idle.set()

    async def _score(self, request: ScoreRequest, deadline: float | None) -> ScoreResponse:
        queue = self._queue_for(request.model)
        check_item_count(request.item_count, self.batching)
        check_characters(request, self.batching)
        try:
            inputs = format_inputs(
                queue.model.mapping,
                texts=request.texts,
                prompts=request.prompts,
                completions=request.completions,
                render_chat=queue.model.render_chat,
            )
        except ValueError as error:
            raise InvalidRequest(str(error)) from None
        scored = await queue.submit(inputs, return_raw=request.return_raw, deadline=deadline)
        return ScoreResponse.model_construct(
            model=queue.model.spec.name,
            rewards=scored.rewards,
            raw=scored.raw,
            truncated=scored.truncated,
        )

    def _queue_for(self, name: str | None) -> ModelQueue:
        """Names are looked up among the configured models only: a name never reaches a path."""
        name = name or self.default_model
        if name not in self.specs:
            raise ModelNotFound(
                f"no model named {name!r}; this server has {', '.join(map(repr, self.specs))}"
            )
        queue = self._queues.get(name)
        if queue is None:
            raise NotReady(f"model {name!r} is still loading; retry when /health/ready says ready")
        return queue

    def loaded_model(self, name: str | None) -> LoadedModel:
        """The model a name selects (the server's first for None), for transports that read its
        mapping; ModelNotFound or NotReady as `score` would raise."""
        return self._queue_for(name).model

    def model_infos(self) -> list[ModelInfo]:
        return [self._model_info(spec) for spec in self.specs.values()]

    def _model_info(self, spec: ModelSpec) -> ModelInfo:
        queue = self._queues.get(spec.name)
        if queue is None:
            return ModelInfo(
                name=spec.name,
                source=self._public_sources[spec.name],
                backend=spec.backend,
                device=spec.device,
                dtype=spec.dtype,
                ready=False,
                labels=[],
                max_length=0,
                mapping={},
            )
        model = queue.model
        return ModelInfo(
            name=spec.name,
            source=self._public_sources[spec.name],
            backend=model.backend.name,
            device=model.backend.device,
            dtype=model.backend.dtype,
            ready=True,
            labels=[model.id2label[index] for index in sorted(model.id2label)],
            max_length=model.encoder.max_length,
            mapping=mapping_summary(model.mapping, model.resolved, model.id2label),
            description=model.mapping.description,
        )


def check_item_count(count: int, limits: BatchingConfig) -> None:
    """Refuses a request of more than `max_items_per_request` items."""
    if count > limits.max_items_per_request:
        raise TooManyItems(
            f"{count} items in one request; this server takes at most "
            f"{limits.max_items_per_request}: split the request"
        )


def check_characters(request: ScoreRequest, limits: BatchingConfig) -> None:
    """Refuses the first item longer than `max_chars_per_item` characters (a pair counts both
    texts), and a request longer than `max_chars_per_request` in all."""
    items = request.texts or zip(request.prompts or (), request.completions or (), strict=True)
    check_item_characters(items, limits)


def check_item_characters(items: Iterable[TokenizerInput], limits: BatchingConfig) -> None:
    """check_characters over items, for a transport that splits one request of texts and
    pairs into several engine requests: the limits hold for the request it was sent as."""
    total = 0
    for index, item in enumerate(items):
        length = characters(item)
        if length > limits.max_chars_per_item:
            raise ItemTooLong(
                f"item {index} has {length} characters; this server takes at most "
                f"{limits.max_chars_per_item} per item (text, or prompt + completion)"
            )
        total += length
    if total > limits.max_chars_per_request:
        raise TooManyCharacters(
            f"the request has {total} characters; this server takes at most "
            f"{limits.max_chars_per_request} per request: split the request"
        )
