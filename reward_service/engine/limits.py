"""The batching limits: what a model's queue admits, and how large its batches get."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class BatchingConfig(BaseModel):
    """Limits for the per-model queue, the batches formed from it and the requests it admits."""

    model_config = ConfigDict(extra="forbid", title="batching")

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
    # What the tokenizer may be asked to read for one request: 1,024 items of 4,096 characters,
    # about 2 s of one tokenizer thread. A request past it gets 413 and the client splits it.
    max_chars_per_request: int = Field(
        4_194_304,
        ge=1,
        description="Characters in one request (every text, prompt and completion), at most.",
    )

    # A forward pass of a full batch takes well under a second for MiniLM on a CPU core and a
    # few seconds for a large encoder: a minute means it hangs (a wedged driver, a deadlock).
    stall_after_s: float = Field(
        60.0,
        gt=0,
        description="A forward pass running longer than this makes the model not ready (REST "
        "/health/ready 503, gRPC health NOT_SERVING) until it returns.",
    )

    @model_validator(mode="after")
    def _request_fits_queue(self) -> BatchingConfig:
        if self.max_items_per_request > self.max_queue_items:
            raise ValueError(
                f"max_items_per_request ({self.max_items_per_request}) must not exceed "
                f"max_queue_items ({self.max_queue_items}): such a request could never be admitted"
            )
        if self.max_chars_per_item > self.max_chars_per_request:
            raise ValueError(
                f"max_chars_per_item ({self.max_chars_per_item}) must not exceed "
                f"max_chars_per_request ({self.max_chars_per_request}): a longest item could "
                "never be sent"
            )
        return self
