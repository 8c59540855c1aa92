"""The package's version, as the protocols that publish one (TEI's /info, KServe's /v2) say it."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def server_version() -> str:
    try:
        return version("rlhf-reward-service")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
