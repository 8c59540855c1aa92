"""Text Embeddings Inference's classifier routes (/predict, /rerank, /info, /health) against a real
`reward-service serve`, called with huggingface_hub's InferenceClient (a TEI client no one here
wrote) and with TEI's documented request bodies.

Expected values come from the same server's /v1/score (`raw` and `rewards`), with TEI's
activation written out here by hand (core/src/infer.rs: softmax over several labels, sigmoid for
one). An item's logits can differ by ~1e-7 depending on what shares its batch (float32
rounding); the scores compared here are of order 1 and their activations are at most 1-Lipschitz,
so abs=1e-5 leaves a margin of a hundred.
"""

from __future__ import annotations

from importlib.metadata import version

import httpx
import numpy as np
import pytest
from helpers import HTTP_TIMEOUT_S, metric, wait_for
from huggingface_hub import InferenceClient

KEY = "tei-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SAME = 1e-5
LABELS = ["bad", "neutral", "good"]
# The reward is a weighted, scaled mix of label probabilities: not any one label's TEI score.
MIXED_REWARD = {
    "outputs": [{"label": "good", "weight": 1.0}, {"label": "bad", "weight": -0.5}],
    "activation": "softmax",
    "scale": 2.0,
}
# The labelled server's limits, set by flag so /info can be held against them.
LIMITS = {
    "--max-batch-size": 4,
    "--max-batch-tokens": 4096,
    "--max-queue-items": 64,
    "--max-items-per-request": 8,
    "--max-chars-per-item": 600,
    "--max-chars-per-request": 1000,
}
TEXTS = ["great movie", "a dull, lifeless film that never finds its rhythm", "meh"]
PROMPT = "Review of the film: "
COMPLETIONS = ["I loved it.", "Tedious.", "It is a film.", "Best of the year!", "No.", "Fine."]
LONG_TEXT = "word " * 400  # far past the tiny models' 128 positions


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def folders(tiny_model_factory):
    return {
        "labelled": tiny_model_factory(
            "tei-labelled", labels=LABELS, reward_config=MIXED_REWARD, seed=3
        ),
        # A one-logit reward model reading (prompt, completion) as a tokenizer pair.
        "reward": tiny_model_factory(
            "tei-reward", labels=["LABEL_0"], reward_config={"preset": "reward-model"}, seed=4
        ),
    }


@pytest.fixture(scope="module")
def labelled(server_factory, folders):
    """Three labels (TEI's softmax), small limits and an API key."""
    limits = [f"{flag}={value}" for flag, value in LIMITS.items()]
    return server_factory(["--model", f"rm={folders['labelled']}", *limits, "--api-key", KEY])


@pytest.fixture(scope="module")
def reward(server_factory, folders):
    """One label (TEI's sigmoid); the reward is the logit. Open."""
    return server_factory(["--model", f"rm={folders['reward']}"])


def post(server, path: str, body: dict) -> httpx.Response:
    """With the key, which a server without one ignores."""
    return httpx.post(f"{server.url}{path}", json=body, headers=AUTH, timeout=HTTP_TIMEOUT_S)


def ok(response: httpx.Response):
    assert response.status_code == 200, response.text
    return response.json()


def v1_score(server, **body) -> dict:
    return ok(post(server, "/v1/score", {"return_raw": True, **body}))


def as_dict(predictions: list[dict]) -> dict[str, float]:
    return {p["label"]: p["score"] for p in predictions}


def by_label(scores) -> dict[str, float]:
    return dict(zip(LABELS, scores, strict=True))


def assert_sorted_descending(predictions: list[dict]) -> None:
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True)


# -- /predict -------------------------------------------------------------------------------------


def test_predict_of_one_text_gives_every_label_its_softmax_of_v1_score_raw_sorted(labelled):
    raw = np.array(v1_score(labelled, texts=[TEXTS[0]])["raw"][0])

    predictions = ok(post(labelled, "/predict", {"inputs": TEXTS[0]}))

    assert [p["label"] for p in predictions] == [LABELS[i] for i in np.argsort(-raw)]
    assert_sorted_descending(predictions)
    expected = by_label(softmax(raw))
    assert as_dict(predictions) == pytest.approx(expected, abs=SAME)


def test_predict_with_raw_scores_gives_v1_score_raw_logits(labelled):
    raw = v1_score(labelled, texts=[TEXTS[1]])["raw"][0]

    predictions = ok(post(labelled, "/predict", {"inputs": TEXTS[1], "raw_scores": True}))

    assert_sorted_descending(predictions)
    assert as_dict(predictions) == pytest.approx(by_label(raw), abs=SAME)


def test_predict_of_a_pair_scores_it_as_v1_score_scores_a_prompt_and_completion(labelled):
    raw = np.array(v1_score(labelled, prompts=[PROMPT], completions=[COMPLETIONS[0]])["raw"][0])

    predictions = ok(post(labelled, "/predict", {"inputs": [PROMPT, COMPLETIONS[0]]}))

    assert as_dict(predictions) == pytest.approx(by_label(softmax(raw)), abs=SAME)


def test_predict_of_a_one_string_list_is_that_string_not_a_batch(labelled):
    single = ok(post(labelled, "/predict", {"inputs": TEXTS[2]}))
    listed = ok(post(labelled, "/predict", {"inputs": [TEXTS[2]]}))
    assert isinstance(listed[0], dict)
    assert as_dict(listed) == pytest.approx(as_dict(single), abs=SAME)


def test_predict_of_a_batch_of_texts_and_pairs_answers_a_list_per_input_in_order(labelled):
    texts_raw = np.array(v1_score(labelled, texts=TEXTS)["raw"])
    pairs_raw = np.array(
        v1_score(labelled, prompts=[PROMPT] * 2, completions=COMPLETIONS[:2])["raw"]
    )
    batch = [[TEXTS[0]], [PROMPT, COMPLETIONS[0]], [TEXTS[1]], [TEXTS[2]], [PROMPT, COMPLETIONS[1]]]
    expected_raw = [texts_raw[0], pairs_raw[0], texts_raw[1], texts_raw[2], pairs_raw[1]]

    answer = ok(post(labelled, "/predict", {"inputs": batch}))

    assert len(answer) == len(batch)
    for predictions, raw in zip(answer, expected_raw, strict=True):
        assert_sorted_descending(predictions)
        assert as_dict(predictions) == pytest.approx(by_label(softmax(raw)), abs=SAME)


def test_predict_of_a_one_label_model_gives_the_sigmoid_of_its_logit(reward):
    raw = v1_score(reward, texts=TEXTS)["raw"]

    answer = ok(post(reward, "/predict", {"inputs": [[text] for text in TEXTS]}))

    assert [[p["label"] for p in predictions] for predictions in answer] == [["LABEL_0"]] * 3
    scores = [predictions[0]["score"] for predictions in answer]
    assert scores == pytest.approx(sigmoid(np.array(raw)[:, 0]), abs=SAME)


def test_predict_label_scores_relate_to_the_reward_through_the_mapping_only(labelled):
    """The reward (softmax mixed as reward_config.json says) is built from /predict's raw."""
    rewards = v1_score(labelled, texts=TEXTS)["rewards"]
    answer = ok(post(labelled, "/predict", {"inputs": [[t] for t in TEXTS], "raw_scores": True}))
    logits = np.array([[as_dict(p)[label] for label in LABELS] for p in answer])
    probabilities = softmax(logits)
    by_mapping = 2.0 * (probabilities[:, 2] - 0.5 * probabilities[:, 0])
    assert rewards == pytest.approx(by_mapping, abs=SAME)


def test_post_to_the_root_is_predict_as_tei_serves_a_classifier(labelled):
    at_root = ok(post(labelled, "/", {"inputs": TEXTS[0]}))
    predicted = ok(post(labelled, "/predict", {"inputs": TEXTS[0]}))
    assert [p["label"] for p in at_root] == [p["label"] for p in predicted]
    assert as_dict(at_root) == pytest.approx(as_dict(predicted), abs=SAME)


# -- the real client ------------------------------------------------------------------------------


@pytest.fixture
def hub_client(monkeypatch):
    """InferenceClient as a user runs it. conftest.py sets HF_HUB_OFFLINE=1 for the whole
    session (no test may reach the hub), and huggingface_hub's offline mode refuses every
    request of its HTTP session, loopback included; lifted for this test alone, the client still
    reaches nothing but the server on 127.0.0.1 (this machine has no route to the hub)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return InferenceClient


def test_huggingface_hub_inference_client_classifies_against_the_server_unchanged(
    labelled, hub_client
):
    predictions = ok(post(labelled, "/predict", {"inputs": TEXTS[0]}))
    client = hub_client(base_url=labelled.url, api_key=KEY, timeout=HTTP_TIMEOUT_S)

    # POST {"inputs": ..., "parameters": {...}} to the base URL, as it does for a TEI endpoint;
    # against TEI's flat single-input answer it returns the top prediction.
    top = client.text_classification(TEXTS[0], top_k=2)

    assert top.label == predictions[0]["label"]
    assert top.score == pytest.approx(predictions[0]["score"], abs=SAME)


def test_the_inference_client_gets_a_401_for_a_wrong_key(labelled, hub_client):
    from huggingface_hub.errors import HfHubHTTPError

    client = hub_client(base_url=labelled.url, api_key="wrong", timeout=HTTP_TIMEOUT_S)
    with pytest.raises(HfHubHTTPError) as refused:
        client.text_classification(TEXTS[0])
    assert refused.value.response.status_code == 401


# -- /rerank --------------------------------------------------------------------------------------


def test_rerank_scores_a_grpo_group_with_v1_score_rewards_sorted_best_first(reward):
    rewards = v1_score(reward, prompts=[PROMPT] * len(COMPLETIONS), completions=COMPLETIONS)[
        "rewards"
    ]

    ranks = ok(post(reward, "/rerank", {"query": PROMPT, "texts": COMPLETIONS}))

    assert [rank["index"] for rank in ranks] == list(np.argsort(rewards)[::-1])
    assert {rank["index"]: rank["score"] for rank in ranks} == pytest.approx(
        dict(enumerate(rewards)), abs=SAME
    )
    assert all("text" not in rank for rank in ranks)


def test_rerank_with_return_text_gives_each_text_and_raw_scores_change_nothing(reward):
    plain = ok(post(reward, "/rerank", {"query": PROMPT, "texts": COMPLETIONS}))

    ranks = ok(
        post(
            reward,
            "/rerank",
            {"query": PROMPT, "texts": COMPLETIONS, "return_text": True, "raw_scores": True},
        )
    )

    assert [rank["text"] for rank in ranks] == [COMPLETIONS[rank["index"]] for rank in ranks]
    assert [r["index"] for r in ranks] == [r["index"] for r in plain]
    assert [r["score"] for r in ranks] == pytest.approx([r["score"] for r in plain], abs=SAME)


def test_rerank_scores_a_mapped_reward_not_a_label_score(labelled):
    rewards = v1_score(labelled, prompts=[PROMPT] * 3, completions=COMPLETIONS[:3])["rewards"]
    ranks = ok(post(labelled, "/rerank", {"query": PROMPT, "texts": COMPLETIONS[:3]}))
    assert {r["index"]: r["score"] for r in ranks} == pytest.approx(
        dict(enumerate(rewards)), abs=SAME
    )


# -- /info and /health ----------------------------------------------------------------------------


def test_info_publishes_the_servers_settings_and_model_with_tei_field_names(labelled):
    info = httpx.get(f"{labelled.url}/info", headers=AUTH, timeout=HTTP_TIMEOUT_S).json()
    model = httpx.get(f"{labelled.url}/v1/models", headers=AUTH, timeout=HTTP_TIMEOUT_S).json()

    described = model["models"][0]
    assert info["model_id"] == described["source"] == "tei-labelled"
    assert info["served_model_name"] == "rm"
    assert info["model_dtype"] == "float32"
    assert info["model_type"] == {
        "classifier": {
            "id2label": {"0": "bad", "1": "neutral", "2": "good"},
            "label2id": {"bad": 0, "neutral": 1, "good": 2},
        }
    }
    assert info["max_input_length"] == described["max_length"] == 128
    assert info["max_batch_requests"] == LIMITS["--max-batch-size"]
    assert info["max_batch_tokens"] == LIMITS["--max-batch-tokens"]
    assert info["max_concurrent_requests"] == LIMITS["--max-queue-items"]
    assert info["max_client_batch_size"] == LIMITS["--max-items-per-request"]
    assert info["auto_truncate"] is True
    assert info["tokenization_workers"] == 1
    assert info["version"] == version("rlhf-reward-service")


def test_health_is_200_with_an_empty_body_when_ready_and_open_without_the_key(labelled):
    health = httpx.get(f"{labelled.url}/health", timeout=HTTP_TIMEOUT_S)
    assert health.status_code == 200 and health.content == b""
    refused = httpx.post(f"{labelled.url}/predict", json={"inputs": "a"}, timeout=HTTP_TIMEOUT_S)
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "unauthorized"


def test_health_and_info_are_503_while_the_model_loads_then_200(server_factory, folders):
    loading = server_factory(
        ["--model", f"rm={folders['reward']}"], wait_ready=False, held_loads=["rm"]
    )

    def get(path: str) -> httpx.Response | None:
        try:
            return httpx.get(f"{loading.url}{path}", timeout=HTTP_TIMEOUT_S)
        except httpx.TransportError:  # not listening yet
            return None

    wait_for(lambda: get("/health/live") is not None, "the server to listen")
    health = get("/health")
    assert health.status_code == 503
    assert health.json()["error"]["type"] == "not_ready"
    assert get("/info").status_code == 503
    assert post(loading, "/predict", {"inputs": "a"}).status_code == 503

    loading.gate.release_load("rm")
    wait_for(lambda: get("/health").status_code == 200, "the model to load")
    assert get("/info").json()["served_model_name"] == "rm"


# -- limits, truncation and bad input -------------------------------------------------------------


def test_predict_items_go_through_the_engine_and_its_metrics(reward):
    before = metric(reward, "reward_items_scored_total", model="rm")
    ok(post(reward, "/predict", {"inputs": [["one"], ["two", "three"], ["four"]]}))
    ok(post(reward, "/rerank", {"query": "q", "texts": ["a", "b"]}))
    assert metric(reward, "reward_items_scored_total", model="rm") == before + 5


def test_a_long_input_is_cut_by_default_as_v1_score_cuts_it(reward):
    raw = v1_score(reward, texts=[LONG_TEXT])
    assert raw["truncated"] == 1

    predictions = ok(post(reward, "/predict", {"inputs": LONG_TEXT, "truncate": True}))

    assert predictions[0]["score"] == pytest.approx(sigmoid(raw["raw"][0][0]), abs=SAME)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/predict", {"inputs": LONG_TEXT, "truncate": False}),
        ("/predict", {"inputs": LONG_TEXT, "truncation_direction": "left"}),
        ("/rerank", {"query": PROMPT, "texts": ["ok", LONG_TEXT], "truncate": False}),
        ("/rerank", {"query": PROMPT, "texts": [LONG_TEXT], "truncation_direction": "Left"}),
    ],
    ids=["predict-no-truncate", "predict-left", "rerank-no-truncate", "rerank-left"],
)
def test_a_long_input_that_must_not_be_cut_as_it_would_be_is_refused(reward, path, body):
    refused = post(reward, path, body)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["type"] == "invalid_request"
    assert "128 tokens" in refused.json()["error"]["message"]


def test_short_inputs_take_any_truncation_setting(reward):
    for extra in ({"truncate": False}, {"truncation_direction": "left"}, {"truncate": None}):
        ok(post(reward, "/predict", {"inputs": TEXTS[0], **extra}))
        ok(post(reward, "/rerank", {"query": PROMPT, "texts": COMPLETIONS[:2], **extra}))


ERROR_CASES = [
    ("three strings", "/predict", {"inputs": ["a", "b", "c"]}, 422, "invalid_request"),
    ("empty inputs", "/predict", {"inputs": []}, 422, "invalid_request"),
    ("an empty sequence", "/predict", {"inputs": [["a"], []]}, 422, "invalid_request"),
    ("a number", "/predict", {"inputs": 3}, 422, "invalid_request"),
    ("no inputs", "/predict", {"raw_scores": True}, 422, "invalid_request"),
    ("mixed list", "/predict", {"inputs": [["a"], "b"]}, 422, "invalid_request"),
    (
        "bad direction",
        "/predict",
        {"inputs": "a", "truncation_direction": "up"},
        422,
        "invalid_request",
    ),
    ("too many inputs", "/predict", {"inputs": [["x"]] * 9}, 413, "too_many_items"),
    (
        "too many mixed inputs",
        "/predict",
        {"inputs": [["x"]] * 5 + [["p", "c"]] * 4},
        413,
        "too_many_items",
    ),
    ("an input too long", "/predict", {"inputs": "x" * 601}, 422, "item_too_long"),
    ("a pair too long", "/predict", {"inputs": ["x" * 300, "y" * 301]}, 422, "item_too_long"),
    (
        "a mixed batch too long in all",
        "/predict",
        {"inputs": [["x" * 550], ["y" * 250, "z" * 250]]},
        413,
        "too_many_characters",
    ),
    ("no texts", "/rerank", {"query": "q", "texts": []}, 422, "invalid_request"),
    ("no query", "/rerank", {"texts": ["a"]}, 422, "invalid_request"),
    ("too many texts", "/rerank", {"query": "q", "texts": ["a"] * 9}, 413, "too_many_items"),
    (
        "a text too long",
        "/rerank",
        {"query": "q" * 300, "texts": ["a" * 301]},
        422,
        "item_too_long",
    ),
]


@pytest.mark.parametrize(
    ("case", "path", "body", "status", "kind"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES]
)
def test_bad_input_gets_the_apis_error_and_the_server_keeps_serving(
    labelled, case, path, body, status, kind
):
    response = post(labelled, path, body)

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == kind
    assert len(error["message"]) > 10
    ok(post(labelled, "/predict", {"inputs": "still serving"}))
