"""The server on Ray Serve (reward_service/serving/ray_serve.py), on a real local Ray: replicas
that answer exactly as the single server does, over REST and gRPC through Serve's proxies, with
the same errors; a replica killed under load, and replicas scaled up and down, without a failed
call; a PPO run that rides out a replica's death; every replica's metrics summed through Ray's
exporter.

Ray runs in this process (`ray.init(num_cpus=2)`, dashboard off, loopback ports) for the module;
each test deploys the application it needs (`serve.run` replaces the one before). At the end
Ray is shut down, and no process of its session may be left (checked).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import HTTP_TIMEOUT_S, REPO_ROOT, free_port, processes_naming, wait_for
from prometheus_client.parser import text_string_to_metric_families

from policy_trainer.run_log import read_metrics
from reward_service.client import RewardClient
from reward_service.grpc_gen import reward_pb2, reward_pb2_grpc

ray = pytest.importorskip("ray", reason="the `ray` extra is not installed (pip install '.[ray]')")
from gated_replica import HOLD, GatedRewardReplica, held_pids  # noqa: E402
from ray import serve  # noqa: E402
from ray.serve.config import HTTPOptions, gRPCOptions  # noqa: E402

from reward_service.serving import ray_serve  # noqa: E402
from reward_service.serving.settings import ServeSettings  # noqa: E402

pytestmark = pytest.mark.ray

API_KEY = "serve-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
GRPC_AUTH = (("authorization", f"Bearer {API_KEY}"),)
# Both servers take the same limits, small enough for the error cases to reach them cheaply; one
# item per forward pass (docs/serving.md, Determinism): how the engine splits a request into
# batches depends on what it measured of the machine, and an item's reward on its batch's padding.
LIMITS = {"max_items_per_request": 64, "max_batch_size": 1}
MAX_BODY_BYTES = 64 * 1024
GRPC_MAX_MESSAGE_BYTES = 64 * 1024
# Half a CPU each: two replicas and Serve's actors fit in `num_cpus=2` with room for a third
# (a replacement starts while the replica it replaces is still being cleaned up).
REPLICA_CPUS = 0.5
TEXTS = [
    "great movie",
    "a dull, lifeless film that never finds its rhythm",
    "I would watch it again tomorrow!",
    "word " * 400,  # truncated to the tiny model's 128 positions
]


def replica_pids() -> set[int]:
    """The PIDs of the running replica processes (Ray titles each worker after its actor)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if command.startswith(f"ray::ServeReplica:{ray_serve.APP_NAME}:"):
            found.add(int(entry.name))
    return found


def running_replicas() -> int:
    application = serve.status().applications.get(ray_serve.APP_NAME)
    if application is None:
        return 0
    deployment = application.deployments[ray_serve.DEPLOYMENT_NAME]
    return deployment.replica_states.get("RUNNING", 0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[dict[str, int]]:
    """A local Ray with Serve's HTTP and gRPC proxies on free loopback ports."""
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    tests = str(Path(__file__).parent)
    python_path = os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))
    context = ray.init(
        num_cpus=2,
        include_dashboard=False,
        _metrics_export_port=ports["metrics"],
        logging_level="WARNING",
        # The replicas import gated_replica.py from here.
        runtime_env={"env_vars": {"PYTHONPATH": python_path}},
    )
    session_dir = context.address_info["session_dir"]
    try:
        serve.start(
            http_options=HTTPOptions(host="127.0.0.1", port=ports["http"]),
            grpc_options=gRPCOptions(
                port=ports["grpc"], grpc_servicer_functions=list(ray_serve.GRPC_SERVICER_FUNCTIONS)
            ),
        )
        yield ports
    finally:
        serve.shutdown()
        ray.shutdown()
    wait_for(lambda: not processes_naming(session_dir), "every Ray process to exit", 60)


def deploy(
    folder: Path, gate_dir: Path | None = None, batching: dict | None = None, **ray_options
) -> None:
    """`reward-service serve --ray`'s application for `folder`, replacing the one before; returns
    once every replica is running. `gate_dir`: replicas whose forward passes the test can hold
    (gated_replica.py). `batching`: over LIMITS."""
    settings = ServeSettings(
        models=[f"tiny={folder}"],
        batching={**LIMITS, **(batching or {})},
        max_body_bytes=MAX_BODY_BYTES,
        max_body_bytes_in_flight=4 * MAX_BODY_BYTES,
        grpc_max_message_bytes=GRPC_MAX_MESSAGE_BYTES,
        ray_serve={"num_cpus": REPLICA_CPUS, **ray_options},
    )
    if gate_dir is None:
        application = ray_serve.application(settings, API_KEY)
    else:
        deployment = serve.deployment(**ray_serve.deployment_options(settings))
        application = deployment(serve.ingress()(GatedRewardReplica)).bind(
            ray_serve.replica_values(settings), API_KEY, str(gate_dir)
        )
    serve.run(application, name=ray_serve.APP_NAME, route_prefix="/")


@pytest.fixture(scope="module")
def folder(tiny_model_factory) -> Path:
    return tiny_model_factory("ray-serve", labels=["NEGATIVE", "POSITIVE"])


@pytest.fixture(scope="module")
def single(server_factory, folder):
    """The single server, with the same model and limits, to compare with."""
    return server_factory(
        [
            "--model",
            f"tiny={folder}",
            "--api-key",
            API_KEY,
            "--max-items-per-request",
            str(LIMITS["max_items_per_request"]),
            "--max-batch-size",
            str(LIMITS["max_batch_size"]),
            "--max-body-bytes",
            str(MAX_BODY_BYTES),
            "--max-body-bytes-in-flight",
            str(4 * MAX_BODY_BYTES),
            "--grpc-max-message-bytes",
            str(GRPC_MAX_MESSAGE_BYTES),
        ]
    )


@pytest.fixture(scope="module")
def two_replicas(cluster, folder) -> dict[str, str]:
    deploy(folder, num_replicas=2)
    return deployment_urls(cluster)


def deployment_urls(cluster: dict[str, int]) -> dict[str, str]:
    return {"url": f"http://127.0.0.1:{cluster['http']}", "grpc": f"127.0.0.1:{cluster['grpc']}"}


def grpc_stub(target: str) -> reward_pb2_grpc.RewardServiceStub:
    return reward_pb2_grpc.RewardServiceStub(grpc.insecure_channel(target))


def worker_samples(metrics_port: int, name: str, **labels: str) -> dict[str, float]:
    """One metric's value in each Ray worker that exports it (Ray's WorkerId label)."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=HTTP_TIMEOUT_S).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                worker = sample.labels["WorkerId"]
                values[worker] = values.get(worker, 0.0) + sample.value
    return values


def test_two_replicas_answer_exactly_as_the_single_server_and_ray_sums_their_metrics(
    two_replicas, single, cluster
):
    stub, single_stub = grpc_stub(two_replicas["grpc"]), grpc_stub(single.grpc_target)
    calls = 24
    for call in range(calls):
        # One item per forward pass on both servers: the same numbers, to the last bit.
        texts = [f"{text} {call}" for text in TEXTS[: 1 + call % len(TEXTS)]]
        served = httpx.post(
            f"{two_replicas['url']}/v1/score", json={"texts": texts}, headers=AUTH, timeout=60
        )
        expected = httpx.post(
            f"{single.url}/v1/score", json={"texts": texts}, headers=AUTH, timeout=60
        )
        assert served.status_code == 200, served.text
        assert served.json() == expected.json()

        request = reward_pb2.ScoreRequest(texts=texts)
        assert stub.Score(request, metadata=GRPC_AUTH, timeout=60) == single_stub.Score(
            request, metadata=GRPC_AUTH, timeout=60
        )

        openrlhf = {"query": texts}
        assert (
            httpx.post(
                f"{two_replicas['url']}/get_reward", json=openrlhf, headers=AUTH, timeout=60
            ).json()
            == httpx.post(
                f"{single.url}/get_reward", json=openrlhf, headers=AUTH, timeout=60
            ).json()
        )

    streamed = stub.ScoreStream(
        iter(reward_pb2.ScoreRequest(texts=[text]) for text in TEXTS),
        metadata=GRPC_AUTH,
        timeout=60,
    )
    assert [list(r.rewards) for r in streamed] == [
        list(single_stub.Score(reward_pb2.ScoreRequest(texts=[t]), metadata=GRPC_AUTH).rewards)
        for t in TEXTS
    ]

    # Both replicas answered, and Ray's exporter holds each one's count: summed, every call.
    def rest_scores() -> dict[str, float]:
        return worker_samples(
            cluster["metrics"], "ray_reward_requests_total", route="/v1/score", status="200"
        )

    wait_for(lambda: sum(rest_scores().values()) == calls, "Ray to export every replica's count")
    per_replica = rest_scores()
    assert len(per_replica) == 2 and all(count > 0 for count in per_replica.values())
    grpc_scores = worker_samples(
        cluster["metrics"], "ray_reward_requests_total", transport="grpc", status="OK"
    )
    assert sum(grpc_scores.values()) == calls + len(TEXTS)


REST_ERRORS = [
    ("empty texts", {"json": {"texts": []}}),
    (
        "malformed JSON",
        {"content": b'{"texts": [', "headers": {"content-type": "application/json"}},
    ),
    ("unknown field", {"json": {"texts": ["a"], "txets": ["b"]}}),
    ("too many items", {"json": {"texts": ["x"] * 65}}),
    ("body too large", {"json": {"texts": ["x" * (MAX_BODY_BYTES + 1)]}}),
    ("unknown model", {"json": {"model": "no-such-model", "texts": ["a"]}}),
    ("no API key", {"json": {"texts": ["a"]}, "headers": {}}),
]


def rest_error(url: str, request: dict) -> tuple[int, str | None]:
    headers = request.get("headers", AUTH)
    if request.get("content") is not None:
        headers = {**AUTH, **headers}
    response = httpx.post(
        f"{url}/v1/score",
        json=request.get("json"),
        content=request.get("content"),
        headers=headers,
        timeout=60,
    )
    return response.status_code, response.json()["error"]["type"]


GRPC_ERRORS = [
    ("no input", reward_pb2.ScoreRequest(), GRPC_AUTH),
    ("too many items", reward_pb2.ScoreRequest(texts=["x"] * 65), GRPC_AUTH),
    ("unknown model", reward_pb2.ScoreRequest(model="no-such-model", texts=["a"]), GRPC_AUTH),
    ("message too large", reward_pb2.ScoreRequest(texts=["x" * GRPC_MAX_MESSAGE_BYTES]), GRPC_AUTH),
    ("no API key", reward_pb2.ScoreRequest(texts=["a"]), ()),
]


def grpc_error(stub, request, metadata) -> tuple[grpc.StatusCode, str | None]:
    with pytest.raises(grpc.RpcError) as raised:
        stub.Score(request, metadata=metadata, timeout=60)
    error = raised.value
    return error.code(), dict(error.trailing_metadata() or ()).get("reward-error-type")


def test_bad_requests_get_the_single_servers_errors_and_the_replicas_keep_serving(
    two_replicas, single
):
    for case, request in REST_ERRORS:
        expected = rest_error(single.url, request)
        assert expected[0] >= 400, case
        assert rest_error(two_replicas["url"], request) == expected, case
    stub, single_stub = grpc_stub(two_replicas["grpc"]), grpc_stub(single.grpc_target)
    for case, request, metadata in GRPC_ERRORS:
        code, kind = grpc_error(stub, request, metadata)
        expected_code, expected_kind = grpc_error(single_stub, request, metadata)
        assert code == expected_code, case
        assert kind == expected_kind, case
    assert stub.Score(reward_pb2.ScoreRequest(texts=["still"]), metadata=GRPC_AUTH).rewards


def health_answer(target: str, service: str) -> tuple[grpc.StatusCode, int]:
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(target))
    try:
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=60)
    except grpc.RpcError as error:
        return error.code(), -1
    return grpc.StatusCode.OK, answer.status


def test_grpc_health_through_serves_proxy_answers_as_the_single_server(two_replicas, single):
    for service in ("", "reward.v1.RewardService", "tiny", "no-such-model"):
        expected = health_answer(single.grpc_target, service)
        assert health_answer(two_replicas["grpc"], service) == expected, service
    assert health_answer(two_replicas["grpc"], "tiny")[1] == health_pb2.HealthCheckResponse.SERVING


def test_a_grpc_deadline_reaches_the_replica_as_metadata_and_a_late_call_is_dropped(
    cluster, folder, tmp_path
):
    """Serve's gRPC proxy drops gRPC's own deadline: the call here sets none, only the metadata
    the client sends (`x-request-timeout-ms`); its item, queued behind a held forward pass until
    its deadline has passed, is dropped by the replica (DEADLINE_EXCEEDED), not scored late."""
    deploy(folder, gate_dir=tmp_path, num_replicas=1)
    stub = grpc_stub(deployment_urls(cluster)["grpc"])
    request = reward_pb2.ScoreRequest(texts=["a review"])
    (tmp_path / HOLD).touch()
    with ThreadPoolExecutor(2) as calls:
        first = calls.submit(stub.Score, request, metadata=GRPC_AUTH)
        wait_for(lambda: held_pids(tmp_path), "the first call's forward pass to be held")
        deadline_ms = 200
        sent = time.monotonic()
        late = calls.submit(
            stub.Score, request, metadata=(*GRPC_AUTH, ("x-request-timeout-ms", str(deadline_ms)))
        )
        # Its deadline passes while the forward pass ahead of it is held (a clock the test
        # waits on, not a guess at how long anything takes).
        wait_for(lambda: time.monotonic() > sent + 2 * deadline_ms / 1000, "the deadline")
        (tmp_path / HOLD).unlink()
        assert first.result(timeout=60).rewards
        with pytest.raises(grpc.RpcError) as dropped:
            late.result(timeout=60)
    assert dropped.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_full_replica_queue_answers_429_and_resource_exhausted_and_loses_nothing_admitted(
    cluster, folder, tmp_path
):
    """The back-pressure of the single server (tests/test_rest_api.py), through Serve: one
    replica whose queue holds 4 items, its forward pass held with 4 admitted; then REST answers
    429 queue_full with Retry-After and gRPC RESOURCE_EXHAUSTED, and the admitted are scored."""
    deploy(
        folder,
        gate_dir=tmp_path,
        batching={"max_queue_items": 4, "max_items_per_request": 4},
        num_replicas=1,
    )
    urls = deployment_urls(cluster)
    texts = [f"review {i}" for i in range(4)]
    (tmp_path / HOLD).touch()
    with ThreadPoolExecutor(1) as calls:
        admitted = calls.submit(
            httpx.post, f"{urls['url']}/v1/score", json={"texts": texts}, headers=AUTH, timeout=60
        )
        wait_for(lambda: held_pids(tmp_path), "the admitted request's forward pass to be held")
        refused = httpx.post(
            f"{urls['url']}/v1/score", json={"texts": texts}, headers=AUTH, timeout=60
        )
        code, kind = grpc_error(
            grpc_stub(urls["grpc"]), reward_pb2.ScoreRequest(texts=texts), GRPC_AUTH
        )
        (tmp_path / HOLD).unlink()
        assert admitted.result(timeout=60).status_code == 200
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["type"] == "queue_full"
    assert int(refused.headers["retry-after"]) >= 1
    assert (code, kind) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue_full")


class Load:
    """Client threads that score until stopped, counting their calls and keeping every error."""

    def __init__(self, clients: list[RewardClient]) -> None:
        self.clients = clients
        self.done = [0] * len(clients)
        self.failures: list[BaseException] = []
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._score, args=(index,), daemon=True)
            for index in range(len(clients))
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def _score(self, index: int) -> None:
        client = self.clients[index]
        while not self.stopping.is_set():
            texts = [f"{text} {index} {self.done[index]}" for text in TEXTS[:3]]
            try:
                assert len(client.score(texts=texts)) == len(texts)
            except BaseException as error:  # noqa: BLE001 (every failure is the test's finding)
                self.failures.append(error)
            self.done[index] += 1

    def wait_for_calls(self, calls: int) -> None:
        """Until every thread has made `calls` more calls than now."""
        targets = [done + calls for done in self.done]
        wait_for(
            lambda: (
                all(done >= target for done, target in zip(self.done, targets, strict=True))
                or bool(self.failures)
            ),
            f"{calls} more calls from every client thread",
        )

    def __exit__(self, *exc_info) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=120)
        for client in self.clients:
            client.close()


def clients_of(deployment: dict[str, str]) -> list[RewardClient]:
    """Two REST and two gRPC clients, as a PPO run would use them (retries on)."""
    urls = [deployment["url"], f"grpc://{deployment['grpc']}"] * 2
    return [RewardClient(url, api_key=API_KEY, timeout_s=60) for url in urls]


def kill_a_replica_holding_a_call(gate_dir: Path) -> int:
    """Holds every forward pass, waits until a replica holds one (a call in flight there),
    SIGKILLs that replica and lets the rest run on; returns its PID."""
    (gate_dir / HOLD).touch()
    wait_for(lambda: held_pids(gate_dir) & replica_pids(), "a replica holding a call")
    victim = min(held_pids(gate_dir) & replica_pids())
    os.kill(victim, signal.SIGKILL)  # no goodbye: its calls in flight are lost with it
    (gate_dir / HOLD).unlink()
    return victim


def test_a_replica_killed_with_calls_in_flight_costs_no_call_and_is_replaced(
    cluster, folder, tmp_path
):
    deploy(folder, gate_dir=tmp_path, num_replicas=2)
    wait_for(lambda: len(replica_pids()) == 2, "two replica processes")
    before = replica_pids()
    with Load(clients_of(deployment_urls(cluster))) as load:
        load.wait_for_calls(3)
        victim = kill_a_replica_holding_a_call(tmp_path)
        wait_for(
            lambda: running_replicas() == 2 and len(replica_pids() - before) == 1,
            "a new replica in place of the killed one",
        )
        load.wait_for_calls(5)  # the replacement serves too
    assert load.failures == []
    assert victim not in replica_pids()


def test_replicas_scale_up_under_load_and_back_down_without_a_failed_call(cluster, folder):
    deploy(
        folder,
        min_replicas=1,
        max_replicas=2,
        target_ongoing_requests=1,
        upscale_delay_s=0,
        downscale_delay_s=1,
        look_back_period_s=11,
    )
    deployment = {
        "url": f"http://127.0.0.1:{cluster['http']}",
        "grpc": f"127.0.0.1:{cluster['grpc']}",
    }
    assert running_replicas() == 1
    with Load(clients_of(deployment)) as load:
        wait_for(lambda: running_replicas() == 2 or bool(load.failures), "a second replica")
        load.wait_for_calls(3)
    assert load.failures == []
    # One client keeps calling while the idle replica drains and goes.
    with Load(clients_of(deployment)[:1]) as light:
        wait_for(lambda: running_replicas() == 1 or bool(light.failures), "back to one replica")
        light.wait_for_calls(3)
    assert light.failures == []


def test_a_ppo_run_through_serve_rides_out_a_replica_killed_mid_run(cluster, ppo_task, tmp_path):
    deploy(ppo_task.classifier, gate_dir=tmp_path, num_replicas=2)
    wait_for(lambda: len(replica_pids()) == 2, "two replica processes")
    run_dir, steps = tmp_path / "run", 6
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "policy_trainer.cli",
            *ppo_task.cli_args(
                f"http://127.0.0.1:{cluster['http']}", run_dir, steps=steps, checkpoint_every=0
            ),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "REWARD_SERVICE_API_KEY": API_KEY},
        text=True,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(
            lambda: len(read_metrics(run_dir)) >= 2 or process.poll() is not None,
            "two PPO steps",
        )
        logged_at_kill = len(read_metrics(run_dir))
        kill_a_replica_holding_a_call(tmp_path)  # the next step's scoring call
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr[-3000:]
    assert logged_at_kill < steps  # the kill came before the run was over
    assert [entry["step"] for entry in read_metrics(run_dir)] == list(range(1, steps + 1))
