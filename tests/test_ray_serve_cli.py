"""`reward-service serve --ray` as a user runs it: a Ray of its own, the replicas behind Serve's
proxies on the ports given, the API key required on both, every replica's metrics on the Ray
metrics port; SIGTERM stops it with exit status 0 and no Ray process left behind.

(In a module of its own: tests/test_ray_serve.py keeps a Ray in the test process, and two at once
would crowd 2 cores.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import httpx
import pytest
from helpers import HTTP_TIMEOUT_S, REPO_ROOT, free_port, processes_naming, wait_for
from prometheus_client.parser import text_string_to_metric_families

from reward_service.client import RewardClient
from reward_service.grpc_gen import reward_pb2, reward_pb2_grpc

pytest.importorskip("ray", reason="the `ray` extra is not installed (pip install '.[ray]')")
pytestmark = pytest.mark.ray

API_KEY = "cli-test-key"


def exported(metrics_port: int, name: str) -> float:
    """A metric summed over every Ray worker that exports it."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=HTTP_TIMEOUT_S).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def test_serve_ray_serves_rest_and_grpc_with_the_key_and_stops_on_sigterm_leaving_no_ray(
    tiny_model_factory, tmp_path
):
    folder = tiny_model_factory("ray-cli", labels=["NEGATIVE", "POSITIVE"])
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    # Every process of its Ray names this folder. Short: Ray's sockets lie in it, and a socket's
    # path may hold at most 107 bytes (pytest's tmp_path is too deep).
    ray_dir = Path(tempfile.mkdtemp(prefix="ray-"))
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reward_service.cli",
                "serve",
                "--ray",
                "--model",
                f"tiny={folder}",
                "--port",
                str(port),
                "--grpc-port",
                str(grpc_port),
                "--api-key",
                API_KEY,
                "--ray-num-cpus",
                "0.5",
                "--ray-metrics-port",
                str(metrics_port),
            ],
            cwd=REPO_ROOT,
            env={**os.environ, "RAY_TMPDIR": str(ray_dir)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def ready() -> bool:
            assert server.poll() is None, log_path.read_text(errors="replace")[-3000:]
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=10)
            except httpx.TransportError:
                return False
            return response.status_code == 200

        wait_for(ready, "the Serve deployment to be ready")
        texts = ["a fine film", "a dreadful film"]
        with RewardClient(f"http://127.0.0.1:{port}", api_key=API_KEY) as rest:
            rewards = rest.score(texts=texts)
        with RewardClient(f"grpc://127.0.0.1:{grpc_port}", api_key=API_KEY) as over_grpc:
            assert over_grpc.score(texts=texts) == rewards
        assert (
            httpx.post(f"http://127.0.0.1:{port}/v1/score", json={"texts": texts}).status_code
            == 401
        )
        stub = reward_pb2_grpc.RewardServiceStub(grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))
        with pytest.raises(grpc.RpcError) as refused:
            stub.Score(reward_pb2.ScoreRequest(texts=texts), timeout=60)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        wait_for(
            lambda: exported(metrics_port, "ray_reward_items_scored_total") == 2 * len(texts),
            "the replica's metrics on the Ray metrics port",
        )

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=120) == 0, log_path.read_text(errors="replace")[-3000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    wait_for(lambda: not processes_naming(str(ray_dir)), "every Ray process to exit", 60)
    shutil.rmtree(ray_dir, ignore_errors=True)
