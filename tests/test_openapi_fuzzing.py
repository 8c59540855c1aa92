"""Fuzzing the REST API from its own OpenAPI schema (schemathesis): for valid and invalid input
alike, the running server never answers 5xx and every answer conforms to the schema (documented
status code, content type, headers and body)."""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from helpers import HTTP_TIMEOUT_S
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

# Per operation; several operations, so a few hundred cases in all, in well under a minute.
MAX_EXAMPLES = 100
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
cases_tried: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzzed_server(server_factory, tiny_model_factory):
    folder = tiny_model_factory(
        "openapi-fuzzing", labels=["NEGATIVE", "POSITIVE"], reward_config={"preset": "sentiment"}
    )
    # Small limits, so generated input crosses them too.
    limits = ["--max-items-per-request=16", "--max-chars-per-item=2000", "--max-body-bytes=65536"]
    return server_factory(["--model", f"m={folder}", *limits])


# Every operation of the schema (pinned below, so a new route cannot go unfuzzed); invalid input
# only where there is a body to get wrong.
OPERATIONS = {
    ("POST", "/v1/score"): [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    ("POST", "/get_reward"): [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    ("POST", "/get_reward/{model}"): [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    ("GET", "/v1/models"): [GenerationMode.POSITIVE],
    ("GET", "/health/live"): [GenerationMode.POSITIVE],
    ("GET", "/health/ready"): [GenerationMode.POSITIVE],
    ("GET", "/metrics"): [GenerationMode.POSITIVE],
    # Text Embeddings Inference's routes (serving/tei.py)
    ("POST", "/predict"): [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    ("POST", "/"): [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    ("POST", "/rerank"): [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    ("GET", "/info"): [GenerationMode.POSITIVE],
    ("GET", "/health"): [GenerationMode.POSITIVE],
    ("GET", "/v2/health/live"): [GenerationMode.POSITIVE],
    ("GET", "/v2/health/ready"): [GenerationMode.POSITIVE],
    ("GET", "/v2"): [GenerationMode.POSITIVE],
    ("GET", "/v2/models/{name}"): [GenerationMode.POSITIVE],
    ("GET", "/v2/models/{name}/ready"): [GenerationMode.POSITIVE],
    ("POST", "/v2/models/{name}/infer"): [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
}


@pytest.fixture(scope="module")
def api_schema(fuzzed_server):
    yield schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json")
    print(f"\nfuzz: {sum(cases_tried.values())} cases: {dict(cases_tried)}")


def test_the_fuzzed_operations_are_every_operation_of_the_schema(api_schema):
    served = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert served == set(OPERATIONS)


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [(method, path, mode) for (method, path), modes in OPERATIONS.items() for mode in modes],
)
def test_no_input_gets_a_5xx_or_an_answer_outside_the_schema(api_schema, method, path, mode):
    operation = api_schema[path][method]

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,  # the same cases on every run: a failure repeats
        database=None,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def call_and_validate(case) -> None:
        cases_tried[f"{method} {path} ({mode.value})"] += 1
        case.call_and_validate(checks=CHECKS, timeout=HTTP_TIMEOUT_S)

    call_and_validate()
