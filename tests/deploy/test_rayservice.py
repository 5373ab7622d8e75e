"""The production RayService: its Serve config builds; the cluster is shaped for the pipeline."""

from __future__ import annotations

import importlib
import shlex
from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema
from starlette.requests import Request

from rayworker.cli import build_parser
from rayworker.serve_apps import HEALTH_APP, PIPELINE_APP, EnvHealthEndpoints
from tests.deploy.manifests import Doc, cluster_spec, pod_groups, quantity_bytes, ray_docs, ray_pin

_DOCS = ray_docs()
(SERVICE,) = [d for d in _DOCS if d.kind == "RayService"]
SERVE_CONFIG: dict[str, Any] = yaml.safe_load(SERVICE.body["spec"]["serveConfigV2"])
APPS = {app["name"]: app for app in SERVE_CONFIG["applications"]}


def _deployment(app: str, name: str) -> dict[str, Any]:
    (deployment,) = [d for d in APPS[app]["deployments"] if d["name"] == name]
    return deployment


def _container(group: dict[str, Any]) -> dict[str, Any]:
    return dict(group["template"]["spec"]["containers"][0])


def test_serve_config_is_a_valid_serve_deploy_config() -> None:
    """serveConfigV2 parses as Ray Serve's own multi-application deploy schema."""
    schema = ServeDeploySchema.model_validate(SERVE_CONFIG)
    assert {a.name for a in schema.applications} == {"rayworker-health", "rayworker-pipeline"}
    assert len({a.route_prefix for a in schema.applications}) == len(schema.applications)


def test_serve_config_names_the_rayworker_builders() -> None:
    """The health app and the pipeline app use the builders of rayworker.serve_apps."""
    assert APPS["rayworker-health"]["import_path"] == HEALTH_APP
    assert APPS["rayworker-health"]["route_prefix"] == "/"
    assert APPS["rayworker-pipeline"]["import_path"] == PIPELINE_APP


@pytest.mark.parametrize("name", sorted(APPS))
def test_every_import_path_imports_and_builds_an_application(name: str) -> None:
    """Each import path imports, and its builder with the config's args returns an Application."""
    module_name, _, attribute = APPS[name]["import_path"].partition(":")
    builder = getattr(importlib.import_module(module_name), attribute)
    app = builder(APPS[name].get("args", {}))
    assert isinstance(app, Application)


def test_deployment_names_match_the_built_deployments() -> None:
    """Per-deployment options in the config name deployments the builders really create."""
    from rayworker import serve_apps  # noqa: PLC0415

    built = {"rayworker-health": "HealthApp", "rayworker-pipeline": "Pipeline"}
    for app, deployment in built.items():
        assert [d["name"] for d in APPS[app]["deployments"]] == [deployment]
    assert serve_apps.health_app({})._bound_deployment.name == "HealthApp"
    assert serve_apps.pipeline_app({})._bound_deployment.name == "Pipeline"


def test_pipeline_is_a_singleton_whose_successor_waits_out_its_drain() -> None:
    """One pipeline replica, never autoscaled; a replacement waits as long as a drain may take."""
    pipeline = _deployment("rayworker-pipeline", "Pipeline")
    assert pipeline["num_replicas"] == 1
    assert "autoscaling_config" not in pipeline
    drain_s = pipeline["graceful_shutdown_timeout_s"]
    assert APPS["rayworker-pipeline"]["args"]["predecessor_wait_s"] >= drain_s


def test_head_schedules_no_work_and_workers_autoscale() -> None:
    """The head has num-cpus 0; in-tree autoscaling runs a worker group between min and max."""
    spec = cluster_spec(SERVICE)
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["enableInTreeAutoscaling"] is True
    for group in spec["workerGroupSpecs"]:
        assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["maxReplicas"] > group["minReplicas"]


def test_gcs_fault_tolerance_uses_redis_with_a_secret_password() -> None:
    """GCS fault tolerance points at an external Redis; its password comes from a Secret."""
    options = cluster_spec(SERVICE)["gcsFaultToleranceOptions"]
    assert options["redisAddress"]
    assert set(options["redisPassword"]) == {"valueFrom"}
    assert options["redisPassword"]["valueFrom"]["secretKeyRef"]["name"] == "rayworker-secrets"


@pytest.mark.parametrize("doc", _DOCS, ids=lambda d: d.label)
def test_shm_holds_the_object_store(doc: Doc) -> None:
    """Every group mounts a memory-backed /dev/shm larger than its object store, within limits."""
    for name, group in pod_groups(doc):
        pod = group["template"]["spec"]
        container = _container(group)
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        store = int(group["rayStartParams"]["object-store-memory"])
        shm = quantity_bytes(volume["emptyDir"]["sizeLimit"])
        limit = quantity_bytes(container["resources"]["limits"]["memory"])
        assert volume["emptyDir"]["medium"] == "Memory", name
        assert store < shm < limit, name
        assert container["resources"]["requests"] == container["resources"]["limits"], name


@pytest.mark.parametrize("doc", _DOCS, ids=lambda d: d.label)
def test_ray_version_and_image_follow_the_pin(doc: Doc) -> None:
    """rayVersion equals the pinned ray, and every Ray container runs the rayworker image."""
    assert cluster_spec(doc)["rayVersion"] == ray_pin()
    for _, group in pod_groups(doc):
        assert _container(group)["image"].split(":")[0] == "rayworker"


def test_worker_readiness_probes_readyz_through_serve() -> None:
    """Workers are ready when /readyz answers on the Serve port; the head keeps KubeRay's probes."""
    spec = cluster_spec(SERVICE)
    head = _container(spec["headGroupSpec"])
    assert "readinessProbe" not in head
    assert "livenessProbe" not in head
    for group in spec["workerGroupSpecs"]:
        worker = _container(group)
        probe = worker["readinessProbe"]["httpGet"]
        ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
        assert probe["path"] == "/readyz"
        assert ports[probe["port"]] == 8000
        assert "livenessProbe" not in worker


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probe_paths_are_routes_of_the_health_app(path: str) -> None:
    """The health app answers the probe paths (no 404), without Ray (router reported CRITICAL)."""
    import asyncio  # noqa: PLC0415

    endpoints = EnvHealthEndpoints(
        {"ray_namespace": "rayworker-test"}, attempts=1, retry_delay_s=0.0
    )
    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
    response = asyncio.run(endpoints(Request(scope)))
    assert response.status_code in {200, 503}


def test_job_runs_a_backtest_on_its_own_cluster() -> None:
    """The RayJob's entrypoint is a `rayworker backtest` command line the real parser accepts,
    reading and writing on the volumes its head mounts; its cluster goes when the job ends."""
    (job,) = [d for d in _DOCS if d.kind == "RayJob"]
    program, *argv = shlex.split(job.body["spec"]["entrypoint"])
    args = build_parser().parse_args(argv)
    head = cluster_spec(job)["headGroupSpec"]
    mounts = {m["mountPath"] for m in _container(head)["volumeMounts"]}
    assert program == "rayworker"
    assert argv[0] == "backtest"
    assert str(PurePosixPath(args.events).parent) in mounts
    assert str(PurePosixPath(args.out).parent) in mounts
    assert job.body["spec"]["shutdownAfterJobFinishes"] is True


def test_serve_replicas_stay_off_the_head() -> None:
    """Every deployment asks for some CPU, so none lands on the CPU-less head."""
    for app in APPS.values():
        for deployment in app["deployments"]:
            assert deployment["ray_actor_options"]["num_cpus"] > 0, deployment["name"]
