"""What the client core, its transports and the service share: the shape of a scoring call's
items, the client's settings, and the verdicts a transport hands back to the retry loop.

The rule "texts, or prompts and completions of equal length" lives here once: the client checks
it before sending and the service's request schema checks it on arrival, with the same words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


def item_count(texts: Sequence[str] | None, completions: Sequence[str] | None) -> int:
    """Items in a call: one per text, or one per prompt/completion pair."""
    return len(texts) if texts is not None else len(completions or ())


def check_items(
    texts: Sequence[str] | None,
    prompts: Sequence[str] | None,
    completions: Sequence[str] | None,
) -> int:
    """The number of items, once the call holds texts, or prompts and completions that pair up
    one to one; a ValueError saying what is wrong otherwise."""
    has_pairs = prompts is not None or completions is not None
    if texts is not None and has_pairs:
        raise ValueError("send either texts or prompts + completions, not both")
    if texts is None and not has_pairs:
        raise ValueError("send texts, or prompts + completions")
    if has_pairs:
        if prompts is None or completions is None:
            raise ValueError("prompts and completions must be sent together")
        if len(prompts) != len(completions):
            raise ValueError(
                f"{len(prompts)} prompts for {len(completions)} completions: they must pair one "
                "to one"
            )
    return item_count(texts, completions)


class ClientConfig(BaseModel):
    """Every knob, with its default. Pass any of them to the client as a keyword argument."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(30.0, gt=0, description="One request (one attempt), at most.")
    deadline_s: float | None = Field(
        None, gt=0, description="One score() call, retries and all; None: no overall limit."
    )
    # A restart with its model load and warm-up takes tens of seconds: a retry count (8 retries
    # were 8-16 s of backoff) gave up before the server was back. Time bounds the retries now.
    retry_budget_s: float | None = Field(
        120.0,
        gt=0,
        description="How long one request keeps retrying after its first failure; None: no limit "
        "but max_retries and deadline_s.",
    )
    max_retries: int | None = Field(
        None, ge=0, description="Per request, after its first attempt; None: as the budget allows."
    )
    backoff_base_s: float = Field(
        0.1, gt=0, description="The first retry waits about this long, doubling each retry."
    )
    backoff_max_s: float = Field(
        5.0, gt=0, description="The longest wait between retries (Retry-After may ask longer)."
    )
    retry_after_max_s: float = Field(
        30.0, gt=0, description="The longest Retry-After a server is obeyed for."
    )
    # The server's default limit is 1024; a smaller server limit is learned from its 413 answer
    # (HTTP), and the client splits smaller from then on.
    max_items_per_request: int = Field(256, ge=1, description="Items per request.")
    max_concurrency: int = Field(4, ge=1, description="Requests of one call in flight at once.")
    endpoint_cooldown_s: float = Field(
        1.0, gt=0, description="A failing endpoint is avoided this long (doubling, x8 at most)."
    )
    api_key: str | None = Field(
        None, description="Sent as `Authorization: Bearer KEY` (HTTP header, gRPC metadata)."
    )
    model: str | None = Field(None, description="The served model; the server's first if None.")
    ca_file: Path | None = Field(
        None,
        description="PEM CA certificates that verify an https:// or grpcs:// server (for a "
        "self-signed server, its own certificate); None: the system's CAs.",
    )


class Retryable(Exception):  # noqa: N818 (internal signal between transport and retry loop)
    """A transport's verdict: this attempt failed in a way another attempt may not."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class ItemLimitExceeded(Exception):  # noqa: N818
    """A transport's verdict: the server at `url` refused the request as too large (413). With
    `too_many_items` the server takes fewer items per request than were sent, and the client
    remembers that; otherwise (the body was too large) only this request is split."""

    def __init__(self, message: str, url: str, *, too_many_items: bool) -> None:
        super().__init__(message)
        self.url = url
        self.too_many_items = too_many_items


@dataclass(frozen=True)
class Scores:
    """A server's answer to one request: one reward per item (None or NaN where the model gave
    no finite reward; assemble() refuses those) and how many items it truncated to the model's
    max_length."""

    rewards: list[float | None]
    truncated: int = 0

    @classmethod
    def joined(cls, parts: Sequence[Scores]) -> Scores:
        """The answers to consecutive parts of one request, as one."""
        return cls(
            [reward for part in parts for reward in part.rewards],
            sum(part.truncated for part in parts),
        )


@dataclass(frozen=True)
class Chunk:
    """One request's worth of a call: items [start, start + size) of the caller's lists."""

    start: int
    texts: list[str] | None = None
    prompts: list[str] | None = None
    completions: list[str] | None = None

    @property
    def size(self) -> int:
        return item_count(self.texts, self.completions)

    def split(self, size: int) -> list[Chunk]:
        def part(items: list[str] | None, at: int) -> list[str] | None:
            return None if items is None else items[at : at + size]

        return [
            replace(
                self,
                start=self.start + at,
                texts=part(self.texts, at),
                prompts=part(self.prompts, at),
                completions=part(self.completions, at),
            )
            for at in range(0, self.size, size)
        ]
