"""Shared fixtures: tiny seeded models built from configs, and real servers on loopback ports.
The helpers behind them, which test files import too, are in helpers.py."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import (
    PPO_PROMPTS,
    PPOTask,
    RunningServer,
    build_tiny_causal_lm,
    build_tiny_classifier,
    build_word_level_lm,
    start_server,
    train_word_classifier,
)
from load_report import LoadReport
from postgres_server import postgres_for_tests

# No hub at test time: a hub id must fail fast with a clear message instead of trying a network.
os.environ["HF_HUB_OFFLINE"] = "1"
# A server started without --model serves the seconds-to-build untrained placeholder, not the
# trained default (minutes of training); reward_service.training.default_model.
os.environ.setdefault("REWARD_SERVICE_DEFAULT_MODEL", "untrained")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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


@pytest.fixture(scope="session")
def tiny_causal_lm_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Builds (once per name) a tiny causal LM folder; see build_tiny_causal_lm."""
    built: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("causal-lms")

    def factory(name: str, **kwargs) -> Path:
        if name not in built:
            built[name] = build_tiny_causal_lm(root / name, **kwargs)
        return built[name]

    return factory


@pytest.fixture(scope="module")
def server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., RunningServer]]:
    """Starts servers that live until the end of the test module. Not the session: each server
    holds about 450 MB, and the suite starts about fifty; kept all at once they filled the 24 GB
    of the project's machines and the kernel killed pytest."""
    servers: list[RunningServer] = []
    log_dir = tmp_path_factory.mktemp("servers")

    def factory(args: list[str], **kwargs) -> RunningServer:
        server = start_server(args, log_dir, **kwargs)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def ppo_task(tmp_path_factory: pytest.TempPathFactory) -> PPOTask:
    """The word-level policy, the trained "good" classifier and a prompts file (built once)."""
    root = tmp_path_factory.mktemp("ppo-task")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": prompt}) + "\n" for prompt in PPO_PROMPTS))
    policy, classifier = build_word_level_lm(root / "policy"), train_word_classifier(root / "rm")
    return PPOTask(policy, classifier, prompts)


@pytest.fixture(scope="session")
def load_report() -> Iterator[LoadReport]:
    """The hostile-load scenarios' table (load_report.py), written where REWARD_LOAD_REPORT says
    at the end of the session."""
    report = LoadReport()
    yield report
    report.write_if_asked()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One throwaway PostgreSQL cluster for the whole session (starting one takes seconds): the
    URL of its first database. A test that needs a database of its own makes one on this server
    with ``postgres_server.create_database``. Skips without PostgreSQL (fails with
    REQUIRE_POSTGRES=1)."""
    with postgres_for_tests(skip=pytest.skip, fail=pytest.fail) as url:
        yield url


@pytest.fixture(autouse=True)
def fresh_accelerate_state() -> Iterator[None]:
    """Each test starts with accelerate unconfigured: its state is process-wide, and a trainer
    built in one test (TRL's in bf16, say) would otherwise refuse another's settings."""
    yield
    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
