"""`/docs` on a machine with no network: the reward service's and the ranking app's Swagger UI load
their script, styles and favicon from the server itself (the files `fastapi-offline` ships), so
a headless Chromium that can reach nothing but 127.0.0.1 renders the API's operations and asks
nothing of any other host. With an API key, the page and its files need the key as every other
route does; /redoc is off.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from browser import FeedbackServer, chromium, console_errors, requested_urls, wait_until
from helpers import HTTP_TIMEOUT_S

KEY = "docs-key"
ADMIN_KEY = "docs-admin-key"
DOCS_FILES = ["/docs", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"]
NETWORK_SCHEMES = {"http", "https", "ws", "wss"}
# Swagger UI's block of one operation, around the summary that names its path.
OPERATION_BLOCK = (
    "//*[@data-path='{path}']/ancestor::*[contains(concat(' ', @class, ' '), ' opblock ')][1]"
)


@pytest.fixture(scope="module")
def folder(tiny_model_factory):
    return tiny_model_factory("offline-docs", labels=["NEGATIVE", "POSITIVE"])


@pytest.fixture(scope="module")
def reward_server(server_factory, folder):
    return server_factory(["--model", f"m={folder}"])


@pytest.fixture(scope="module")
def keyed_reward_server(server_factory, folder):
    return server_factory(["--model", f"m={folder}", "--api-key", KEY])


@pytest.fixture(scope="module")
def feedback_server(tmp_path_factory) -> Iterator[FeedbackServer]:
    folder = tmp_path_factory.mktemp("feedback-docs")
    server = FeedbackServer(f"sqlite:///{folder / 'feedback.db'}", ADMIN_KEY, folder).start()
    yield server
    server.stop()


def requests_elsewhere(server_url: str, urls: list[str]) -> list[str]:
    """The URLs among `urls` that went over the network to anywhere but the server. Only these
    schemes leave the browser: data: is inline, and chrome:// is the browser's own new-tab page,
    served from its binary."""
    server = urlsplit(server_url)
    return [
        url.geturl()
        for url in map(urlsplit, urls)
        if url.scheme in NETWORK_SCHEMES
        and (url.scheme, url.netloc) != (server.scheme, server.netloc)
    ]


def render_docs_offline(server_url: str, operation_path: str) -> list[str]:
    """Opens SERVER/docs in a Chromium with no network and waits for Swagger UI to show the
    operation on `operation_path`; fails on any request to another host or any console error.
    Returns every URL the page requested."""
    operation = f'.opblock-summary-path[data-path="{operation_path}"]'
    with chromium(offline=True) as driver:
        driver.get(f"{server_url}/docs")  # returns once the page and its files have loaded
        requested = requested_urls(driver)
        assert requests_elsewhere(server_url, requested) == [], "the page itself"
        wait_until(
            driver,
            lambda driver: driver.find_elements("css selector", operation),
            f"Swagger UI to show the {operation_path} operation at {server_url}/docs",
        )
        # Opened, as a reader does: its parameters and responses render too.
        block = driver.find_element("xpath", OPERATION_BLOCK.format(path=operation_path))
        block.find_element("css selector", ".opblock-summary-control").click()
        wait_until(
            driver,
            lambda driver: block.find_elements("css selector", ".opblock-body .responses-table"),
            f"the {operation_path} operation's responses to show",
        )
        # What Swagger UI fetched once started: the schema, nothing else anywhere else.
        requested += requested_urls(driver)
        assert requests_elsewhere(server_url, requested) == [], "once Swagger UI ran"
        assert console_errors(driver) == []
    return requested


def test_the_reward_service_docs_render_v1_score_with_no_network_from_the_server_alone(
    reward_server,
):
    requested = render_docs_offline(reward_server.url, "/v1/score")
    paths = {urlsplit(url).path for url in requested}
    assert {*DOCS_FILES, "/openapi.json"} <= paths


def test_the_ranking_app_docs_render_its_api_with_no_network_from_the_app_alone(
    feedback_server,
):
    requested = render_docs_offline(feedback_server.url, "/api/campaigns")
    paths = {urlsplit(url).path for url in requested}
    assert {*DOCS_FILES, "/openapi.json"} <= paths


@pytest.mark.parametrize("path", [*DOCS_FILES, "/docs/assets/favicon.png", "/openapi.json"])
def test_with_an_api_key_the_docs_page_and_its_files_need_the_key_like_every_route(
    keyed_reward_server, path
):
    url = f"{keyed_reward_server.url}{path}"
    refused = httpx.get(url, timeout=HTTP_TIMEOUT_S)
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "unauthorized"
    bearer = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(url, headers=bearer, timeout=HTTP_TIMEOUT_S).status_code == 200


def test_redoc_is_off_in_both_apps_so_no_page_loads_from_a_cdn(reward_server, feedback_server):
    for server in (reward_server, feedback_server):
        assert httpx.get(f"{server.url}/redoc", timeout=HTTP_TIMEOUT_S).status_code == 404


def test_the_ranking_app_docs_page_keeps_its_policy_and_the_app_security_headers(
    feedback_server,
):
    headers = httpx.get(f"{feedback_server.url}/docs", timeout=HTTP_TIMEOUT_S).headers
    # One policy (a second would also apply and block Swagger UI's inline start-up script).
    assert len(headers.get_list("content-security-policy")) == 1
    assert "script-src 'self' 'sha256-" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
