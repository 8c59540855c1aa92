"""Helpers of the ranking app's tests: Debian's headless Chromium driven through its chromedriver
(Selenium), the app's server as a real process, and the `reward-service feedback` commands.

Without /usr/bin/chromium and /usr/bin/chromedriver (Debian's `chromium` and `chromium-driver`,
which `make setup` installs where it runs as root) the browser tests skip, unless
REQUIRE_BROWSER=1 (as .ci/run sets): then they fail, saying what is missing. Waits are on the
page's elements and events (WebDriverWait), never sleeps.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from helpers import HTTP_TIMEOUT_S, REPO_ROOT, WAIT_S, free_port, wait_for

from reward_service.cli import main as reward_service_main

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # root in a container has no user namespace to sandbox with
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # a container's /dev/shm is often 64 MB
)
LAPTOP = (1280, 900)
PHONE = (390, 844)  # CSS pixels of a common phone
POLL_S = 0.05


def require_browser() -> None:
    """Skips the test without Chromium and chromedriver, or fails with REQUIRE_BROWSER=1."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if not missing:
        return
    message = (
        f"no {' and no '.join(missing)}: the browser tests need Debian's chromium and "
        "chromium-driver (`make setup` as root installs them; or apt-get install "
        "--no-install-recommends chromium chromium-driver)"
    )
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"REQUIRE_BROWSER=1, but {message}")
    pytest.skip(message)


# A machine with no network, as far as the browser can tell: every host name but loopback fails
# to resolve, and every non-loopback address (IP literals too) goes to a proxy on a port that
# nothing listens on. Chromium never sends loopback through a proxy.
NO_NETWORK_FLAGS = (
    # One argv entry, so no shell quotes around the rules.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
)


@contextlib.contextmanager
def chromium(size: tuple[int, int] = LAPTOP, *, offline: bool = False) -> Iterator:
    """A fresh headless Chromium (its own profile in a temporary folder) with a WebDriver
    session; quit on leaving. `offline`: it reaches nothing but 127.0.0.1, and it keeps the
    performance log that `requested_urls` reads."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, *(NO_NETWORK_FLAGS if offline else ())):
        options.add_argument(flag)
    options.add_argument(f"--window-size={size[0]},{size[1]}")
    # The page's console, so that a test can say no script failed; offline, its network events.
    logs = {"browser": "ALL", **({"performance": "ALL"} if offline else {})}
    options.set_capability("goog:loggingPrefs", logs)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        service = Service(executable_path=str(CHROMEDRIVER))
        driver = webdriver.Chrome(options=options, service=service)
        try:
            yield driver
        finally:
            driver.quit()


def wait_until(driver, condition: Callable, what: str, timeout_s: float = WAIT_S):
    """WebDriverWait for `condition(driver)` to be truthy; returns its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=POLL_S).until(
        condition, f"timed out after {timeout_s} s waiting for {what}"
    )


def console_errors(driver) -> list[str]:
    """The page's console errors since the last call (a failed script, a refused resource)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def requested_urls(driver) -> list[str]:
    """Every URL the page asked for since the last call (DevTools' Network.requestWillBeSent in
    the performance log of a `chromium(offline=True)`), whether or not it was answered."""
    events = (json.loads(entry["message"])["message"] for entry in driver.get_log("performance"))
    return [
        event["params"]["request"]["url"]
        for event in events
        if event["method"] == "Network.requestWillBeSent"
    ]


# --- the `reward-service feedback` commands and the app's server -----------------------------


def feedback_command(*args: str) -> str:
    """Runs `reward-service feedback ARGS...` in this process (its real entry point); returns
    what it printed. Fails the test on a non-zero exit, with what it wrote to stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = reward_service_main(["feedback", *args])
    assert status == 0, (
        f"reward-service feedback {' '.join(args)} exited {status}: {err.getvalue()}"
    )
    return out.getvalue()


@dataclass
class FeedbackServer:
    """`reward-service feedback serve` in a subprocess on a loopback port, as a user runs it."""

    db: str
    admin_key: str
    log_dir: Path
    args: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"feedback-{self.port}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self) -> FeedbackServer:
        """Starts it (again, on the same port and database, after a stop or a kill) and waits
        until it answers."""
        command = [sys.executable, "-m", "reward_service.cli", "feedback", "serve"]
        command += ["--db", self.db, "--port", str(self.port), *self.args]
        # The key in the environment, not in the process list, as a user is told to.
        env = {**os.environ, "REWARD_FEEDBACK_ADMIN_KEY": self.admin_key, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
            )

        def answering() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"feedback server exited {self.process.returncode}:\n{self.log()}"
                )
            try:
                return httpx.get(f"{self.url}/health", timeout=HTTP_TIMEOUT_S).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answering, f"the feedback server at {self.url} to answer")
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a machine loses power."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def admin(self) -> httpx.Client:
        """An HTTP client carrying the admin key."""
        return httpx.Client(
            base_url=self.url, headers={"X-Admin-Key": self.admin_key}, timeout=HTTP_TIMEOUT_S
        )

    def rater(self, invitation_url: str) -> httpx.Client:
        """An HTTP client signed in as a rater: it opened its invitation link."""
        client = httpx.Client(base_url=self.url, timeout=HTTP_TIMEOUT_S)
        response = client.get(invitation_url)
        assert response.status_code == 200, response.text
        return client
