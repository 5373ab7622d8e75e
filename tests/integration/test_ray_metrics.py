"""Pipeline metrics reach Ray's own metrics exporter, which a KubeRay Prometheus scrapes."""

from __future__ import annotations

import secrets
import time

import httpx
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from rayworker.detect import MetricDeltas

pytestmark = pytest.mark.integration


class _Recorder:
    """Records one flush of deltas the way the router does, from inside an actor."""

    def record(self, tenant: str) -> bool:
        from rayworker.telemetry.ray_metrics import PipelineMetrics  # noqa: PLC0415

        deltas = MetricDeltas()
        deltas.events[tenant] += 7
        deltas.rejected[(tenant, "invalid_json")] += 2
        deltas.alerts[(tenant, "failed_auth", "HIGH")] += 1
        PipelineMetrics.get().record(deltas)
        return True


def _scrape(port: int) -> dict[tuple[str, str], float]:
    """Every rayworker sample on the node's metrics endpoint, by (name, tenant)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (sample.name, sample.labels.get("tenant", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("ray_rayworker_")
    }


def test_router_metrics_are_exported_by_ray_with_tenant_labels(ray_cluster: str) -> None:
    """Counters recorded in an actor appear on the node's Prometheus endpoint, per tenant,
    with Prometheus names (``_total``), within Ray's report interval."""
    tenant = f"tenant-{secrets.token_hex(4)}"
    actor = ray.remote(_Recorder).options(num_cpus=0).remote()
    try:
        assert ray.get(actor.record.remote(tenant), timeout=60)
        port = int(ray.nodes()[0]["MetricsExportPort"])
        deadline = time.monotonic() + 60  # Ray reports metrics every 10 s by default
        samples: dict[tuple[str, str], float] = {}
        while time.monotonic() < deadline:
            samples = _scrape(port)
            if ("ray_rayworker_alerts_total", tenant) in samples:
                break
            time.sleep(1)
    finally:
        ray.kill(actor)
    assert samples[("ray_rayworker_events_total", tenant)] == 7
    assert samples[("ray_rayworker_events_rejected_total", tenant)] == 2
    assert samples[("ray_rayworker_alerts_total", tenant)] == 1
