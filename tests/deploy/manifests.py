"""Reading the deployment files: manifests under k8s/, kustomizations, pins, quantities."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
EXAMPLE_SECRETS = K8S / "secrets.example.yaml"
CLUSTER_FILES = (ROOT / "cluster.yaml", ROOT / "cluster-local.yaml")
CLUSTER_ROOTS = {"RayCluster": ("spec",), "RayService": ("spec", "rayClusterConfig")}
CLUSTER_ROOTS["RayJob"] = ("spec", "rayClusterSpec")


@dataclass(frozen=True)
class Doc:
    """One YAML document of a manifest file."""

    path: Path
    index: int
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        """The document's kind."""
        return str(self.body.get("kind"))

    @property
    def label(self) -> str:
        """``file#n Kind/name`` for test ids and messages."""
        name = self.body.get("metadata", {}).get("name")
        return f"{self.path.relative_to(ROOT)}#{self.index} {self.kind}/{name}"


def kustomizations() -> list[Path]:
    """Every kustomization.yaml under k8s/."""
    return sorted(K8S.rglob("kustomization.yaml"))


def read_yaml(path: Path) -> Any:
    """One YAML document."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def docs(path: Path) -> list[Doc]:
    """The non-empty documents of a manifest file."""
    text = path.read_text(encoding="utf-8")
    return [Doc(path, i, d) for i, d in enumerate(yaml.safe_load_all(text)) if d]


def listed_resources(kustomization: Path) -> list[Path]:
    """The resource files a kustomization lists (resolved)."""
    data = read_yaml(kustomization)
    return [(kustomization.parent / r).resolve() for r in data.get("resources", [])]


def manifest_files() -> list[Path]:
    """Every manifest under k8s/: YAML files that are not kustomize config, rules or examples."""
    skip = {"kustomization.yaml", "kustomizeconfig.yaml"}
    return sorted(
        p
        for p in K8S.rglob("*.yaml")
        if p.name not in skip and p != EXAMPLE_SECRETS and "rules" not in p.parts
    )


def applied_docs() -> list[Doc]:
    """Every document some kustomization applies."""
    return [d for k in kustomizations() for p in listed_resources(k) for d in docs(p)]


def ray_docs() -> list[Doc]:
    """The RayCluster, RayService and RayJob documents under k8s/."""
    return [d for p in manifest_files() for d in docs(p) if d.kind in CLUSTER_ROOTS]


def cluster_spec(doc: Doc) -> dict[str, Any]:
    """The RayCluster spec inside a RayCluster, RayService or RayJob."""
    node: Any = doc.body
    for key in CLUSTER_ROOTS[doc.kind]:
        node = node[key]
    return dict(node)


def pod_groups(doc: Doc) -> Iterator[tuple[str, dict[str, Any]]]:
    """(group name, group spec) of the head and every worker group."""
    spec = cluster_spec(doc)
    yield "head", spec["headGroupSpec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group


def ray_pin() -> str:
    """The Ray version pinned in pyproject.toml (``ray[serve]==X``)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for dep in deps["dependencies"]:
        match = re.fullmatch(r"ray(\[[^\]]*\])?==([0-9.]+)", dep.replace(" ", ""))
        if match:
            return match.group(2)
    msg = "pyproject.toml pins no ray version"
    raise AssertionError(msg)


_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def quantity_bytes(value: str | int) -> int:
    """A Kubernetes memory quantity (``640Mi``, ``2Gi``, ``536870912``) in bytes."""
    match = re.fullmatch(r"([0-9]+)([kMG]i?|)", str(value))
    if match is None:
        msg = f"unsupported quantity {value!r}"
        raise AssertionError(msg)
    return int(match.group(1)) * _UNITS[match.group(2)]
