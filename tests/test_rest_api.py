"""The REST API against a real `reward-service serve` on a loopback port, with tiny seeded models.

Expected rewards are computed here from an in-process forward pass (transformers directly, not
the service's code) and the mapping written out by hand for each case.
"""

from __future__ import annotations

import asyncio
import random

import httpx
import numpy as np
import pytest
import torch
from helpers import HTTP_TIMEOUT_S, metric, wait_for
from transformers import AutoModelForSequenceClassification, AutoTokenizer

TOXIC_LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
TEXTS = [
    "great movie",
    "a dull, lifeless film that never finds its rhythm",
    "I would watch it again tomorrow!",
    "meh",
    "The plot { braces } and all, " * 3,
]
PROMPTS = ["Review: ", "Q: was it good?\nA:", "Tell me about it. "]
COMPLETIONS = ["loved every minute", " no, it was tedious", "It is a film."]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def in_process_logits(folder, texts=None, pairs=None, max_length=128) -> np.ndarray:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    if pairs is not None:
        first, second = zip(*pairs, strict=True)
        batch = tokenizer(
            list(first),
            list(second),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
    else:
        batch = tokenizer(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
    with torch.no_grad():
        return model(**batch).logits.double().numpy()


# name -> (model shape, reward_config.json, reward by hand from logits, how prompts are joined)
CASES = {
    "sentiment": (
        dict(labels=["NEGATIVE", "POSITIVE"]),
        {"preset": "sentiment"},
        lambda z: z[:, 1],
        "concat",
    ),
    "toxicity": (
        dict(labels=TOXIC_LABELS, problem_type="multi_label_classification"),
        {"preset": "toxicity"},
        lambda z: -sigmoid(z[:, 0]),
        "completion",
    ),
    "toxicity-any": (
        dict(labels=TOXIC_LABELS, problem_type="multi_label_classification"),
        {"preset": "toxicity-any"},
        lambda z: 1 - sigmoid(z).max(axis=1),
        "completion",
    ),
    "hate": (
        dict(labels=["nothate", "hate"], architecture="distilbert"),
        {"preset": "hate"},
        lambda z: z[:, 0],
        "completion",
    ),
    "reward-model": (
        dict(labels=["LABEL_0"]),
        {"preset": "reward-model"},
        lambda z: z[:, 0],
        "pair",
    ),
    "softmax-weighted": (
        dict(labels=["bad", "neutral", "good"]),
        {
            "outputs": [{"label": "good", "weight": 1.0}, {"label": "bad", "weight": -0.5}],
            "activation": "softmax",
            "scale": 2.0,
            "shift": -0.25,
        },
        lambda z: 2.0 * (softmax(z)[:, 2] - 0.5 * softmax(z)[:, 0]) - 0.25,
        "concat",
    ),
    "log-softmax-normalized": (
        dict(labels=["NEGATIVE", "POSITIVE"]),
        {
            "outputs": ["POSITIVE"],
            "activation": "log_softmax",
            "normalization": {"mean": -0.7, "std": 0.3},
        },
        lambda z: (np.log(softmax(z)[:, 1]) + 0.7) / 0.3,
        "concat",
    ),
    "sigmoid-template": (
        dict(labels=["a", "b"], problem_type="multi_label_classification"),
        {"outputs": [1], "activation": "sigmoid", "template": "<<{prompt}>> {completion}"},
        lambda z: sigmoid(z[:, 1]),
        "template:<<{prompt}>> {completion}",
    ),
}


def join(prompts, completions, how):
    if how == "concat":
        return [p + c for p, c in zip(prompts, completions, strict=True)]
    if how == "completion":
        return list(completions)
    template = how.removeprefix("template:")
    return [
        template.replace("{prompt}", p).replace("{completion}", c)
        for p, c in zip(prompts, completions, strict=True)
    ]


@pytest.fixture(scope="module")
def case_folders(tiny_model_factory):
    return {
        name: tiny_model_factory(f"case-{name}", reward_config=config, seed=index, **shape)
        for index, (name, (shape, config, _, _)) in enumerate(CASES.items())
    }


@pytest.fixture(scope="module")
def server(server_factory, case_folders):
    args = []
    for name, folder in case_folders.items():
        args += ["--model", f"{name}={folder}"]
    return server_factory(args + ["--max-items-per-request", "64"])


def score(server, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/score", json=body, timeout=HTTP_TIMEOUT_S)


@pytest.mark.parametrize("name", list(CASES))
def test_rewards_of_texts_equal_an_in_process_forward_plus_the_mapping(server, case_folders, name):
    _, _, by_hand, _ = CASES[name]
    logits = in_process_logits(case_folders[name], texts=TEXTS)

    response = score(server, model=name, texts=TEXTS, return_raw=True)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == name
    np.testing.assert_allclose(body["raw"], logits, atol=1e-5)
    np.testing.assert_allclose(body["rewards"], by_hand(logits), atol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_prompt_completion_pairs_are_joined_as_the_mapping_says(server, case_folders, name):
    _, _, by_hand, how = CASES[name]
    if how == "pair":
        pairs = list(zip(PROMPTS, COMPLETIONS, strict=True))
        logits = in_process_logits(case_folders[name], pairs=pairs)
    else:
        logits = in_process_logits(case_folders[name], texts=join(PROMPTS, COMPLETIONS, how))

    response = score(server, model=name, prompts=PROMPTS, completions=COMPLETIONS)

    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["rewards"], by_hand(logits), atol=1e-5)


def test_the_first_model_is_used_when_a_request_names_none(server, case_folders):
    logits = in_process_logits(case_folders["sentiment"], texts=TEXTS[:2])
    body = score(server, texts=TEXTS[:2]).json()
    assert body["model"] == "sentiment"
    np.testing.assert_allclose(body["rewards"], logits[:, 1], atol=1e-5)


def test_models_endpoint_describes_each_model(server):
    listed = httpx.get(f"{server.url}/v1/models", timeout=HTTP_TIMEOUT_S).json()["models"]
    models = {m["name"]: m for m in listed}
    assert list(models) == list(CASES)
    toxicity = models["toxicity"]
    assert toxicity["labels"] == TOXIC_LABELS
    assert toxicity["backend"] == "torch" and toxicity["ready"] is True
    assert toxicity["max_length"] == 128  # the tiny models' position table
    assert toxicity["mapping"]["activation"] == "sigmoid"
    assert toxicity["mapping"]["outputs"] == [{"label": "toxic", "index": 0, "weight": 1.0}]
    assert toxicity["mapping"]["scale"] == -1


def test_health_probes_report_live_and_ready_and_the_openapi_docs_include_v1_score(server):
    def get(route: str) -> httpx.Response:
        return httpx.get(f"{server.url}{route}", timeout=HTTP_TIMEOUT_S)

    assert get("/health/live").json() == {"status": "live"}
    ready = get("/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert get("/docs").status_code == 200
    schema = get("/openapi.json").json()
    assert "/v1/score" in schema["paths"]


def test_order_is_kept_under_64_concurrent_clients_with_mixed_lengths(server, case_folders):
    rng = random.Random(7)
    words = "good bad plot actor scene slow brilliant awful music ending twist long".split()
    pool = [" ".join(rng.choices(words, k=rng.randint(1, 90))) for _ in range(96)]
    logits = in_process_logits(case_folders["sentiment"], texts=pool)
    expected = dict(zip(pool, logits[:, 1], strict=True))
    requests = [rng.sample(pool, rng.randint(1, 12)) for _ in range(64 * 3)]

    async def client(batches):
        async with httpx.AsyncClient(base_url=server.url, timeout=HTTP_TIMEOUT_S) as http:
            results = []
            for texts in batches:
                response = await http.post("/v1/score", json={"model": "sentiment", "texts": texts})
                results.append((texts, response))
            return results

    async def run_all():
        return await asyncio.gather(*(client(requests[i::64]) for i in range(64)))

    for results in asyncio.run(run_all()):
        for texts, response in results:
            assert response.status_code == 200, response.text
            np.testing.assert_allclose(
                response.json()["rewards"], [expected[t] for t in texts], atol=1e-5
            )


def test_concurrent_single_text_requests_share_batches(server_factory, case_folders):
    # The test holds the model's forward pass on the first request while the others queue.
    held = server_factory(["--model", f"hate={case_folders['hate']}"], gated=True)
    payloads = [{"texts": [f"text number {i} " * 20]} for i in range(64)]

    async def burst():
        async with httpx.AsyncClient(base_url=held.url, timeout=HTTP_TIMEOUT_S) as http:
            held.gate.hold_forward()
            first = asyncio.ensure_future(http.post("/v1/score", json=payloads[0]))
            await asyncio.to_thread(held.gate.wait_until_held)
            others = [asyncio.ensure_future(http.post("/v1/score", json=p)) for p in payloads[1:]]
            await asyncio.to_thread(
                wait_for,
                lambda: metric(held, "reward_queue_depth", model="hate") == 63,
                "the other 63 requests to queue",
            )
            held.gate.open_forward()
            return await asyncio.gather(first, *others)

    assert all(r.status_code == 200 for r in asyncio.run(burst()))
    items = metric(held, "reward_batch_size_sum", model="hate")
    batches = metric(held, "reward_batch_size_count", model="hate")
    assert items == 64
    assert batches < 64, "every request ran in a batch of its own"


ERROR_CASES = [
    ("malformed JSON", b'{"texts": ["unclosed"', 422, "invalid_request"),
    ("texts not a list", {"texts": "just a string"}, 422, "invalid_request"),
    ("a text not a string", {"texts": ["ok", 3]}, 422, "invalid_request"),
    ("empty texts", {"texts": []}, 422, "invalid_request"),
    ("no input at all", {}, 422, "invalid_request"),
    (
        "both kinds of input",
        {"texts": ["a"], "prompts": ["p"], "completions": ["c"]},
        422,
        "invalid_request",
    ),
    ("prompts without completions", {"prompts": ["p"]}, 422, "invalid_request"),
    ("lengths differ", {"prompts": ["p", "q"], "completions": ["c"]}, 422, "invalid_request"),
    ("unknown field", {"texts": ["a"], "txets": ["b"]}, 422, "invalid_request"),
    ("too many items", {"texts": ["x"] * 65}, 413, "too_many_items"),
    ("unknown model", {"model": "no-such-model", "texts": ["a"]}, 404, "model_not_found"),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "kind"), ERROR_CASES, ids=[case[0] for case in ERROR_CASES]
)
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(
    server, case, body, status, kind
):
    if isinstance(body, bytes):
        response = httpx.post(
            f"{server.url}/v1/score",
            content=body,
            headers={"content-type": "application/json"},
            timeout=HTTP_TIMEOUT_S,
        )
    else:
        response = score(server, **body)

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == kind
    assert len(error["message"]) > 10
    assert score(server, texts=["still serving"]).status_code == 200


def test_text_longer_than_max_length_is_truncated_and_counted(server, case_folders):
    long_text = "word " * 400  # far past the tiny models' 128 positions
    logits = in_process_logits(case_folders["sentiment"], texts=[long_text, "short"])
    body = score(server, model="sentiment", texts=[long_text, "short"]).json()
    assert body["truncated"] == 1
    np.testing.assert_allclose(body["rewards"], logits[:, 1], atol=1e-5)


def test_a_full_queue_answers_429_with_retry_after_and_loses_nothing_admitted(
    server_factory, case_folders
):
    folder = case_folders["sentiment"]
    tiny_queue = server_factory(
        [
            "--model",
            f"s={folder}",
            "--max-queue-items=4",
            "--max-items-per-request=4",
            "--max-batch-size=1",
        ],
        gated=True,
    )
    texts = [f"review {i} " * 30 for i in range(4)]
    expected = in_process_logits(folder, texts=texts)[:, 1]

    async def burst():
        # The first request fills the queue, and the test holds its first forward pass until
        # the other 31 have been answered.
        async with httpx.AsyncClient(base_url=tiny_queue.url, timeout=HTTP_TIMEOUT_S) as http:
            tiny_queue.gate.hold_forward()
            admitted = asyncio.ensure_future(http.post("/v1/score", json={"texts": texts}))
            await asyncio.to_thread(tiny_queue.gate.wait_until_held)
            refused = await asyncio.gather(
                *(http.post("/v1/score", json={"texts": texts}) for _ in range(31))
            )
            tiny_queue.gate.open_forward()
            return [await admitted, *refused]

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert statuses == [200] + [429] * 31
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"]["type"] == "queue_full"
        else:
            np.testing.assert_allclose(response.json()["rewards"], expected, atol=1e-5)
    after = httpx.post(
        f"{tiny_queue.url}/v1/score", json={"texts": ["after"]}, timeout=HTTP_TIMEOUT_S
    )
    assert after.status_code == 200
