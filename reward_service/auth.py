"""The optional API key: `Authorization: Bearer KEY` on REST (and, for gRPC, the same value in the
`authorization` metadata: `is_authorized` serves both transports)."""

from __future__ import annotations

import hmac

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from reward_service.schemas import ErrorBody, ErrorResponse

# Probes and scrapers carry no key: these paths stay open.
OPEN_PATH_PREFIXES = ("/health/", "/metrics")


def is_authorized(authorization: str | None, api_key: str) -> bool:
    """Whether an Authorization header (or gRPC metadata) value carries `api_key` as a bearer
    token. Constant-time, so the comparison leaks nothing about the key."""
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), api_key.encode()
    )


class ApiKeyMiddleware:
    """Refuses REST requests without the key with 401, before any route runs. Pure ASGI."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(OPEN_PATH_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if is_authorized(authorization, self.api_key):
            await self.app(scope, receive, send)
            return
        body = ErrorResponse(error=ErrorBody(
            type="unauthorized",
            message="this server needs an API key: send 'Authorization: Bearer KEY'",
        ))  # fmt: skip
        response = JSONResponse(
            body.model_dump(), status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )
        await response(scope, receive, send)
