"""cluster.yaml and cluster-local.yaml are configs `ray up` of the pinned Ray accepts."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.deploy.manifests import CLUSTER_FILES, ROOT, ray_pin, read_yaml

RAY_SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


def _config(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = read_yaml(path)
    return data


def _ray_start(commands: list[str]) -> str:
    (start,) = [c for c in commands if "ray start" in c]
    return start


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_config_matches_the_wheels_ray_schema(path: Path) -> None:
    """The file passes the ray-schema.json that the installed ray wheel ships."""
    schema = json.loads(RAY_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.validate(_config(path), schema)


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_ray_up_prepares_and_validates_the_config(path: Path) -> None:
    """Ray's own preparation (defaults, node types) and validation accept the file."""
    prepared = prepare_config(copy.deepcopy(_config(path)))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_head_avoids_redis_port_and_workers_follow_it(path: Path) -> None:
    """The GCS listens on a port other than 6379, and workers join on that same port."""
    config = _config(path)
    head = _ray_start(config["head_start_ray_commands"])
    worker = _ray_start(config["worker_start_ray_commands"])
    port = re.search(r"--port=(\d+)", head)
    assert port is not None
    assert port.group(1) != "6379"
    assert f"--address=$RAY_HEAD_IP:{port.group(1)}" in worker
    assert "--head" in head
    assert "--num-cpus=0" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert config["head_start_ray_commands"][0] == "ray stop"
    assert config["worker_start_ray_commands"][0] == "ray stop"


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_nodes_run_the_pinned_ray_and_install_this_checkout(path: Path) -> None:
    """Nodes use the pinned Ray image, and setup installs the mounted repository into it."""
    config = _config(path)
    pin = ray_pin()
    assert config["docker"]["image"] == f"rayproject/ray:{pin}-py311"
    assert config["file_mounts"] == {"~/rayworker": "."}
    setup = " && ".join(config["setup_commands"])
    assert f"ray=={pin}" in setup
    assert "pip install" in setup
    assert "~/rayworker" in setup
    assert (ROOT / "pyproject.toml").is_file()


def test_local_provider_keeps_every_listed_node() -> None:
    """On-prem: min/max workers follow worker_ips, so adding a node is adding its address."""
    config = _config(ROOT / "cluster-local.yaml")
    assert config["provider"]["type"] == "local"
    assert "min_workers" not in config
    assert "max_workers" not in config
    grown = copy.deepcopy(config)
    grown["provider"]["worker_ips"].append("192.0.2.13")
    before = prepare_config(copy.deepcopy(config))["available_node_types"]
    after = prepare_config(grown)["available_node_types"]
    (node_type,) = after
    assert after[node_type]["min_workers"] == before[node_type]["min_workers"] + 1
    assert after[node_type]["max_workers"] == len(grown["provider"]["worker_ips"])
