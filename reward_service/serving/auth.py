"""The optional API key: `Authorization: Bearer KEY` on REST (and, for gRPC, the same value in the
`authorization` metadata: `is_authorized` serves both transports), or HTTP Basic credentials whose
password is the key (any user name), so a URL such as `http://rm:KEY@HOST:PORT/get_reward` works
with clients that send a URL's userinfo as Basic credentials (requests, aiohttp: OpenRLHF's)."""

from __future__ import annotations

import base64
import binascii
import hmac

# Probes and scrapers carry no key: these paths stay open.
OPEN_PATH_PREFIXES = ("/health", "/v2/health/", "/metrics")  # "/health": TEI's probe too


def is_authorized(authorization: str | None, api_key: str) -> bool:
    """Whether an Authorization header (or gRPC metadata) value carries `api_key`: as a bearer
    token, or as the password of Basic credentials. Constant-time, so the comparison leaks
    nothing about the key."""
    scheme, _, credentials = (authorization or "").partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return hmac.compare_digest(credentials.strip().encode(), api_key.encode())
    if scheme == "basic":
        password = basic_password(credentials.strip())
        return password is not None and hmac.compare_digest(password, api_key.encode())
    return False


def basic_password(credentials: str) -> bytes | None:
    """The password of Basic credentials (base64 of `user:password`); None if malformed."""
    try:
        decoded = base64.b64decode(credentials, validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    return password if colon else None
