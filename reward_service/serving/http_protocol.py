"""uvicorn's HTTP protocol with deadlines for receiving a request, which uvicorn lacks.

uvicorn times out only idle keep-alive connections, and resets that timer on every byte: a client
that sends part of its headers, or of its body, and stalls (or trickles a byte at a time) holds
its connection and the body received so far for as long as it likes. The request-start and
request-complete timeouts uvicorn has planned (encode/uvicorn#157) are applied here: a request's
headers must arrive within one deadline of its first byte (of the connection's opening, for the
first request), and the whole request within another. Past either the connection is closed; a
route already reading the body sees the client disconnect, and its queued items are dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)


def deadline_protocol(
    *,
    request_start_s: float,
    request_complete_s: float,
    on_timeout: Callable[[str], None] = lambda phase: None,
) -> type[asyncio.Protocol]:
    """An HTTP protocol class for `uvicorn.Config(http=...)`: httptools' (what uvicorn picks where
    it is installed, as `uvicorn[standard]` does) with both deadlines. `on_timeout` is told the
    phase that ran out: "headers" or "body"."""

    class DeadlineProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(request_start_s, "headers")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._deadline is None:  # a keep-alive connection's next request
                self._arm(request_start_s, "headers")

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            # The whole request's deadline counts from its first byte, not from here: a client
            # gets request_complete_s in all, of which the headers may take request_start_s.
            self._arm(max(request_complete_s - self._elapsed(), 0.0), "body")

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self, seconds: float, phase: str) -> None:
            self._disarm()
            if phase == "headers":
                self._started_at = self.loop.time()
            self._deadline = self.loop.call_later(seconds, self._expire, phase)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _elapsed(self) -> float:
            return self.loop.time() - self._started_at

        def _expire(self, phase: str) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            limit = request_start_s if phase == "headers" else request_complete_s
            logger.warning(
                "closing a connection from %s: its request's %s did not arrive within %g s",
                f"{self.client[0]}:{self.client[1]}" if self.client else "a client",
                phase,
                limit,
            )
            on_timeout(phase)
            self.transport.close()

    return DeadlineProtocol
