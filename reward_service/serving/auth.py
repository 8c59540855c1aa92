"""The optional API key: `Authorization: Bearer KEY` on REST (and, for gRPC, the same value in the
`authorization` metadata: `is_authorized` serves both transports)."""

from __future__ import annotations

import hmac

# Probes and scrapers carry no key: these paths stay open.
OPEN_PATH_PREFIXES = ("/health/", "/metrics")


def is_authorized(authorization: str | None, api_key: str) -> bool:
    """Whether an Authorization header (or gRPC metadata) value carries `api_key` as a bearer
    token. Constant-time, so the comparison leaks nothing about the key."""
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), api_key.encode()
    )
