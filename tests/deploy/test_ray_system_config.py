"""Every way of starting rayworker's Ray cluster applies the same Ray settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from rayworker.pipeline.runtime import SYSTEM_CONFIG
from tests.deploy.manifests import CLUSTER_FILES, Doc, pod_groups, ray_docs, read_yaml

_PIPELINE_DOCS = [d for d in ray_docs() if d.kind in ("RayCluster", "RayService")]


def test_workers_keep_normal_priority() -> None:
    """A local cluster does not let Ray renice its workers (the router and shards) to 15."""
    assert SYSTEM_CONFIG["worker_niceness"] == 0


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_launcher_starts_ray_with_the_system_config(path: Path) -> None:
    """Head and worker `ray start` commands set each SYSTEM_CONFIG entry as RAY_<name>."""
    config: dict[str, Any] = read_yaml(path)
    for section in ("head_start_ray_commands", "worker_start_ray_commands"):
        (start,) = [c for c in config[section] if "ray start" in c]
        for name, value in SYSTEM_CONFIG.items():
            assert re.search(rf"\bRAY_{name}={value}\s", start), f"{section} lacks RAY_{name}"


@pytest.mark.parametrize("doc", _PIPELINE_DOCS, ids=lambda d: d.label)
def test_kuberay_pods_set_the_system_config(doc: Doc) -> None:
    """Each pod group's Ray container sets each SYSTEM_CONFIG entry as a RAY_<name> variable."""
    for group_name, group in pod_groups(doc):
        container = group["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        for name, value in SYSTEM_CONFIG.items():
            assert env.get(f"RAY_{name}") == str(value), f"{group_name} lacks RAY_{name}"
