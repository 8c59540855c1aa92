"""Where built folders (the default reward model, converted policies) are kept between runs, and
how one is built so that an interrupted build never looks complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def default_cache_dir() -> Path:
    """Where built models (the default reward model) are kept between runs."""
    configured = os.environ.get("REWARD_SERVICE_CACHE")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "reward-service"


@contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A new, empty folder beside `target` to build into: when the block ends without an error,
    what stands at `target` (an older or partial build) is removed and the new folder renamed
    into its place; otherwise the new folder is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        # mkdtemp's 0700 would hide the folder from a server run as another user.
        staging.chmod(0o755)
        yield staging
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
