"""The Open Inference Protocol (KServe v2) over REST, against a real `reward-service serve` on a
loopback port, with Triton's own client (`tritonclient.http`, unchanged: its binary tensor data
by default, and JSON tensors), and raw HTTP where the protocol's exact bytes are the point.

Rewards are compared with /v1/score's for the same inputs to abs=1e-5: the v2 output is FP32
(a float32 keeps 24 bits: at most ~3e-7 off for the rewards of |r| < 10 these tiny models give),
and the same item's reward can differ by ~1e-7 with what shares its batch.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from helpers import HTTP_TIMEOUT_S, metric, wait_for
from tritonclient.utils import InferenceServerException

TEXTS = ["great movie", "a dull, lifeless film", "I would watch it again tomorrow!", "meh"]
PROMPTS = ["Review: ", "Q: was it good?\nA:", "Tell me about it. "]
COMPLETIONS = ["loved every minute", " no, it was tedious", "It is a film."]
MAX_ITEMS = 8
API_KEY = "kserve-test-key"


@pytest.fixture(scope="module")
def server(server_factory, tiny_model_factory):
    """Two models, so that the path's model name is seen to choose."""
    first = tiny_model_factory(
        "kserve-first", labels=["NEGATIVE", "POSITIVE"], reward_config={"preset": "sentiment"}
    )
    second = tiny_model_factory(
        "kserve-second",
        labels=["NEGATIVE", "POSITIVE"],
        reward_config={"preset": "sentiment"},
        seed=1,
    )
    return server_factory(
        [
            "--model",
            f"first={first}",
            "--model",
            f"second={second}",
            f"--max-items-per-request={MAX_ITEMS}",
        ]
    )


@pytest.fixture(scope="module")
def keyed_server(server_factory, tiny_model_factory):
    folder = tiny_model_factory(
        "kserve-first", labels=["NEGATIVE", "POSITIVE"], reward_config={"preset": "sentiment"}
    )
    return server_factory(["--model", f"first={folder}", "--api-key", API_KEY])


def triton_client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(
        url=server.url.removeprefix("http://"),
        connection_timeout=HTTP_TIMEOUT_S,
        network_timeout=HTTP_TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def client(server):
    client = triton_client(server)
    yield client
    client.close()


def bytes_input(name: str, strings: list[str], *, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput(name, [len(strings)], "BYTES")
    tensor.set_data_from_numpy(np.array([s.encode() for s in strings], dtype=object), binary)
    return tensor


def v1_score(server, model: str, **items) -> dict:
    response = httpx.post(
        f"{server.url}/v1/score", json={"model": model, **items}, timeout=HTTP_TIMEOUT_S
    )
    assert response.status_code == 200, response.text
    return response.json()


def infer_raw(server, body: bytes, model: str = "first", headers: dict | None = None):
    return httpx.post(
        f"{server.url}/v2/models/{model}/infer",
        content=body,
        headers=headers or {},
        timeout=HTTP_TIMEOUT_S,
    )


def test_server_metadata_names_the_server_and_the_binary_tensor_data_extension(client):
    metadata = client.get_server_metadata()
    assert metadata["name"] == "reward-service"
    assert metadata["version"]
    assert metadata["extensions"] == ["binary_tensor_data"]


def test_model_metadata_gives_the_inputs_and_outputs_with_datatypes_and_shapes(client):
    metadata = client.get_model_metadata("first")
    assert metadata["name"] == "first"
    assert metadata["platform"] == "pytorch_transformers"
    assert metadata["inputs"] == [
        {"name": "texts", "datatype": "BYTES", "shape": [-1]},
        {"name": "prompts", "datatype": "BYTES", "shape": [-1]},
        {"name": "completions", "datatype": "BYTES", "shape": [-1]},
    ]
    assert metadata["outputs"] == [
        {"name": "rewards", "datatype": "FP32", "shape": [-1]},
        {"name": "logits", "datatype": "FP32", "shape": [-1, 2]},
    ]


def test_the_server_and_each_served_model_are_live_and_ready(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("first") and client.is_model_ready("second")


def test_an_unknown_model_is_not_ready_and_its_metadata_is_a_404(client, server):
    assert not client.is_model_ready("nope")
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_metadata("nope")
    assert raised.value.status() == "404"
    assert "'first', 'second'" in raised.value.message()
    response = httpx.get(f"{server.url}/v2/models/nope/ready", timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 404 and set(response.json()) == {"error"}


@pytest.mark.parametrize("binary_inputs", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_outputs", [True, False], ids=["binary-out", "json-out"])
def test_texts_score_as_v1_score_does(client, server, binary_inputs, binary_outputs):
    result = client.infer(
        "first",
        [bytes_input("texts", TEXTS, binary=binary_inputs)],
        outputs=[triton.InferRequestedOutput("rewards", binary_data=binary_outputs)],
    )
    rewards = result.as_numpy("rewards")
    assert rewards.dtype == np.float32 and rewards.shape == (len(TEXTS),)
    expected = v1_score(server, "first", texts=TEXTS)["rewards"]
    assert rewards.tolist() == pytest.approx(expected, abs=1e-5)
    output = result.get_output("rewards")
    assert ("binary_data_size" in output.get("parameters", {})) is binary_outputs


def test_tritonclients_defaults_binary_everything_score_texts(client, server):
    """No outputs named: tritonclient asks for every output as binary data; rewards come."""
    result = client.infer("first", [bytes_input("texts", TEXTS)])
    assert [output["name"] for output in result.get_response()["outputs"]] == ["rewards"]
    expected = v1_score(server, "first", texts=TEXTS)["rewards"]
    assert result.as_numpy("rewards").tolist() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_prompt_completion_pairs_score_as_v1_score_does(client, server, binary):
    inputs = [
        bytes_input("prompts", PROMPTS, binary=binary),
        bytes_input("completions", COMPLETIONS, binary=binary),
    ]
    rewards = client.infer("first", inputs).as_numpy("rewards")
    expected = v1_score(server, "first", prompts=PROMPTS, completions=COMPLETIONS)["rewards"]
    assert rewards.tolist() == pytest.approx(expected, abs=1e-5)


def test_the_logits_output_when_asked_equals_v1_scores_raw(client, server):
    outputs = [triton.InferRequestedOutput("rewards"), triton.InferRequestedOutput("logits")]
    result = client.infer("first", [bytes_input("texts", TEXTS)], outputs=outputs)
    logits = result.as_numpy("logits").reshape(result.get_output("logits")["shape"])
    expected = v1_score(server, "first", texts=TEXTS, return_raw=True)
    assert logits.shape == (len(TEXTS), 2)
    assert logits.ravel().tolist() == pytest.approx(np.ravel(expected["raw"]).tolist(), abs=1e-5)
    assert result.as_numpy("rewards").tolist() == pytest.approx(expected["rewards"], abs=1e-5)


def test_the_model_named_in_the_path_scores(client, server):
    second = client.infer("second", [bytes_input("texts", TEXTS)]).as_numpy("rewards")
    assert second.tolist() == pytest.approx(
        v1_score(server, "second", texts=TEXTS)["rewards"], abs=1e-5
    )
    first = v1_score(server, "first", texts=TEXTS)["rewards"]
    assert second.tolist() != pytest.approx(first, abs=1e-3)  # two seeds: other rewards


def test_an_n_by_1_input_scores_like_a_flat_one_and_the_request_id_comes_back(client, server):
    tensor = triton.InferInput("texts", [len(TEXTS), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t.encode()] for t in TEXTS], dtype=object))
    result = client.infer("first", [tensor], request_id="42")
    assert result.get_response()["id"] == "42"
    expected = v1_score(server, "first", texts=TEXTS)["rewards"]
    assert result.as_numpy("rewards").tolist() == pytest.approx(expected, abs=1e-5)


def test_a_json_request_gets_the_protocols_json_response(server):
    body = {
        "id": "7",
        "inputs": [{"name": "texts", "shape": [2], "datatype": "BYTES", "data": TEXTS[:2]}],
    }
    response = infer_raw(server, json.dumps(body).encode())
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    answer = response.json()
    (output,) = answer.pop("outputs")
    assert answer == {"model_name": "first", "id": "7"}
    assert {key: output[key] for key in ("name", "shape", "datatype")} == {
        "name": "rewards",
        "shape": [2],
        "datatype": "FP32",
    }
    expected = v1_score(server, "first", texts=TEXTS[:2])["rewards"]
    assert output["data"] == pytest.approx(expected, abs=1e-5)


def test_a_binary_response_gives_the_json_length_in_inference_header_content_length(server):
    body = {
        "inputs": [{"name": "texts", "shape": [2], "datatype": "BYTES", "data": TEXTS[:2]}],
        "parameters": {"binary_data_output": True},
    }
    response = infer_raw(server, json.dumps(body).encode())
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8}
    rewards = np.frombuffer(response.content[length:], dtype="<f4")
    expected = v1_score(server, "first", texts=TEXTS[:2])["rewards"]
    assert rewards.tolist() == pytest.approx(expected, abs=1e-5)


def wrong_datatype() -> list[triton.InferInput]:
    tensor = triton.InferInput("texts", [2], "FP32")
    tensor.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
    return [tensor]


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        (wrong_datatype, None, "input 'texts' must be BYTES (UTF-8 strings), got FP32"),
        (
            lambda: [bytes_input("prompts", PROMPTS), bytes_input("completions", COMPLETIONS[:2])],
            None,
            "3 prompts for 2 completions: they must pair one to one",
        ),
        (
            lambda: [bytes_input("text", TEXTS)],
            None,
            "unknown input 'text': this server takes 'texts', or 'prompts' with 'completions'",
        ),
        (
            lambda: [bytes_input("prompts", PROMPTS)],
            None,
            "prompts and completions must be sent together",
        ),
        (
            lambda: [bytes_input("texts", TEXTS), bytes_input("prompts", PROMPTS)],
            None,
            "send either texts or prompts + completions, not both",
        ),
        (
            lambda: [bytes_input("texts", TEXTS)],
            lambda: [triton.InferRequestedOutput("scores")],
            "unknown output 'scores': this server answers 'rewards' and 'logits'",
        ),
    ],
    ids=["datatype", "unequal-pairs", "input-name", "prompts-alone", "texts-and-pairs", "output"],
)
def test_a_bad_request_is_a_400_with_the_protocols_error_and_the_server_keeps_serving(
    client, server, inputs, outputs, message
):
    with pytest.raises(InferenceServerException) as raised:
        client.infer("first", inputs(), outputs=outputs() if outputs else None)
    assert raised.value.status() == "400"
    assert raised.value.message() == message
    assert client.infer("first", [bytes_input("texts", TEXTS)]).as_numpy("rewards").shape == (4,)


def test_an_unknown_model_is_a_404_naming_the_served_ones(client):
    with pytest.raises(InferenceServerException) as raised:
        client.infer("nope", [bytes_input("texts", TEXTS)])
    assert raised.value.status() == "404"
    assert raised.value.message() == "no model named 'nope'; this server has 'first', 'second'"


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b"{not json", {}, "the request is not valid JSON: key must be a string"),
        (
            json.dumps(
                {"inputs": [{"name": "texts", "shape": [3], "datatype": "BYTES", "data": ["a"]}]}
            ).encode(),
            {},
            "input 'texts' has shape [3] but 1 elements",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "texts", "shape": [1, 2], "datatype": "BYTES", "data": ["a"]}]}
            ).encode(),
            {},
            "input 'texts' has shape [1, 2]; it must be [N] or [N, 1]",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "texts", "shape": [1], "datatype": "BYTES", "data": [1]}]}
            ).encode(),
            {},
            "input 'texts': BYTES data must be strings",
        ),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "99"}, "the body has 14 bytes"),
        (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "texts",
                            "shape": [1],
                            "datatype": "BYTES",
                            "parameters": {"binary_data_size": 9},
                        }
                    ]
                }
            ).encode(),
            {},
            "binary_data_size 9 runs past the 0 bytes of binary data",
        ),
    ],
    ids=["not-json", "count-vs-shape", "shape", "not-strings", "header-length", "binary-size"],
)
def test_a_malformed_tensor_request_is_a_400_error_object(server, body, headers, message):
    response = infer_raw(server, body, headers=headers)
    assert response.status_code == 400
    assert set(response.json()) == {"error"} and message in response.json()["error"]


def test_the_servers_item_limit_holds_with_its_413(client):
    with pytest.raises(InferenceServerException) as raised:
        client.infer("first", [bytes_input("texts", ["x"] * (MAX_ITEMS + 1))])
    assert raised.value.status() == "413"
    assert f"this server takes at most {MAX_ITEMS}" in raised.value.message()


def test_the_timeout_parameter_is_a_deadline_that_drops_the_items_with_504(client, server):
    """1 microsecond has passed long before the tokenized items reach the queue's planner."""
    expired_before = metric(server, "reward_items_expired_total", model="first")
    with pytest.raises(InferenceServerException) as raised:
        client.infer("first", [bytes_input("texts", TEXTS)], timeout=1)
    assert raised.value.status() == "504"
    assert metric(server, "reward_items_expired_total", model="first") == expired_before + 4


def test_v2_requests_are_counted_in_the_servers_metrics(client, server):
    route = "/v2/models/{name}/infer"
    before = metric(server, "reward_requests_total", transport="http", route=route, status="200")
    client.infer("first", [bytes_input("texts", TEXTS)])
    # Counted once the answer is sent, which the client may see first: polled, not timed.
    wait_for(
        lambda: (
            metric(server, "reward_requests_total", transport="http", route=route, status="200")
            == before + 1
        ),
        "the infer request in reward_requests_total",
    )


def test_with_an_api_key_v2_health_stays_open_and_the_rest_needs_the_key(keyed_server):
    client = triton_client(keyed_server)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert not client.is_model_ready("first")  # 401 without the key
        with pytest.raises(InferenceServerException) as raised:
            client.infer("first", [bytes_input("texts", TEXTS)])
        assert raised.value.status() == "401"
        key = {"Authorization": f"Bearer {API_KEY}"}
        assert client.is_model_ready("first", headers=key)
        result = client.infer("first", [bytes_input("texts", TEXTS)], headers=key)
        assert result.as_numpy("rewards").shape == (len(TEXTS),)
    finally:
        client.close()
