"""`serve --api-key`: REST and every gRPC reward method need the key as a bearer token (or REST as
a Basic password), compared in constant time; health probes, metrics, gRPC health and reflection
stay open; and a server reachable from the network without a key says so at start."""

from __future__ import annotations

import base64

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import HTTP_TIMEOUT_S
from load_report import Tally

from reward_service.client import RewardClient, Unauthorized
from reward_service.grpc_gen import reward_pb2, reward_pb2_grpc
from reward_service.serving import auth
from reward_service.serving.auth import is_authorized
from reward_service.serving.server import exposure_warning, is_loopback
from reward_service.serving.settings import ServeSettings

KEY = "s3cret-key"
WARNING = "without an API key"


@pytest.fixture(scope="module")
def folder(tiny_model_factory):
    return tiny_model_factory("api-key", labels=["NEGATIVE", "POSITIVE"])


@pytest.fixture(scope="module")
def server(server_factory, folder):
    # On every interface: the start-up warning is about such a server having no key.
    return server_factory(["--model", f"m={folder}", "--host", "0.0.0.0", "--api-key", KEY])


# --- REST -------------------------------------------------------------------------------------


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
    if route == "/get_reward":
        response = httpx.post(f"{server.url}{route}", json={"query": ["a"]}, timeout=HTTP_TIMEOUT_S)
    else:
        response = httpx.get(f"{server.url}{route}", timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["type"] == "unauthorized"


def test_health_probes_and_metrics_need_no_key(server):
    for route in ["/health/live", "/health/ready", "/metrics"]:
        assert httpx.get(f"{server.url}{route}", timeout=HTTP_TIMEOUT_S).status_code == 200


# --- gRPC -------------------------------------------------------------------------------------


@pytest.mark.parametrize("api_key", [KEY, None, "wrong-key"])
def test_grpc_needs_the_key_in_metadata(server, api_key):
    with RewardClient(f"grpc://{server.grpc_target}", api_key=api_key, max_retries=50) as client:
        if api_key == KEY:
            assert len(client.score(texts=["a", "b"])) == 2
        else:
            with pytest.raises(Unauthorized):
                client.score(texts=["a"])


@pytest.mark.parametrize("method", ["Score", "ScoreStream", "ListModels"])
def test_every_grpc_reward_method_needs_the_key(server, method):
    request = reward_pb2.ScoreRequest(texts=["a"])
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        calls = {
            "Score": lambda metadata: stub.Score(
                request, metadata=metadata, timeout=HTTP_TIMEOUT_S
            ),
            "ScoreStream": lambda metadata: list(
                stub.ScoreStream(iter([request]), metadata=metadata, timeout=HTTP_TIMEOUT_S)
            ),
            "ListModels": lambda metadata: stub.ListModels(
                reward_pb2.ListModelsRequest(), metadata=metadata, timeout=HTTP_TIMEOUT_S
            ),
        }
        with pytest.raises(grpc.RpcError) as refused:
            calls[method](None)
        with pytest.raises(grpc.RpcError) as wrong_key:
            calls[method]((("authorization", "Bearer not-the-key"),))
        assert calls[method]((("authorization", f"Bearer {KEY}"),))

    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert wrong_key.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_health_needs_no_key(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=HTTP_TIMEOUT_S
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_reflection_needs_no_key(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(stub.ServerReflectionInfo(iter([request]), timeout=HTTP_TIMEOUT_S))
    services = {service.name for service in reply.list_services_response.service}
    assert "reward.v1.RewardService" in services


# --- the key itself ---------------------------------------------------------------------------


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def test_the_key_is_compared_as_a_bearer_token_or_as_the_password_of_basic_credentials():
    assert is_authorized(f"Bearer {KEY}", KEY)
    assert is_authorized(f"bearer {KEY}", KEY)
    assert is_authorized(basic(f"rm:{KEY}"), KEY)  # http://rm:KEY@host/ (OpenRLHF's remote_url)
    assert is_authorized(basic(f":{KEY}"), KEY)
    assert not is_authorized(KEY, KEY)  # no scheme
    assert not is_authorized(f"Basic {KEY}", KEY)  # not base64 credentials
    assert not is_authorized(basic(KEY), KEY)  # no user:password colon
    assert not is_authorized(basic(f"{KEY}:"), KEY)  # the key is the password, not the user
    assert not is_authorized(basic(f"rm:{KEY}x"), KEY)
    assert not is_authorized(f"Bearer {KEY}x", KEY)
    assert not is_authorized(None, KEY)


def test_the_key_is_compared_with_hmac_compare_digest(monkeypatch):
    compared = []

    def spy(given: bytes, key: bytes) -> bool:
        compared.append((given, key))
        return given == key

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)

    assert is_authorized(f"Bearer {KEY}", KEY)
    assert not is_authorized("Bearer guess", KEY)
    assert compared == [(KEY.encode(), KEY.encode()), (b"guess", KEY.encode())]


def test_the_key_may_come_from_reward_service_api_key(monkeypatch):
    monkeypatch.setenv("REWARD_SERVICE_API_KEY", KEY)
    settings = ServeSettings()
    assert settings.api_key.get_secret_value() == KEY
    assert KEY not in repr(settings)  # never printed with the settings


# --- a server exposed without a key -----------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("rm.internal", False),
    ],
)
def test_only_loopback_addresses_count_as_private(host, loopback):
    assert is_loopback(host) is loopback
    assert (exposure_warning(host, has_api_key=False) is None) is loopback
    assert exposure_warning(host, has_api_key=True) is None


def test_a_server_on_every_interface_without_a_key_makes_one_and_prints_it_once(
    server_factory, folder, load_report
):
    server = server_factory(["--model", f"m={folder}", "--host", "0.0.0.0", "--grpc-port", "0"])
    printed = [line.strip() for line in server.log().splitlines() if line.startswith("    ")]
    assert len(printed) == 1, server.log()
    key = printed[0]
    assert len(key) >= 32
    assert server.log().count(key) == 1
    with RewardClient(server.url, api_key=None) as client, pytest.raises(Unauthorized):
        client.score(texts=["a"])
    with RewardClient(server.url, api_key=key) as client:
        assert len(client.score(texts=["a"])) == 1
    load_report.record(
        Tally(
            "0.0.0.0 without a key",
            "a request without the printed key (401), then one with it",
            admitted=1,
            refused=1,
        )
    )
    assert WARNING not in server.log()


def test_only_an_explicit_flag_serves_every_interface_without_a_key_and_it_warns(
    server_factory, folder
):
    args = ["--model", f"m={folder}", "--host", "0.0.0.0", "--grpc-port", "0"]
    server = server_factory([*args, "--insecure-no-auth"])
    warnings = [line for line in server.log().splitlines() if WARNING in line]
    assert len(warnings) == 1
    assert "WARNING" in warnings[0] and "--insecure-no-auth" in warnings[0]
    with RewardClient(server.url) as client:
        assert len(client.score(texts=["a"])) == 1


def test_the_key_may_come_from_a_file(server_factory, folder, tmp_path):
    key_file = tmp_path / "api-key"
    key_file.write_text(f"{KEY}\n")
    server = server_factory(["--model", f"m={folder}", "--api-key-file", str(key_file)])
    with RewardClient(server.url) as client, pytest.raises(Unauthorized):
        client.score(texts=["a"])
    with RewardClient(server.url, api_key=KEY) as client:
        assert len(client.score(texts=["a"])) == 1


@pytest.mark.parametrize(
    ("contents", "message"),
    [(None, "cannot read an API key"), ("\n", "holds no API key")],
    ids=["missing", "empty"],
)
def test_an_unusable_key_file_is_a_clear_error(tmp_path, contents, message):
    key_file = tmp_path / "api-key"
    if contents is not None:
        key_file.write_text(contents)
    with pytest.raises(ValueError, match=message):
        ServeSettings(api_key_file=key_file).resolved_api_key()


def test_a_key_and_a_key_file_together_are_refused():
    with pytest.raises(ValueError, match="not both"):
        ServeSettings(api_key=KEY, api_key_file="api-key")


def test_model_listings_show_a_local_folder_by_its_name_unless_paths_are_asked_for(
    server, server_factory, folder
):
    def sources(served, **client_options) -> list[str]:
        with RewardClient(served.url, **client_options) as client:
            return [entry["source"] for entry in client.list_models()]

    assert sources(server, api_key=KEY) == [folder.name]
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        listed = stub.ListModels(
            reward_pb2.ListModelsRequest(), metadata=(("authorization", f"Bearer {KEY}"),)
        )
    assert [info.source for info in listed.models] == [folder.name]
    exposed = server_factory(["--model", f"m={folder}", "--expose-model-paths"])
    assert sources(exposed) == [str(folder)]


def test_a_server_with_a_key_or_on_loopback_does_not_warn(server, server_factory, folder):
    on_loopback = server_factory(["--model", f"m={folder}", "--grpc-port", "0"])
    assert WARNING not in server.log()
    assert WARNING not in on_loopback.log()
