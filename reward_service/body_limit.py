"""A request-body size limit in pure ASGI, shared by the reward server's REST app and the
feedback app: each says only how its refusal reads."""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Given what was seen of the body ("1234 bytes", "more than 1024 bytes"), the 413 to answer.
Refusal = Callable[[str], Response]


def declared_body(scope: Scope) -> tuple[bool, int | None]:
    """Whether a request's body comes chunked, and the size its Content-Length declares (None
    where it declares none)."""
    headers = dict(scope["headers"])
    chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
    declared = headers.get(b"content-length", b"")
    return chunked, int(declared) if declared.isdigit() else None


async def refuse_unread(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
    """Answers a request whose body stays unread: the connection closes after this answer."""
    response.headers["Connection"] = "close"
    await response(scope, receive, send)


class BodySizeLimit:
    """Refuses a request body over `max_body_bytes` without reading it: at once from its
    Content-Length, or, for a chunked body, as soon as the chunks read pass the limit. Any
    other body is at most its Content-Length, which the HTTP parser enforces, so it passes
    through unbuffered."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, refusal: Refusal) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.refusal = refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunked, declared = declared_body(scope)
        if chunked:
            await self._read_chunked_then_call(scope, receive, send)
            return
        if declared is not None and declared > self.max_body_bytes:
            await self._refuse(scope, receive, send, f"{declared} bytes")
            return
        await self.app(scope, receive, send)

    async def _read_chunked_then_call(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._refuse(scope, receive, send, f"more than {self.max_body_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, size: str) -> None:
        await refuse_unread(self.refusal(size), scope, receive, send)
