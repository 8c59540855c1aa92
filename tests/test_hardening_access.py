"""Access control beyond tests/test_api_key.py: the key is compared in constant time, every gRPC
reward method needs it while reflection stays open, and a server reachable from the network
without a key says so at start."""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from reward_service import auth
from reward_service.grpc_gen import reward_pb2, reward_pb2_grpc
from reward_service.server import exposure_warning, is_loopback

KEY = "hardening-key"
WARNING = "without an API key"


@pytest.fixture(scope="module")
def folder(tiny_model_factory):
    return tiny_model_factory("hardening-access", labels=["NEGATIVE", "POSITIVE"])


@pytest.fixture(scope="module")
def keyed_server(server_factory, folder):
    # Every interface: the warning is about such a server having no key.
    return server_factory(["--model", f"m={folder}", "--host", "0.0.0.0", "--api-key", KEY])


def test_the_key_is_compared_with_hmac_compare_digest(monkeypatch):
    compared = []

    def spy(given: bytes, key: bytes) -> bool:
        compared.append((given, key))
        return given == key

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)

    assert auth.is_authorized(f"Bearer {KEY}", KEY)
    assert not auth.is_authorized("Bearer guess", KEY)
    assert compared == [(KEY.encode(), KEY.encode()), (b"guess", KEY.encode())]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True),
     ("[::1]", True), ("0.0.0.0", False), ("::", False), ("10.1.2.3", False),
     ("rm.internal", False)],
)  # fmt: skip
def test_only_loopback_addresses_count_as_private(host, loopback):
    assert is_loopback(host) is loopback
    assert (exposure_warning(host, has_api_key=False) is None) is loopback
    assert exposure_warning(host, has_api_key=True) is None


def test_a_server_on_every_interface_without_a_key_warns_at_start(server_factory, folder):
    server = server_factory(["--model", f"m={folder}", "--host", "0.0.0.0", "--grpc-port", "0"])
    warnings = [line for line in server.log().splitlines() if WARNING in line]
    assert len(warnings) == 1
    assert "WARNING" in warnings[0] and "--api-key" in warnings[0]


def test_a_server_with_a_key_or_on_loopback_does_not_warn(keyed_server, server_factory, folder):
    on_loopback = server_factory(["--model", f"m={folder}", "--grpc-port", "0"])
    assert WARNING not in keyed_server.log()
    assert WARNING not in on_loopback.log()


@pytest.mark.parametrize("method", ["Score", "ScoreStream", "ListModels"])
def test_every_grpc_reward_method_needs_the_key(keyed_server, method):
    request = reward_pb2.ScoreRequest(texts=["a"])
    with grpc.insecure_channel(keyed_server.grpc_target) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        calls = {
            "Score": lambda metadata: stub.Score(request, metadata=metadata, timeout=10),
            "ScoreStream": lambda metadata: list(
                stub.ScoreStream(iter([request]), metadata=metadata, timeout=10)
            ),
            "ListModels": lambda metadata: stub.ListModels(
                reward_pb2.ListModelsRequest(), metadata=metadata, timeout=10
            ),
        }
        with pytest.raises(grpc.RpcError) as refused:
            calls[method](None)
        with pytest.raises(grpc.RpcError) as wrong_key:
            calls[method]((("authorization", "Bearer not-the-key"),))
        assert calls[method]((("authorization", f"Bearer {KEY}"),))

    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert wrong_key.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_reflection_needs_no_key(keyed_server):
    with grpc.insecure_channel(keyed_server.grpc_target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(stub.ServerReflectionInfo(iter([request]), timeout=10))
    services = {service.name for service in reply.list_services_response.service}
    assert "reward.v1.RewardService" in services
