"""Every manifest under k8s/ passes the KubeRay CRD schemas; the kustomizations hold together."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from rayworker.notify import load_notify_config
from rayworker.rules import builtin_pack, load_overrides
from rayworker.settings import Settings, load_settings
from tests.deploy import crd_schemas
from tests.deploy.manifests import (
    EXAMPLE_SECRETS,
    K8S,
    ROOT,
    Doc,
    applied_docs,
    docs,
    kustomizations,
    listed_resources,
    manifest_files,
    ray_docs,
    read_yaml,
)

SHARED_CRDS = ROOT.parent / "shared" / "schemas" / "kuberay"
_RAY_DOCS = ray_docs()


@functools.cache
def _validator(kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(crd_schemas.strict_schema(kind))


def _errors(doc: Doc) -> list[str]:
    validator = _validator(doc.kind)
    return [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(doc.body)
    ]


def test_the_manifests_hold_all_three_kinds() -> None:
    """k8s/ has a RayCluster (development), a RayService (production) and a RayJob (backtests)."""
    assert sorted(d.kind for d in _RAY_DOCS) == ["RayCluster", "RayJob", "RayService"]


@pytest.mark.parametrize("doc", _RAY_DOCS, ids=lambda d: d.label)
def test_ray_manifest_matches_its_crd_schema(doc: Doc) -> None:
    """Each Ray manifest uses ray.io/v1 and passes its CRD schema with unknown fields refused."""
    assert doc.body["apiVersion"] == crd_schemas.API_VERSION
    assert _errors(doc) == []


def test_strict_schema_refuses_a_misspelt_field() -> None:
    """The strict schema catches a typo the API server's strict field validation would reject."""
    (service,) = [d for d in _RAY_DOCS if d.kind == "RayService"]
    body: dict[str, Any] = yaml.safe_load(yaml.safe_dump(service.body))
    body["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplica"] = 1
    errors = _errors(Doc(service.path, service.index, body))
    assert any("minReplica" in e for e in errors)


@pytest.mark.skipif(not SHARED_CRDS.is_dir(), reason="../shared/schemas/kuberay is not here")
@pytest.mark.parametrize("kind", sorted(crd_schemas.KINDS))
def test_committed_schema_equals_the_shared_crd(kind: str) -> None:
    """The schema copies in tests/deploy/schemas are exactly the shared CRDs' v1 schemas."""
    text = (SHARED_CRDS / f"ray.io_{crd_schemas.KINDS[kind]}.yaml").read_text(encoding="utf-8")
    crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd_schemas.extract(crd) == crd_schemas.load(kind)


@pytest.mark.parametrize("kustomization", kustomizations(), ids=lambda p: str(p.relative_to(K8S)))
def test_kustomization_files_exist(kustomization: Path) -> None:
    """Every resource, generator file and configuration a kustomization names exists."""
    data = read_yaml(kustomization)
    base = kustomization.parent
    named = [*data.get("resources", []), *data.get("configurations", [])]
    for generator in data.get("configMapGenerator", []) + data.get("secretGenerator", []):
        named += generator.get("envs", []) + generator.get("files", [])
    missing = [name for name in named if not (base / name).is_file()]
    assert named
    assert missing == []


def test_every_manifest_is_in_exactly_one_kustomization() -> None:
    """Each manifest under k8s/ is listed by one kustomization; the secrets example by none."""
    listed = [p for k in kustomizations() for p in listed_resources(k)]
    assert sorted(listed) == sorted(p.resolve() for p in manifest_files())
    assert EXAMPLE_SECRETS.resolve() not in listed


def test_kustomize_configurations_are_identical_copies() -> None:
    """The kustomizeconfig.yaml beside each kustomization says the same thing."""
    texts = {p.read_text(encoding="utf-8") for p in K8S.rglob("kustomizeconfig.yaml")}
    assert len(texts) == 1


def test_no_secret_values_are_applied() -> None:
    """No kustomization applies a Secret with data or generates one from literals."""
    secrets = [d.label for d in applied_docs() if d.kind == "Secret"]
    generated = [read_yaml(k).get("secretGenerator") for k in kustomizations()]
    assert secrets == []
    assert not any(generated)


def _secret_refs(node: Any) -> set[tuple[str, str]]:
    if isinstance(node, dict):
        found: set[tuple[str, str]] = set()
        ref = node.get("secretKeyRef")
        if isinstance(ref, dict):
            found.add((ref["name"], ref["key"]))
        for value in node.values():
            found |= _secret_refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_secret_refs(v) for v in node)) if node else set()
    return set()


def test_secret_references_are_documented_by_the_example() -> None:
    """Every secretKeyRef names a key that secrets.example.yaml documents."""
    (example,) = docs(EXAMPLE_SECRETS)
    documented = {(example.body["metadata"]["name"], k) for k in example.body["stringData"]}
    referenced = set().union(*(_secret_refs(d.body) for d in applied_docs()))
    assert referenced
    assert referenced <= documented


def _env_files() -> list[Path]:
    files: list[Path] = []
    for kustomization in kustomizations():
        for generator in read_yaml(kustomization).get("configMapGenerator", []):
            files += [kustomization.parent / e for e in generator.get("envs", [])]
    return files


def _env_file_values(path: Path) -> dict[str, str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return dict(pairs)


@pytest.mark.parametrize("env_file", _env_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_settings_files_are_valid_rayworker_settings(
    env_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings ConfigMap's variables plus the Secret's DSNs load as rayworker Settings."""
    for name in [k for k in os.environ if k.startswith("RAYWORKER_")]:
        monkeypatch.delenv(name)
    values = _env_file_values(env_file)
    assert values
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RAYWORKER_ALERTS_DSN", "postgresql://rayworker:pw@postgres:5432/rayworker")
    monkeypatch.setenv("RAYWORKER_METRICS_URL", "redis://:pw@redis:6379/0")
    monkeypatch.setenv("RAYWORKER_STREAM_URL", "redis://:pw@redis:6379/0")
    settings = load_settings()
    assert settings.alerts_backend == "postgresql"
    assert settings.metrics_backend == "redis"
    assert settings.source == "redis"


def _env_names(node: Any) -> set[str]:
    if isinstance(node, dict):
        named = "name" in node and ("valueFrom" in node or "value" in node)
        names = {str(node["name"])} if named else set()
        return names.union(*(_env_names(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_env_names(v) for v in node)) if node else set()
    return set()


def test_manifest_environment_names_are_settings() -> None:
    """Every RAYWORKER_* variable a manifest sets names a real setting."""
    names = {n for d in applied_docs() for n in _env_names(d.body) if n.startswith("RAYWORKER_")}
    fields = {n.removeprefix("RAYWORKER_").lower().split("__")[0] for n in names}
    assert names
    assert fields <= Settings.model_fields.keys()


def test_shipped_overrides_load_on_the_builtin_rules() -> None:
    """The overrides file the rules ConfigMap ships is valid for the built-in pack."""
    overrides = load_overrides(K8S / "rules" / "overrides.yaml", builtin_pack())
    assert overrides is not None


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
@pytest.mark.parametrize("kustomization", kustomizations(), ids=lambda p: str(p.relative_to(K8S)))
def test_kustomize_output_is_valid_and_fully_linked(kustomization: Path) -> None:
    """`kubectl kustomize` renders valid Ray resources whose ConfigMap names all resolve."""
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(kustomization.parent)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    bodies = [d for d in yaml.safe_load_all(rendered) if d]
    config_maps = {b["metadata"]["name"] for b in bodies if b["kind"] == "ConfigMap"}
    for index, body in enumerate(bodies):
        doc = Doc(kustomization, index, body)
        if doc.kind in crd_schemas.KINDS:
            assert _errors(doc) == []
            assert _config_map_refs(body) <= config_maps
            assert body["metadata"]["labels"]["app.kubernetes.io/part-of"] == "rayworker"


def _config_map_refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found: set[str] = set()
        for key in ("configMapRef", "configMap", "configMapKeyRef"):
            ref = node.get(key)
            if isinstance(ref, dict) and "name" in ref:
                found.add(ref["name"])
        return found.union(*(_config_map_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_config_map_refs(v) for v in node)) if node else set()
    return set()


def test_shipped_notification_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The notification config the rules ConfigMap ships is valid, and keeps undelivered
    notifications in a Redis stream (the Secret's stream URL), not in a pod's file."""
    monkeypatch.setenv("RAYWORKER_STREAM_URL", "redis://:pw@redis:6379/0")
    config = load_notify_config(K8S / "rules" / "notify.yaml")
    assert config.dead_letter.redis_url is not None
    assert config.dead_letter.redis_url.get_secret_value() == "redis://:pw@redis:6379/0"
    settings = _env_file_values(K8S / "rayworker.env")
    assert settings["RAYWORKER_NOTIFY_PATH"] == "/etc/rayworker/rules/notify.yaml"
