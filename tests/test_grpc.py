"""The gRPC transport against a real `reward-service serve` that also serves REST, on loopback.

Both transports hit the same running server, so "gRPC equals REST" means the same engine gave the
same numbers through two front doors.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from helpers import HTTP_TIMEOUT_S, WAIT_S, metric, wait_for

from reward_service.grpc_gen import reward_pb2, reward_pb2_grpc

SERVICE = "reward.v1.RewardService"
SCORE_ROUTE = f"/{SERVICE}/Score"
TEXTS = [
    "great movie",
    "a dull, lifeless film that never finds its rhythm",
    "I would watch it again tomorrow!",
    "word " * 400,  # truncated to the tiny models' 128 positions
]
PROMPTS = ["Review: ", "Q: was it good?\nA:", "Tell me about it. "]
COMPLETIONS = ["loved every minute", " no, it was tedious", "It is a film."]
TOXIC_LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# A deadline the request reaches the queue well within (on loopback: milliseconds), to expire
# while it waits there.
LATE_DEADLINE_S = 5


@pytest.fixture(scope="module")
def folders(tiny_model_factory):
    return {
        "sentiment": tiny_model_factory(
            "grpc-sentiment", labels=["NEGATIVE", "POSITIVE"], reward_config={"preset": "sentiment"}
        ),
        "toxicity": tiny_model_factory(
            "grpc-toxicity",
            labels=TOXIC_LABELS,
            problem_type="multi_label_classification",
            reward_config={"preset": "toxicity"},
            seed=1,
        ),
    }


@pytest.fixture(scope="module")
def server(server_factory, folders):
    models = [arg for name, folder in folders.items() for arg in ("--model", f"{name}={folder}")]
    return server_factory([*models, "--max-items-per-request", "64"])


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield reward_pb2_grpc.RewardServiceStub(channel)


@pytest.fixture(scope="module")
def deterministic(server_factory, folders):
    """The same models, one item per forward pass (docs/serving.md, Determinism): a text's
    reward then never depends on what shares its batch, so two calls can be compared exactly."""
    models = [arg for name, folder in folders.items() for arg in ("--model", f"{name}={folder}")]
    served = server_factory([*models, "--max-batch-size", "1"])
    with grpc.insecure_channel(served.grpc_target) as channel:
        yield served, reward_pb2_grpc.RewardServiceStub(channel)


def rest_score(server, **body) -> dict:
    response = httpx.post(f"{server.url}/v1/score", json=body, timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 200, response.text
    return response.json()


def status_of(call, *args, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as failure:
        call(*args, **kwargs)
    return failure.value.code(), failure.value.details()


# -- Score, ScoreStream, ListModels ---------------------------------------------------------------


@pytest.mark.parametrize("model", ["sentiment", "toxicity"])
@pytest.mark.parametrize("return_raw", [False, True])
def test_score_of_texts_returns_exactly_the_rest_rewards(deterministic, model, return_raw):
    server, stub = deterministic
    rest = rest_score(server, model=model, texts=TEXTS, return_raw=return_raw)

    response = stub.Score(reward_pb2.ScoreRequest(model=model, texts=TEXTS, return_raw=return_raw))

    assert response.model == model
    assert list(response.rewards) == rest["rewards"]
    assert response.truncated == rest["truncated"] == 1
    if return_raw:
        assert [list(row.logits) for row in response.raw] == rest["raw"]
    else:
        assert len(response.raw) == 0


@pytest.mark.parametrize("return_raw", [False, True])
def test_score_of_prompt_completion_pairs_returns_exactly_the_rest_rewards(
    deterministic, return_raw
):
    server, stub = deterministic
    pairs = dict(prompts=PROMPTS, completions=COMPLETIONS, return_raw=return_raw)
    rest = rest_score(server, **pairs)

    response = stub.Score(reward_pb2.ScoreRequest(**pairs))

    assert response.model == "sentiment"  # the first model, as in REST
    assert list(response.rewards) == rest["rewards"]
    if return_raw:
        assert [list(row.logits) for row in response.raw] == rest["raw"]


def test_with_one_item_per_batch_a_texts_reward_is_the_same_whatever_shares_its_request(
    deterministic,
):
    server, stub = deterministic
    alone = [stub.Score(reward_pb2.ScoreRequest(texts=[text])).rewards[0] for text in TEXTS]

    together = list(stub.Score(reward_pb2.ScoreRequest(texts=TEXTS[::-1] * 3)).rewards)

    assert together == alone[::-1] * 3
    assert rest_score(server, texts=TEXTS)["rewards"] == alone


def test_score_stream_answers_many_requests_in_request_order(server, stub):
    requests = [
        reward_pb2.ScoreRequest(
            texts=[f"request {i} item {j} " * (1 + (i * 7 + j) % 9) for j in range(1 + i % 4)]
        )
        for i in range(300)
    ]
    expected = [list(stub.Score(request).rewards) for request in requests[:20]]

    responses = list(stub.ScoreStream(iter(requests)))

    assert len(responses) == len(requests)
    for request, response in zip(requests, responses, strict=True):
        assert len(response.rewards) == len(request.texts)
    # Batched with other requests, padding differs, so equal up to float noise, not bitwise
    # (docs/serving.md, Determinism: at most ~1e-7 for these logits, which stay under 1).
    for want, response in zip(expected, responses, strict=False):
        np.testing.assert_allclose(list(response.rewards), want, atol=1e-5)


def test_list_models_returns_what_the_rest_models_endpoint_returns(server, stub):
    rest = httpx.get(f"{server.url}/v1/models", timeout=HTTP_TIMEOUT_S).json()["models"]

    models = stub.ListModels(reward_pb2.ListModelsRequest()).models

    assert [model.name for model in models] == [model["name"] for model in rest]
    for model, want in zip(models, rest, strict=True):
        got = MessageToDict(
            model, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        got.setdefault("description", None)
        assert got == want


# -- status codes ---------------------------------------------------------------------------------

INVALID_REQUESTS = [
    ("no input at all", {}),
    ("both kinds of input", dict(texts=["a"], prompts=["p"], completions=["c"])),
    ("prompts without completions", dict(prompts=["p"])),
    ("lengths differ", dict(prompts=["p", "q"], completions=["c"])),
    ("too many items", dict(texts=["x"] * 65)),
]


@pytest.mark.parametrize(("case", "fields"), INVALID_REQUESTS, ids=[c for c, _ in INVALID_REQUESTS])
def test_bad_input_is_invalid_argument_with_a_message(server, stub, case, fields):
    code, details = status_of(stub.Score, reward_pb2.ScoreRequest(**fields))

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(details) > 10
    assert len(stub.Score(reward_pb2.ScoreRequest(texts=["still serving"])).rewards) == 1


def test_an_unknown_model_is_not_found(stub):
    code, details = status_of(stub.Score, reward_pb2.ScoreRequest(model="nope", texts=["a"]))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "nope" in details and "sentiment" in details


def test_a_failing_request_ends_the_stream_after_the_answers_before_it(stub):
    requests = [reward_pb2.ScoreRequest(texts=["fine"]) for _ in range(3)]
    requests.append(reward_pb2.ScoreRequest(model="nope", texts=["a"]))
    requests += [reward_pb2.ScoreRequest(texts=["never answered"]) for _ in range(3)]
    answered = []

    with pytest.raises(grpc.RpcError) as failure:
        for response in stub.ScoreStream(iter(requests)):
            answered.append(response)

    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(answered) == 3


def test_grpc_requests_are_counted_in_the_request_metrics(server, stub):
    score_route = {"transport": "grpc", "route": SCORE_ROUTE}
    ok_before = metric(server, "reward_requests_total", status="OK", **score_route)
    bad_before = metric(server, "reward_requests_total", status="INVALID_ARGUMENT", **score_route)

    stub.Score(reward_pb2.ScoreRequest(texts=["counted"]))
    status_of(stub.Score, reward_pb2.ScoreRequest())

    ok_after = metric(server, "reward_requests_total", status="OK", **score_route)
    bad_after = metric(server, "reward_requests_total", status="INVALID_ARGUMENT", **score_route)
    timed = metric(server, "reward_request_latency_seconds_count", **score_route)
    assert ok_after == ok_before + 1
    assert bad_after == bad_before + 1
    assert timed >= ok_before + bad_before + 2


def test_a_busy_queue_gives_resource_exhausted_and_expired_deadlines_never_reach_the_model(
    server_factory, folders
):
    # The test holds the model's forward pass: the queue stays as full as the test makes it.
    busy = server_factory(
        [
            "--model",
            f"s={folders['sentiment']}",
            "--max-queue-items=64",
            "--max-items-per-request=64",
            "--grpc-max-message-bytes=1000000",
        ],
        gated=True,
    )
    backlog = [f"backlog item {i} " * 25 for i in range(48)]
    scored_before = metric(busy, "reward_items_scored_total", model="s")
    with grpc.insecure_channel(busy.grpc_target) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        busy.gate.hold_forward()
        backlog_call = stub.Score.future(reward_pb2.ScoreRequest(texts=backlog), timeout=WAIT_S)
        busy.gate.wait_until_held()  # its first batch is in the held pass, the rest queued

        late = reward_pb2.ScoreRequest(texts=["too late"] * 5)
        late_call = stub.Score.future(late, timeout=LATE_DEADLINE_S)
        wait_for(
            lambda: metric(busy, "reward_admitted_items", model="s") == 53 or late_call.done(),
            "the late request to be queued",
        )
        assert metric(busy, "reward_admitted_items", model="s") == 53, "not queued in time"
        queued_at = time.monotonic()  # after the server received it: its deadline is earlier
        assert late_call.exception().code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(
            lambda: time.monotonic() > queued_at + LATE_DEADLINE_S,
            "the deadline to have passed for the server too",
        )
        full = reward_pb2.ScoreRequest(texts=["no room"] * 12)  # 53 + 12 > 64
        huge = reward_pb2.ScoreRequest(texts=["x" * 2_000_000])
        for refused in (full, huge):
            code, _ = status_of(stub.Score, refused, timeout=HTTP_TIMEOUT_S)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED

        busy.gate.open_forward()
        assert len(backlog_call.result().rewards) == 48

    assert metric(busy, "reward_items_expired_total", model="s") == 5
    assert metric(busy, "reward_items_scored_total", model="s") == scored_before + 48
    assert metric(busy, "reward_requests_rejected_total", model="s") == 1


def test_grpc_and_rest_items_that_arrive_together_share_a_batch(server_factory, folders):
    # A batch waits up to 10 minutes for a second item, far longer than these calls may take:
    # each is answered only because the other filled its batch, whichever came first.
    paired = server_factory(
        ["--model", f"s={folders['sentiment']}", "--max-batch-size", "2", "--max-wait-ms", "600000"]
    )
    batches_before = metric(paired, "reward_batch_size_count", model="s")
    with grpc.insecure_channel(paired.grpc_target) as channel, ThreadPoolExecutor(2) as pool:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        request = reward_pb2.ScoreRequest(texts=["over gRPC"])
        over_grpc = pool.submit(stub.Score, request, timeout=HTTP_TIMEOUT_S)
        over_rest = pool.submit(rest_score, paired, texts=["over REST"])
        assert len(over_grpc.result().rewards) == len(over_rest.result()["rewards"]) == 1

    assert metric(paired, "reward_batch_size_count", model="s") == batches_before + 1
    assert metric(paired, "reward_batch_size_sum", model="s") == 2


# -- health and reflection ------------------------------------------------------------------------


def test_health_is_not_serving_until_warm_then_serving_per_model_and_overall(
    server_factory, folders
):
    names = [f"m{i}" for i in range(4)]
    models = [arg for name in names for arg in ("--model", f"{name}={folders['sentiment']}")]
    # Each model's loading waits until the test lets it start, so every stage lasts until the
    # test has seen it.
    loading = server_factory(models, wait_ready=False, held_loads=names)
    with grpc.insecure_channel(loading.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stub = reward_pb2_grpc.RewardServiceStub(channel)

        def status(service: str) -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=service)).status

        # The gRPC port opens before the first model loads; the first answer must be "not yet".
        first = health.Check(
            health_pb2.HealthCheckRequest(service=""), timeout=WAIT_S, wait_for_ready=True
        )
        assert first.status == NOT_SERVING
        assert status(names[-1]) == NOT_SERVING
        code, _ = status_of(stub.Score, reward_pb2.ScoreRequest(model=names[-1], texts=["a"]))
        assert code == grpc.StatusCode.UNAVAILABLE

        # Models warm one by one: the first serves while the server as a whole does not yet.
        loading.gate.release_load(names[0])
        wait_for(lambda: status(names[0]) == SERVING, "the first model to serve")
        assert status("") == NOT_SERVING
        for name in names[1:]:
            loading.gate.release_load(name)
        wait_for(lambda: status("") == SERVING, "every model to serve")

        ready = httpx.get(f"{loading.url}/health/ready", timeout=HTTP_TIMEOUT_S)
        assert ready.status_code == 200
        for name in [*names, SERVICE]:
            assert status(name) == SERVING
        code, _ = status_of(health.Check, health_pb2.HealthCheckRequest(service="no-such-model"))
        assert code == grpc.StatusCode.NOT_FOUND
        assert len(stub.Score(reward_pb2.ScoreRequest(model=names[-1], texts=["a"])).rewards) == 1


def test_reflection_lists_and_describes_the_reward_service(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = database.get_services()
        pool = descriptor_pool.DescriptorPool(database)
        described = pool.FindServiceByName(SERVICE)

    assert SERVICE in services and "grpc.health.v1.Health" in services
    assert [method.name for method in described.methods] == ["Score", "ScoreStream", "ListModels"]


def test_grpc_port_zero_serves_rest_only(server_factory, folders):
    rest_only = server_factory(["--model", f"s={folders['sentiment']}", "--grpc-port", "0"])
    assert rest_score(rest_only, texts=["a"])["rewards"]


def test_a_grpc_port_in_use_stops_the_server_with_a_clear_error(server, server_factory, folders):
    clash = server_factory(
        ["--model", f"s={folders['sentiment']}", "--grpc-port", str(server.grpc_port)],
        wait_ready=False,
    )
    assert clash.process.wait(timeout=WAIT_S) == 2
    assert f"cannot listen for gRPC on 127.0.0.1:{server.grpc_port}" in clash.log()
