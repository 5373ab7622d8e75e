"""The KubeRay CRD schemas the deployment tests validate against, and how they were made.

``schemas/{raycluster,rayservice,rayjob}.v1.json`` are the ``openAPIV3Schema`` of the ``v1``
version of ``ray.io_{rayclusters,rayservices,rayjobs}.yaml`` (KubeRay after v1.7.0, commit
feeaf72, Apache-2.0), with descriptions dropped. Regenerate them from a newer copy with::

    python -m tests.deploy.crd_schemas ../shared/schemas/kuberay

:func:`strict_schema` turns a CRD schema into a JSON Schema that rejects what the API server
rejects under ``kubectl``'s default strict field validation: unknown fields, and ``null`` where
the field is not ``nullable``.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml

SCHEMA_DIR = Path(__file__).parent / "schemas"
API_VERSION = "ray.io/v1"
KINDS = {"RayCluster": "rayclusters", "RayService": "rayservices", "RayJob": "rayjobs"}


def schema_path(kind: str) -> Path:
    """The committed schema file of ``kind``."""
    return SCHEMA_DIR / f"{kind.lower()}.v1.json"


def extract(crd: dict[str, Any]) -> dict[str, Any]:
    """The ``v1`` openAPIV3Schema of a CRD document, without descriptions."""
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _drop_descriptions(version["schema"]["openAPIV3Schema"])


def _drop_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_drop_descriptions(v) for v in node]
    return node


def load(kind: str) -> dict[str, Any]:
    """The committed CRD schema of ``kind`` (as the API server holds it)."""
    data: dict[str, Any] = json.loads(schema_path(kind).read_text(encoding="utf-8"))
    return data


def strict_schema(kind: str) -> dict[str, Any]:
    """The CRD schema of ``kind`` as a JSON Schema with strict field validation."""
    return _strict(copy.deepcopy(load(kind)))


def _strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def main(argv: list[str]) -> int:
    """Rewrite the committed schemas from a directory holding the KubeRay CRD files."""
    source = Path(argv[0] if argv else "../shared/schemas/kuberay")
    for kind, plural in KINDS.items():
        crd = yaml.safe_load((source / f"ray.io_{plural}.yaml").read_text(encoding="utf-8"))
        text = json.dumps(extract(crd), separators=(",", ":"), sort_keys=True) + "\n"
        schema_path(kind).write_text(text, encoding="utf-8")
        print(f"{schema_path(kind)}: {len(text):,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
