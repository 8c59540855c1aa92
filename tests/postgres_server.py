"""A throwaway PostgreSQL server for tests, from Debian's `postgresql` package binaries.

    with postgres_server() as url:   # postgresql+psycopg://postgres@127.0.0.1:PORT/feedback
        ...

The cluster lives in a temporary folder (data, unix socket, log), listens on 127.0.0.1 at a free
port with trust authentication, and is stopped (``pg_ctl stop -m immediate``) and removed at the
end. PostgreSQL refuses to run as root, so as root the cluster runs as the ``postgres`` user.

Missing binaries raise :class:`PostgresUnavailable` on entry; the caller decides what that means.
For tests, :func:`postgres_for_tests` decides: skip, unless ``REQUIRE_POSTGRES=1`` (CI), where a
missing server is a failure. A fixture (pytest's skip and fail passed in, so this module needs no
pytest):

    @pytest.fixture(scope="module")
    def postgres_url() -> Iterator[str]:
        with postgres_for_tests(skip=pytest.skip, fail=pytest.fail) as url:
            yield url
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import psycopg
from helpers import WAIT_S, free_port

POSTGRES_ROOT = Path("/usr/lib/postgresql")
SERVICE_USER = "postgres"  # Debian's package creates it


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def postgres_bin_folder() -> Path:
    """The newest installed version's bin folder (/usr/lib/postgresql/<version>/bin)."""
    candidates = [path.parent for path in POSTGRES_ROOT.glob("*/bin/initdb")]
    if not candidates:
        raise PostgresUnavailable(
            f"no PostgreSQL server found ({POSTGRES_ROOT}/*/bin/initdb); "
            "install Debian's `postgresql` package"
        )
    return max(candidates, key=_version_key)


def _version_key(bin_folder: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", bin_folder.parent.name))


@contextmanager
def postgres_server(database: str = "feedback", bin_folder: Path | None = None) -> Iterator[str]:
    """Starts a cluster, creates ``database`` and yields its SQLAlchemy URL; stops it after.
    ``bin_folder``: the server binaries (default: the newest installed version's)."""
    bin_folder = bin_folder or postgres_bin_folder()
    as_service_user = os.geteuid() == 0
    # Not pytest's tmp_path: its folders are private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="feedback-postgres-"))
    try:
        (root / "socket").mkdir()
        if as_service_user:
            account = pwd.getpwnam(SERVICE_USER)
            for folder in (root, root / "socket"):
                os.chown(folder, account.pw_uid, account.pw_gid)
        cluster = _Cluster(bin_folder, root, as_service_user)
        cluster.start()
        try:
            yield create_database(cluster.url("postgres"), database)
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def postgres_for_tests(
    *, skip: Callable[[str], NoReturn], fail: Callable[[str], NoReturn]
) -> Iterator[str]:
    """:func:`postgres_server`, or ``skip`` (``fail`` with REQUIRE_POSTGRES=1) without one."""
    try:
        bin_folder = postgres_bin_folder()
    except PostgresUnavailable as missing:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            fail(f"REQUIRE_POSTGRES=1, but {missing}")
        skip(str(missing))
    with postgres_server(bin_folder=bin_folder) as url:
        yield url


def create_database(server_url: str, name: str) -> str:
    """Creates database ``name`` on the server of ``server_url``; returns the new one's URL."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"database name {name!r}: use lower-case letters, digits and _")
    with psycopg.connect(_libpq_url(server_url), autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + "/" + name


def _libpq_url(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


class _Cluster:
    def __init__(self, bin_folder: Path, root: Path, as_service_user: bool) -> None:
        self.bin_folder = bin_folder
        self.data = root / "data"
        self.socket_folder = root / "socket"
        self.log = root / "server.log"
        self.as_service_user = as_service_user
        self.port = free_port()

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SERVICE_USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self._run("initdb", "-D", self.data, "-U", SERVICE_USER, "--auth=trust", "--no-sync",
                  "--encoding=UTF8", "--locale=C")  # fmt: skip
        # fsync off: nothing in a throwaway cluster has to survive a crash, and it is faster.
        options = (
            f"-p {self.port} -k {self.socket_folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        )
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w",
                  "-t", str(int(WAIT_S)), "start")  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    def _run(self, program: str, *args: object) -> None:
        command = [str(self.bin_folder / program), *(str(arg) for arg in args)]
        if self.as_service_user:
            command = ["runuser", "-u", SERVICE_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}{log}"
            )
