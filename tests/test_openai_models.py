"""GET /v1/models read by the OpenAI SDK (the `openai` package, unchanged, offline: its base URL
on a real `reward-service serve` on loopback), beside our own `models` field and client."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from helpers import HTTP_TIMEOUT_S

from reward_service.client import RewardClient

API_KEY = "openai-test-key"


@pytest.fixture(scope="module")
def folder(tiny_model_factory):
    return tiny_model_factory(
        "openai-models", labels=["NEGATIVE", "POSITIVE"], reward_config={"preset": "sentiment"}
    )


@pytest.fixture(scope="module")
def server(server_factory, folder):
    return server_factory(["--model", f"first={folder}", "--model", f"second={folder}"])


def sdk(url: str, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=HTTP_TIMEOUT_S
    )


def test_the_openai_sdk_lists_the_served_models(server):
    started = int(time.time())
    with sdk(server.url, api_key="any string") as client:
        models = list(client.models.list())
    assert [model.id for model in models] == ["first", "second"]
    for model in models:
        assert model.object == "model" and model.owned_by == "reward-service"
        # When this server started serving: before this test began, and a real Unix time.
        assert 1_600_000_000 < model.created <= started


def test_the_openai_fields_sit_beside_our_own_models_which_our_client_still_reads(server):
    body = httpx.get(f"{server.url}/v1/models", timeout=HTTP_TIMEOUT_S).json()
    assert body["object"] == "list"
    assert [card["id"] for card in body["data"]] == [info["name"] for info in body["models"]]
    with RewardClient(server.url) as client:
        assert client.list_models() == body["models"]


def test_the_sdks_bearer_key_is_the_servers_api_key(server_factory, folder):
    keyed = server_factory(["--model", f"first={folder}", "--api-key", API_KEY])
    with sdk(keyed.url, api_key=API_KEY) as client:
        assert [model.id for model in client.models.list()] == ["first"]
    with sdk(keyed.url, api_key="wrong-key") as client, pytest.raises(openai.AuthenticationError):
        client.models.list()
