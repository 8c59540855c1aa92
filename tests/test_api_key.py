"""`serve --api-key`: REST and gRPC need the key as a bearer token, except health and metrics."""

from __future__ import annotations

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reward_service.auth import is_authorized
from reward_service.client import RewardClient, Unauthorized
from reward_service.config import ServeSettings

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def server(server_factory, tiny_model_factory):
    folder = tiny_model_factory("api-key", labels=["NEGATIVE", "POSITIVE"])
    return server_factory(["--model", f"m={folder}", "--api-key", KEY])


def test_the_client_with_the_key_scores(server):
    with RewardClient(server.url, api_key=KEY) as client:
        assert len(client.score(texts=["a", "b"])) == 2


@pytest.mark.parametrize("api_key", [None, "wrong-key"])
def test_a_missing_or_wrong_key_is_unauthorized_at_once(server, api_key):
    client = RewardClient(server.url, api_key=api_key, max_retries=50)
    with client, pytest.raises(Unauthorized) as raised:
        client.score(texts=["a"])
    assert raised.value.status == 401


@pytest.mark.parametrize("route", ["/v1/models", "/docs", "/get_reward"])
def test_every_other_route_needs_the_key(server, route):
    response = httpx.get(f"{server.url}{route}") if route != "/get_reward" else httpx.post(
        f"{server.url}{route}", json={"query": ["a"]}
    )  # fmt: skip
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["type"] == "unauthorized"


@pytest.mark.parametrize("api_key", [KEY, None, "wrong-key"])
def test_grpc_needs_the_key_in_metadata(server, api_key):
    with RewardClient(f"grpc://{server.grpc_target}", api_key=api_key, max_retries=50) as client:
        if api_key == KEY:
            assert len(client.score(texts=["a", "b"])) == 2
        else:
            with pytest.raises(Unauthorized):
                client.score(texts=["a"])


def test_grpc_health_needs_no_key(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_probes_and_metrics_need_no_key(server):
    for route in ["/health/live", "/health/ready", "/metrics"]:
        assert httpx.get(f"{server.url}{route}").status_code == 200


def test_the_key_is_compared_as_a_bearer_token():
    assert is_authorized(f"Bearer {KEY}", KEY)
    assert is_authorized(f"bearer {KEY}", KEY)
    assert not is_authorized(KEY, KEY)  # no scheme
    assert not is_authorized(f"Basic {KEY}", KEY)
    assert not is_authorized(f"Bearer {KEY}x", KEY)
    assert not is_authorized(None, KEY)


def test_the_key_may_come_from_reward_service_api_key(monkeypatch):
    monkeypatch.setenv("REWARD_SERVICE_API_KEY", KEY)
    settings = ServeSettings()
    assert settings.api_key.get_secret_value() == KEY
    assert KEY not in repr(settings)  # never printed with the settings
