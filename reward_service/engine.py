"""The engine: the models a server holds, and the one scoring path every transport calls."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from reward_service.batcher import ModelQueue
from reward_service.config import BatchingConfig, ModelSpec
from reward_service.errors import InvalidRequest, ModelNotFound, NotReady, TooManyItems
from reward_service.loading import load_model
from reward_service.mapping import format_inputs, mapping_summary
from reward_service.metrics import Metrics
from reward_service.schemas import ModelInfo, ScoreRequest, ScoreResponse

logger = logging.getLogger(__name__)


class Engine:
    def __init__(
        self,
        specs: list[ModelSpec],
        batching: BatchingConfig | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if not specs:
            raise ValueError("an engine needs at least one model")
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        self.specs = {spec.name: spec for spec in specs}
        self.default_model = specs[0].name
        self.batching = batching or BatchingConfig()
        self.metrics = metrics or Metrics()
        self._queues: dict[str, ModelQueue] = {}
        # Tokenisation runs off the event loop; the Rust tokenizer releases the GIL.
        self._tokenize_executor = ThreadPoolExecutor(1, thread_name_prefix="tokenize")

    @property
    def ready(self) -> bool:
        return len(self._queues) == len(self.specs)

    def is_ready(self, name: str) -> bool:
        return name in self._queues

    async def start(self) -> None:
        """Loads and warms up every model in turn; each serves as soon as it is warm."""
        for spec in self.specs.values():
            model = await asyncio.to_thread(load_model, spec)
            queue = ModelQueue(model, self.batching, self.metrics, self._tokenize_executor)
            await asyncio.to_thread(queue.warm_up)
            queue.start()
            self._queues[spec.name] = queue
            logger.info("model %r is ready", spec.name)

    async def stop(self) -> None:
        for queue in self._queues.values():
            await queue.stop()
        self._queues.clear()
        self._tokenize_executor.shutdown(wait=False, cancel_futures=True)

    async def score(self, request: ScoreRequest, *, deadline: float | None = None) -> ScoreResponse:
        """Scores one request; `deadline` (time.monotonic() seconds) drops it unscored if passed."""
        queue = self._queue_for(request.model)
        if request.item_count > self.batching.max_items_per_request:
            raise TooManyItems(
                f"{request.item_count} items in one request; this server takes at most "
                f"{self.batching.max_items_per_request}: split the request"
            )
        try:
            inputs = format_inputs(
                queue.model.mapping,
                texts=request.texts,
                prompts=request.prompts,
                completions=request.completions,
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
        name = name or self.default_model
        if name not in self.specs:
            raise ModelNotFound(
                f"no model named {name!r}; this server has {', '.join(map(repr, self.specs))}"
            )
        queue = self._queues.get(name)
        if queue is None:
            raise NotReady(f"model {name!r} is still loading; retry when /health/ready says ready")
        return queue

    def model_infos(self) -> list[ModelInfo]:
        return [self._model_info(spec) for spec in self.specs.values()]

    def _model_info(self, spec: ModelSpec) -> ModelInfo:
        queue = self._queues.get(spec.name)
        if queue is None:
            return ModelInfo(
                name=spec.name, source=spec.source, backend=spec.backend, device=spec.device,
                dtype=spec.dtype, ready=False, labels=[], max_length=0, mapping={},
            )  # fmt: skip
        model = queue.model
        return ModelInfo(
            name=spec.name,
            source=spec.source,
            backend=model.backend.name,
            device=model.backend.device,
            dtype=model.backend.dtype,
            ready=True,
            labels=[model.id2label[index] for index in sorted(model.id2label)],
            max_length=model.encoder.max_length,
            mapping=mapping_summary(model.mapping, model.resolved, model.id2label),
            description=model.mapping.description,
        )
