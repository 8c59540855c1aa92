"""Shared fixtures: tiny seeded models built from configs, and real servers on loopback ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# No hub at test time: a hub id must fail fast with a clear message instead of trying a network.
os.environ["HF_HUB_OFFLINE"] = "1"
# A server started without --model serves the seconds-to-build untrained placeholder, not the
# trained default (minutes of training); reward_service.default_model.
os.environ.setdefault("REWARD_SERVICE_DEFAULT_MODEL", "untrained")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def minilm_folder() -> Path:
    from reward_service.default_model import minilm_folder as locate

    return locate()


def build_tiny_classifier(
    out: Path,
    *,
    labels: list[str],
    problem_type: str | None = None,
    reward_config: dict | None = None,
    seed: int = 0,
    architecture: str = "bert",
) -> Path:
    """A seeded 2-layer classifier with the MiniLM tokenizer, saved as a Hugging Face folder."""
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    id2label = dict(enumerate(labels))
    label2id = {label: index for index, label in id2label.items()}
    common = dict(num_labels=len(labels), id2label=id2label, label2id=label2id,
                  problem_type=problem_type, vocab_size=30522)  # fmt: skip
    torch.manual_seed(seed)
    if architecture == "distilbert":
        config = DistilBertConfig(dim=32, hidden_dim=64, n_layers=2, n_heads=4,
                                  max_position_embeddings=128, **common)  # fmt: skip
        model = DistilBertForSequenceClassification(config)
    else:
        config = BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=128,
                            **common)  # fmt: skip
        model = BertForSequenceClassification(config)
    # A random classifier barely separates inputs; scale the head so rewards differ visibly.
    with torch.no_grad():
        for parameter in model.classifier.parameters():
            parameter.mul_(20)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_folder()).save_pretrained(out)
    if reward_config is not None:
        (out / "reward_config.json").write_text(json.dumps(reward_config))
    return out


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Builds (once per name) a tiny classifier folder; see build_tiny_classifier."""
    built: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("models")

    def factory(name: str, **kwargs) -> Path:
        if name not in built:
            built[name] = build_tiny_classifier(root / name, **kwargs)
        return built[name]

    return factory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    process: subprocess.Popen
    port: int
    log_path: Path
    grpc_port: int = 0  # 0: gRPC disabled

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    args: list[str],
    log_dir: Path,
    *,
    wait_ready: bool = True,
    timeout_s: float = 90,
    port: int | None = None,
) -> RunningServer:
    """`reward-service serve` in a subprocess on a free loopback port (or `port`, to restart a
    stopped server where its clients expect it), as a user would run it."""
    port = port or free_port()
    # Every server gets its own gRPC port too, so that servers never contend for the default.
    if "--grpc-port" not in args:
        args = [*args, "--grpc-port", str(free_port())]
    grpc_port = int(args[args.index("--grpc-port") + 1])
    log_path = log_dir / f"server-{port}.log"
    env = {**os.environ, "REWARD_SERVICE_CACHE": str(log_dir / "cache"), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "reward_service.cli", "serve", "--port", str(port), *args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=REPO_ROOT)  # fmt: skip
    server = RunningServer(process, port, log_path, grpc_port)
    if wait_ready:
        wait_until_ready(server, timeout_s)
    return server


def wait_until_ready(server: RunningServer, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server not ready after {timeout_s} s:\n{server.log()}")


@pytest.fixture(scope="session")
def server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., RunningServer]]:
    """Starts servers that live until the end of the test session."""
    servers: list[RunningServer] = []
    log_dir = tmp_path_factory.mktemp("servers")

    def factory(args: list[str], **kwargs) -> RunningServer:
        server = start_server(args, log_dir, **kwargs)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()
