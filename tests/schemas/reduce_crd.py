"""Reduces a CustomResourceDefinition to the openAPIV3Schema of its served storage version, as
compact JSON without descriptions, for tests/test_kubernetes_manifests.py. The RayService schema
there came from KubeRay v1.7.0 (commit 59d663aeec13760646da3db9c1cf8cfe883e30b7); regenerate it
with (for a newer KubeRay, another TAG):

    git clone https://github.com/ray-project/kuberay
    TAG=v1.7.0 CRD=ray-operator/config/crd/bases/ray.io_rayservices.yaml
    git -C kuberay show "$TAG:$CRD" | .venv/bin/python tests/schemas/reduce_crd.py \
        "ray-project/kuberay $TAG ($(git -C kuberay rev-parse --short=8 "$TAG^{commit}")), $CRD" \
        > tests/schemas/rayservice-v1.schema.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml


def without_descriptions(node: Any) -> Any:
    # A property may be *named* description (an object's field): only the prose strings go.
    if isinstance(node, dict):
        return {
            key: without_descriptions(value)
            for key, value in node.items()
            if not (key == "description" and isinstance(value, str))
        }
    if isinstance(node, list):
        return [without_descriptions(value) for value in node]
    return node


def reduced(crd: dict[str, Any], source: str) -> dict[str, Any]:
    (version,) = (v for v in crd["spec"]["versions"] if v["served"] and v["storage"])
    schema = without_descriptions(version["schema"]["openAPIV3Schema"])
    kind = crd["spec"]["names"]["kind"]
    comment = f"{kind} {crd['spec']['group']}/{version['name']} openAPIV3Schema from {source}"
    return {"$comment": comment, **schema}


if __name__ == "__main__":
    schema = reduced(yaml.safe_load(sys.stdin), sys.argv[1])
    sys.stdout.write(json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n")
