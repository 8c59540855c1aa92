"""REST requests carry what gRPC calls carry on their own: a deadline, and the news that the
caller has gone. Without them, work a client gave up on is still done, and under overload
clients that time out and retry make the server score every request twice while live callers
get 429: overload feeds itself.

- `X-Request-Timeout-Ms` (what the client will wait, from sending; our client sends its
  per-request timeout): items still queued when it has passed are dropped unscored (504
  `deadline_exceeded`, counted in `reward_items_expired`).
- A client that disconnects before its answer: its queued items are dropped (counted in
  `reward_items_cancelled`), and the request is logged with status 499 (nginx's "client closed
  request"), an answer nobody reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from reward_service import errors

TIMEOUT_HEADER = "x-request-timeout-ms"
CLIENT_CLOSED_REQUEST = 499

T = TypeVar("T")


class ClientGone(Exception):  # noqa: N818
    """The client disconnected before its answer was ready."""


def request_deadline(request: Request) -> float | None:
    """The deadline the request's timeout header sets, on the engine's clock (time.monotonic()),
    read at arrival; None without the header."""
    value = request.headers.get(TIMEOUT_HEADER)
    if value is None:
        return None
    try:
        timeout_ms = float(value)
    except ValueError:
        raise errors.InvalidRequest(
            f"{TIMEOUT_HEADER} must be a number of milliseconds, got {value!r}"
        ) from None
    if not timeout_ms > 0:
        raise errors.InvalidRequest(f"{TIMEOUT_HEADER} must be positive, got {value!r}")
    return time.monotonic() + timeout_ms / 1000


async def unless_abandoned(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, or ClientGone once the client disconnects first; the work is then
    cancelled, which drops its items from the queue."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise ClientGone


async def _disconnected(request: Request) -> None:
    # The body is read by now: the next message the server sends up is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
