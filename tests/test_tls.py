"""TLS on both transports, with a certificate made here for 127.0.0.1 by a throwaway CA
(trustme): the client scores over https:// and grpcs://, a plaintext client is refused on
both ports, and a client that does not trust the CA refuses the server."""

from __future__ import annotations

import grpc
import httpx
import pytest
import trustme
from helpers import HTTP_TIMEOUT_S
from load_report import Tally

from reward_service.client import RewardClient
from reward_service.client.errors import UntrustedServer
from reward_service.grpc_gen import reward_pb2, reward_pb2_grpc

TEXTS = ["a fine film", "a dull one"]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    files = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    authority.cert_pem.write_to_path(files["ca"])
    issued.private_key_pem.write_to_path(files["key"])
    # The chain a server sends: its certificate, then any intermediates.
    files["cert"].write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    return files


@pytest.fixture(scope="module")
def server(server_factory, tiny_model_factory, certificates):
    folder = tiny_model_factory(
        "tls", labels=["NEGATIVE", "POSITIVE"], reward_config={"preset": "sentiment"}
    )
    return server_factory(
        [
            "--model",
            f"m={folder}",
            "--ssl-certfile",
            str(certificates["cert"]),
            "--ssl-keyfile",
            str(certificates["key"]),
        ],
        ca_file=certificates["ca"],
    )


def test_the_client_scores_over_https_and_grpcs_alike(server, certificates):
    grpcs = f"grpcs://{server.grpc_target}"
    with RewardClient(server.url, ca_file=certificates["ca"]) as https_client:
        over_https = https_client.score(texts=TEXTS)
    with RewardClient(grpcs, ca_file=certificates["ca"]) as grpcs_client:
        over_grpcs = grpcs_client.score(texts=TEXTS)
    assert server.url.startswith("https://")
    assert over_https == pytest.approx(over_grpcs, abs=1e-6)


def test_plaintext_clients_are_refused_on_both_ports(server, certificates, load_report):
    with pytest.raises(httpx.TransportError):
        httpx.post(
            f"http://127.0.0.1:{server.port}/v1/score",
            json={"texts": TEXTS},
            timeout=HTTP_TIMEOUT_S,
        )
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Score(reward_pb2.ScoreRequest(texts=TEXTS), timeout=HTTP_TIMEOUT_S)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with RewardClient(server.url, ca_file=certificates["ca"]) as client:
        assert len(client.score(texts=TEXTS)) == len(TEXTS)
    load_report.record(
        Tally(
            "TLS on both ports",
            "a plaintext REST request and gRPC call, then a verified https:// one",
            admitted=1,
            refused=2,
        )
    )


@pytest.mark.parametrize("trusted", ["the system's CAs", "another CA"])
@pytest.mark.parametrize("scheme", ["https", "grpcs"])
def test_a_client_that_does_not_trust_the_certificate_refuses_the_server_at_once(
    server, scheme, trusted, tmp_path
):
    url = server.url if scheme == "https" else f"grpcs://{server.grpc_target}"
    ca_file = None
    if trusted == "another CA":
        ca_file = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(ca_file)
    # The default retry budget: a refusal that were retried would end, minutes later, as
    # Unavailable rather than as UntrustedServer.
    with RewardClient(url, ca_file=ca_file) as client, pytest.raises(UntrustedServer) as refused:
        client.score(texts=TEXTS)
    assert "ca_file" in str(refused.value)


@pytest.mark.parametrize("scheme", ["https", "grpcs"])
def test_the_trainers_reward_scores_over_tls_with_its_ca_file(server, certificates, scheme):
    from policy_trainer.rollout import RemoteReward

    url = server.url if scheme == "https" else f"grpcs://{server.grpc_target}"
    reward = RemoteReward(url, inputs="text", ca_file=certificates["ca"])
    try:
        assert len(reward(["a prompt, "] * 2, ["fine", "dull"])) == 2
        assert reward.describe()["name"] == "m"
    finally:
        reward.close()
