"""Request limits and model safety against a real server: body size (413, refused unread), items
per request, characters per item (refused, never truncated), gRPC message size; and model names
in requests that try to reach the filesystem, and remote code in a model folder."""

from __future__ import annotations

import json
import re
import shutil
import socket

import grpc
import httpx
import pytest
from helpers import HTTP_TIMEOUT_S, REPO_ROOT, positive_logits
from pydantic import ValidationError

from reward_service.client import RewardClient
from reward_service.engine.limits import BatchingConfig
from reward_service.grpc_gen import reward_pb2, reward_pb2_grpc
from reward_service.model.loading import load_model
from reward_service.model.spec import ModelSpec
from reward_service.serving.settings import ServeSettings

MAX_BODY_BYTES = 65536
MAX_ITEMS = 8
MAX_CHARS = 1000
MAX_REQUEST_CHARS = 4000
GRPC_MAX_MESSAGE_BYTES = 65536


@pytest.fixture(scope="module")
def folder(tiny_model_factory):
    return tiny_model_factory(
        "request-limits", labels=["NEGATIVE", "POSITIVE"], reward_config={"preset": "sentiment"}
    )


@pytest.fixture(scope="module")
def server(server_factory, folder):
    return server_factory(
        [
            "--model",
            f"m={folder}",
            f"--max-body-bytes={MAX_BODY_BYTES}",
            f"--max-items-per-request={MAX_ITEMS}",
            f"--max-chars-per-item={MAX_CHARS}",
            f"--max-chars-per-request={MAX_REQUEST_CHARS}",
            f"--grpc-max-message-bytes={GRPC_MAX_MESSAGE_BYTES}",
        ]
    )


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield reward_pb2_grpc.RewardServiceStub(channel)


def post_score(server, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/score", json=body, timeout=HTTP_TIMEOUT_S)


def grpc_failure(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as failure:
        call(request, timeout=HTTP_TIMEOUT_S)
    return failure.value


def assert_still_serving(server, folder) -> None:
    response = post_score(server, {"texts": ["still serving"]})
    assert response.status_code == 200
    assert response.json()["rewards"] == pytest.approx(
        [positive_logits(folder, ["still serving"])["still serving"]], abs=1e-4
    )


# -- request body size ----------------------------------------------------------------------------


def test_a_body_declared_over_the_limit_gets_413_before_a_byte_of_it_is_read(server, folder):
    # 10 GB announced and none sent: a server that read the body first would never answer.
    with socket.create_connection(("127.0.0.1", server.port), timeout=HTTP_TIMEOUT_S) as connection:
        connection.sendall(
            b"POST /v1/score HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000000\r\n\r\n"
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = connection.recv(65536)  # raises TimeoutError if the server waits for the body
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert error["type"] == "body_too_large"
    assert "10000000000 bytes" in error["message"] and str(MAX_BODY_BYTES) in error["message"]
    assert_still_serving(server, folder)


def test_a_chunked_body_over_the_limit_gets_413(server, folder):
    def chunks():  # no Content-Length: the size shows only while reading
        for _ in range(3):
            yield b" " * 30000

    response = httpx.post(
        f"{server.url}/v1/score",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=HTTP_TIMEOUT_S,
    )

    assert response.status_code == 413
    assert response.json()["error"]["type"] == "body_too_large"
    assert_still_serving(server, folder)


def test_a_chunked_body_under_the_limit_is_scored_as_sent(server, folder):
    texts = ["chunked " * 40, "second item"]
    payload = json.dumps({"texts": texts}).encode()

    def chunks():
        for start in range(0, len(payload), 100):
            yield payload[start : start + 100]

    response = httpx.post(
        f"{server.url}/v1/score",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=HTTP_TIMEOUT_S,
    )

    assert response.status_code == 200, response.text
    expected = positive_logits(folder, texts)
    assert response.json()["rewards"] == pytest.approx([expected[t] for t in texts], abs=1e-4)


def test_a_body_that_is_not_utf8_json_is_invalid_request_in_the_api_error_format(server, folder):
    response = httpx.post(
        f"{server.url}/v1/score",
        content=b'{"texts": ["\xff\xfe"]}',
        headers={"content-type": "application/json"},
        timeout=HTTP_TIMEOUT_S,
    )

    assert response.status_code == 422
    assert response.json()["error"]["type"] == "invalid_request"
    assert "UTF-8" in response.json()["error"]["message"]
    assert_still_serving(server, folder)


def test_an_unknown_route_answers_in_the_api_error_format(server):
    response = httpx.get(f"{server.url}/v1/nothing-here", timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


# -- items per request ----------------------------------------------------------------------------


def test_too_many_items_is_413_on_rest_and_invalid_argument_on_grpc(server, stub, folder):
    texts = ["an item"] * (MAX_ITEMS + 1)

    response = post_score(server, {"texts": texts})
    failure = grpc_failure(stub.Score, reward_pb2.ScoreRequest(texts=texts))

    assert response.status_code == 413
    assert response.json()["error"]["type"] == "too_many_items"
    assert f"at most {MAX_ITEMS}" in response.json()["error"]["message"]
    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_ITEMS}" in failure.details()
    assert post_score(server, {"texts": texts[:MAX_ITEMS]}).status_code == 200


def test_openrlhf_route_has_the_same_item_limit(server):
    response = httpx.post(
        f"{server.url}/get_reward", json={"query": ["q"] * (MAX_ITEMS + 1)}, timeout=HTTP_TIMEOUT_S
    )
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "too_many_items"


# -- characters per item --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"texts": ["fine", "x" * (MAX_CHARS + 1)]},
        {"prompts": ["p" * 600, "ok"], "completions": ["c" * 401, "ok"]},  # 1001 together
    ],
    ids=["text", "prompt+completion"],
)
def test_an_item_over_the_character_limit_is_refused_not_truncated(server, stub, folder, body):
    response = post_score(server, body)
    failure = grpc_failure(stub.Score, reward_pb2.ScoreRequest(**body))

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "item_too_long"
    assert "item 0" in error["message"] or "item 1" in error["message"]
    assert f"at most {MAX_CHARS}" in error["message"]
    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_CHARS}" in failure.details()
    assert_still_serving(server, folder)


def test_an_item_of_exactly_the_character_limit_is_scored(server, stub):
    texts = ["y" * MAX_CHARS]
    assert post_score(server, {"texts": texts}).status_code == 200
    assert (
        len(stub.Score(reward_pb2.ScoreRequest(texts=texts), timeout=HTTP_TIMEOUT_S).rewards) == 1
    )


# -- characters per request -----------------------------------------------------------------------


def request_of_many_characters() -> list[str]:
    """Five items of 900 characters: each within the item limit, 4,500 together."""
    return [f"review {index} " + "the film was good " * 49 for index in range(5)]


def test_a_request_over_the_character_budget_is_413_and_invalid_argument(server, stub, folder):
    texts = request_of_many_characters()

    response = post_score(server, {"texts": texts})
    failure = grpc_failure(stub.Score, reward_pb2.ScoreRequest(texts=texts))

    assert response.status_code == 413
    assert response.json()["error"]["type"] == "too_many_characters"
    assert f"at most {MAX_REQUEST_CHARS}" in response.json()["error"]["message"]
    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(failure.trailing_metadata())["reward-error-type"] == "too_many_characters"
    assert_still_serving(server, folder)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_the_client_splits_a_request_over_the_character_budget(server, transport):
    texts = request_of_many_characters()
    url = server.url if transport == "http" else f"grpc://{server.grpc_target}"
    with RewardClient(url) as client:
        rewards = client.score(texts=texts)
        assert client.items_per_request == 256  # a budget of characters says nothing of items
    one_by_one = [post_score(server, {"texts": [text]}).json()["rewards"][0] for text in texts]
    assert rewards == pytest.approx(one_by_one, abs=1e-4)


def test_an_item_limit_over_the_request_budget_is_refused_at_start():
    with pytest.raises(ValidationError, match="must not exceed max_chars_per_request"):
        BatchingConfig(max_chars_per_item=5000, max_chars_per_request=4000)


# -- gRPC message size ----------------------------------------------------------------------------


def test_a_grpc_message_over_the_limit_is_resource_exhausted(server, stub, folder):
    request = reward_pb2.ScoreRequest(texts=["z" * (GRPC_MAX_MESSAGE_BYTES + 1)])

    failure = grpc_failure(stub.Score, request)

    assert failure.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(GRPC_MAX_MESSAGE_BYTES) in failure.details()
    assert (
        len(stub.Score(reward_pb2.ScoreRequest(texts=["fits"]), timeout=HTTP_TIMEOUT_S).rewards)
        == 1
    )


# -- documented defaults ------------------------------------------------------------------------


def readme_limit_defaults() -> dict[str, str]:
    """The README's limits table: flag -> default as written."""
    readme = (REPO_ROOT / "README.md").read_text()
    return dict(re.findall(r"^\| `--([a-z-]+)` \| ([^|]+?) \|", readme, flags=re.MULTILINE))


@pytest.mark.parametrize(
    ("flag", "default"),
    [
        ("max-body-bytes", ServeSettings.model_fields["max_body_bytes"].default),
        (
            "max-body-bytes-in-flight",
            ServeSettings.model_fields["max_body_bytes_in_flight"].default,
        ),
        ("grpc-max-message-bytes", ServeSettings.model_fields["grpc_max_message_bytes"].default),
        ("max-items-per-request", BatchingConfig.model_fields["max_items_per_request"].default),
        ("max-chars-per-item", BatchingConfig.model_fields["max_chars_per_item"].default),
        ("max-chars-per-request", BatchingConfig.model_fields["max_chars_per_request"].default),
        ("max-queue-items", BatchingConfig.model_fields["max_queue_items"].default),
        ("max-connections", ServeSettings.model_fields["max_connections"].default),
        ("timeout-request-start-s", ServeSettings.model_fields["timeout_request_start_s"].default),
        (
            "timeout-request-complete-s",
            ServeSettings.model_fields["timeout_request_complete_s"].default,
        ),
        (
            "grpc-max-concurrent-rpcs",
            ServeSettings.model_fields["grpc_max_concurrent_rpcs"].default,
        ),
        ("grpc-keepalive-s", ServeSettings.model_fields["grpc_keepalive_s"].default),
        ("grpc-max-idle-s", ServeSettings.model_fields["grpc_max_idle_s"].default),
        ("shutdown-grace-s", ServeSettings.model_fields["shutdown_grace_s"].default),
    ],
)
def test_the_readme_documents_each_limit_with_its_default(flag, default):
    documented = readme_limit_defaults()[flag]
    number = documented.replace(",", "").split()[0]  # "16,777,216 (16 MiB)" -> 16777216
    assert float(number) == default


# -- model names and remote code ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../m", "/etc/passwd", "m/../m", "~/m", "./m"])
def test_a_model_name_in_a_request_never_reaches_the_filesystem(server, stub, folder, name):
    for attempt in (name, str(folder)):  # a path, and the served model's own folder
        response = post_score(server, {"model": attempt, "texts": ["a"]})
        failure = grpc_failure(stub.Score, reward_pb2.ScoreRequest(model=attempt, texts=["a"]))

        assert response.status_code == 404
        assert response.json()["error"]["type"] == "model_not_found"
        assert "'m'" in response.json()["error"]["message"]  # names what is served
        assert failure.code() == grpc.StatusCode.NOT_FOUND


def test_remote_code_in_a_model_folder_never_runs_and_the_builtin_class_serves_it(folder, tmp_path):
    marker = tmp_path / "remote-code-ran"
    hostile = tmp_path / "hostile"
    shutil.copytree(folder, hostile)
    (hostile / "hostile_code.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import BertForSequenceClassification, BertConfig, BertTokenizerFast\n"
        "class HostileConfig(BertConfig): pass\n"
        "class HostileModel(BertForSequenceClassification): pass\n"
        "class HostileTokenizer(BertTokenizerFast): pass\n"
    )
    auto_map = {
        "AutoConfig": "hostile_code.HostileConfig",
        "AutoModelForSequenceClassification": "hostile_code.HostileModel",
    }
    config = json.loads((hostile / "config.json").read_text())
    (hostile / "config.json").write_text(json.dumps({**config, "auto_map": auto_map}))
    tokenizer_config = json.loads((hostile / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": [None, "hostile_code.HostileTokenizer"]}
    (hostile / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))

    model = load_model(ModelSpec(name="hostile", source=str(hostile)))

    assert not marker.exists()
    # Served with the library's own classes, which the folder's config names (model_type bert).
    assert type(model.backend.model).__module__.startswith("transformers.models.bert.")
