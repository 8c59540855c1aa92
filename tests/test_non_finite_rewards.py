"""A reward that comes out NaN or infinite is an error for the request holding it, the same on
both transports, counted, raised by the client as its own type, and a PPO run stops on it with a
checkpoint its statistics never saw it in. Everything else keeps being answered.

The reward model is a tiny classifier whose embedding of one word is NaN: any text holding that
word gets a NaN reward, any other text a finite one, whatever it shares a batch with (attention
never mixes the rows of a batch).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
import torch
from helpers import HTTP_TIMEOUT_S, REPO_ROOT, metric, poison_word, train_word_classifier
from load_report import Tally

from policy_trainer.checkpoint import checkpoint_path, load_state
from policy_trainer.prompts import PromptStream
from policy_trainer.run_log import read_metrics
from reward_service.client import NonFiniteReward, RewardClient
from reward_service.client.base import assemble
from reward_service.client.contract import Chunk
from reward_service.grpc_gen import reward_pb2, reward_pb2_grpc

POISON = "zebra"


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = train_word_classifier(tmp_path_factory.mktemp("poisoned") / "rm")
    return poison_word(folder, POISON)


@pytest.fixture(scope="module")
def server(server_factory, poisoned):
    return server_factory(["--model", f"rm={poisoned}"])


def test_rest_refuses_a_request_with_a_nan_reward_with_a_typed_500_and_keeps_serving(server):
    before = metric(server, "reward_items_non_finite_total", model="rm")
    texts = ["the movie was good", f"the {POISON} was good", "a film"]
    response = httpx.post(f"{server.url}/v1/score", json={"texts": texts}, timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "non_finite_reward"
    assert "model 'rm'" in error["message"] and "item 1" in error["message"]
    assert "float32" in error["message"]  # the dtype it was served in, named for the reader
    assert metric(server, "reward_items_non_finite_total", model="rm") == before + 1

    clean = httpx.post(f"{server.url}/v1/score", json={"texts": texts[::2]}, timeout=HTTP_TIMEOUT_S)
    assert clean.status_code == 200
    assert all(math.isfinite(reward) for reward in clean.json()["rewards"])


def test_grpc_gives_internal_with_the_same_error_type_and_message(server):
    texts = ["the movie was good", f"the {POISON} was good", "a film"]
    rest = httpx.post(f"{server.url}/v1/score", json={"texts": texts}, timeout=HTTP_TIMEOUT_S)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            stub.Score(reward_pb2.ScoreRequest(texts=texts), timeout=HTTP_TIMEOUT_S)
    assert failure.value.code() == grpc.StatusCode.INTERNAL
    assert failure.value.details() == rest.json()["error"]["message"]
    trailing = dict(failure.value.trailing_metadata())
    assert trailing["reward-error-type"] == "non_finite_reward"


def test_other_requests_scored_beside_a_nan_are_answered(server, load_report):
    # Sent together, they may share a batch with the poisoned one or not: either way only the
    # request holding the NaN fails.
    with RewardClient(server.url, max_concurrency=8) as client, ThreadPoolExecutor(8) as pool:
        texts = [f"the {POISON}" if index == 3 else f"film {index}" for index in range(8)]
        calls = [pool.submit(client.score, texts=[text]) for text in texts]
        outcomes = [call.exception() for call in calls]
    load_report.record(
        Tally(
            "a model whose head gives NaN for one word",
            "8 concurrent one-item requests, one holding the word",
            admitted=sum(o is None or isinstance(o, NonFiniteReward) for o in outcomes),
            lost=sum(o is not None and not isinstance(o, NonFiniteReward) for o in outcomes),
        )
    )
    assert isinstance(outcomes[3], NonFiniteReward)
    assert [outcome for index, outcome in enumerate(outcomes) if index != 3] == [None] * 7


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_the_client_raises_its_non_finite_error_on_both_transports(server, scheme):
    url = server.url if scheme == "http" else f"grpc://{server.grpc_target}"
    with RewardClient(url) as client:
        assert all(math.isfinite(reward) for reward in client.score(texts=["a good film"]))
        with pytest.raises(NonFiniteReward, match="non-finite reward"):
            client.score(texts=["a good film", f"a {POISON}"])


@pytest.mark.parametrize("reward", [None, math.nan, math.inf, -math.inf])
def test_a_non_finite_reward_in_an_answer_is_refused_by_the_client_too(reward):
    # What a server that does not check would send: JSON null (REST) or the number (gRPC).
    whole = Chunk(start=0, texts=["a", "b", "c"])
    parts = [
        (Chunk(start=0, texts=["a", "b"]), [0.5, 0.25]),
        (Chunk(start=2, texts=["c"]), [reward]),
    ]
    with pytest.raises(NonFiniteReward, match="item 2"):
        assemble(whole, parts)
    assert assemble(whole, [(whole, [0.5, 0.25, 1.0])]) == [0.5, 0.25, 1.0]


# -- PPO -------------------------------------------------------------------------------------------

PPO_STEPS, PPO_BATCH, POISONED_STEP, SEED = 5, 8, 3, 0
PPO_SETTINGS = {
    "steps": PPO_STEPS, "batch_size": PPO_BATCH, "num_mini_batches": 2, "max_new_tokens": 4,
    "learning_rate": 3e-3, "checkpoint_every": 1, "seed": SEED, "score_scaling": "std",
}  # fmt: skip


def prompts_poisoned_at_step(path: Path, step: int) -> Path:
    """32 clean prompts, one of which (the first drawn in `step`) is swapped for one holding the
    poisoned word: steps before it score finite rewards only."""
    stream = PromptStream(32, SEED)
    stream.take(PPO_BATCH * (step - 1))
    first_of_step = stream.take(1)[0]
    prompts = [f"the movie {index} was" for index in range(32)]
    prompts[first_of_step] = f"the {POISON} was"
    path.write_text("".join(json.dumps({"prompt": prompt}) + "\n" for prompt in prompts))
    return path


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_ppo_stops_on_a_non_finite_reward_with_a_checkpoint_of_finite_statistics(
    server, ppo_task, tmp_path: Path, scheme
):
    url = server.url if scheme == "http" else f"grpc://{server.grpc_target}"
    prompts = prompts_poisoned_at_step(tmp_path / "prompts.jsonl", POISONED_STEP)
    run_dir = tmp_path / "run"
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in PPO_SETTINGS.items()]
    args = ["ppo", "--policy", str(ppo_task.policy), "--reward-url", url]
    args += ["--prompts", str(prompts), "--output-dir", str(run_dir), *flags]
    result = subprocess.run(
        [sys.executable, "-m", "policy_trainer.cli", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        text=True,
        capture_output=True,
        timeout=300,
    )

    assert result.returncode == 75, result.stderr[-3000:]
    assert f"a non-finite reward in step {POISONED_STEP}'s batch" in result.stderr
    assert f"policy-trainer ppo --resume {run_dir}" in result.stderr
    assert [entry["step"] for entry in read_metrics(run_dir)] == list(range(1, POISONED_STEP))
    state = load_state(checkpoint_path(run_dir, POISONED_STEP - 1))
    moments = state["score_moments"]
    assert moments, "the checkpoint holds the running score statistics"
    for name, value in moments.items():
        assert math.isfinite(float(value)), f"score statistic {name} is {value}"
    for name, tensor in state["model"].items():
        assert torch.isfinite(tensor).all(), name
