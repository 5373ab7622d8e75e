"""The Serve health app over real HTTP, and the probes against real Ray actors and Redis.

A fake router and a fake metrics actor live in a namespace of their own, so a real pipeline
in the session cluster is never disturbed. PostgreSQL is pointed at port 1, where nothing
listens, to see a CRITICAL component; its password must never reach a response.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import ray
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from rayworker.health import ComponentHealth, Status
from rayworker.serve_app import (
    METRICS_ACTOR,
    ROUTER_ACTOR,
    collect,
    deploy,
    probe_dead_letters,
    shutdown,
)
from rayworker.settings import Settings
from rayworker.sinks.histogram import LatencyHistogram
from rayworker.sinks.metrics_store import MetricsSnapshot

pytestmark = pytest.mark.integration

NAMESPACE = "rayworker-health-test"
PASSWORD = "sekret-pw-42"
UNREACHABLE_PG = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/test"


class FakeRouter:
    """Answers health() the way the real router does: one shard OK, one WARNING."""

    async def health(self) -> dict[str, Any]:
        return {
            "status": "OK",
            "message": "routing to 2 shards",
            "events_routed": 7,
            "shards": {
                "shard-0": {"status": "OK", "message": "idle"},
                "shard-1": {"status": "WARNING", "message": "3 batches in flight"},
            },
        }


class FakeMetrics:
    """Answers snapshot() and snapshots() with fixed snapshots in their to_json form."""

    async def snapshots(self) -> list[tuple[str | None, dict[str, object]]]:
        tenant = MetricsSnapshot(tenant="acme", events=1000, alerts_by_rule={"FAILED_AUTH": 2})
        return [(None, await self.snapshot(None)), ("acme", tenant.to_json())]

    async def snapshot(self, tenant: str | None) -> dict[str, object]:
        return MetricsSnapshot(
            tenant=tenant,
            events=1234,
            errors=2,
            alerts=3,
            alerts_by_rule={"FAILED_AUTH": 3},
            latency=LatencyHistogram.of([1.0, 2.0, 30.0]),
        ).to_json()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def fake_actors(ray_cluster: str) -> Iterator[None]:
    """The fake router and metrics actors, named as the app expects, in NAMESPACE."""
    # Any: ray's stubs do not see the remote methods of an actor made from a plain class.
    router: Any = (
        ray.remote(FakeRouter).options(name=ROUTER_ACTOR, namespace=NAMESPACE, num_cpus=0).remote()
    )
    metrics: Any = (
        ray.remote(FakeMetrics)
        .options(name=METRICS_ACTOR, namespace=NAMESPACE, num_cpus=0)
        .remote()
    )
    ray.get([router.health.remote(), metrics.snapshot.remote(None)])
    yield
    ray.kill(router)
    ray.kill(metrics)


@pytest.fixture(scope="module")
def base_url(fake_actors: None) -> Iterator[str]:
    """The health app served on a free port; Serve is shut down after the module."""
    port = _free_port()
    settings = Settings(
        ray_namespace=NAMESPACE,
        alerts_dsn=UNREACHABLE_PG,
        metrics_url="memory://",
        source="synthetic",
        serve_host="127.0.0.1",
        serve_port=port,
    )
    deploy(settings, attempts=2, retry_delay_s=0.1)
    yield f"http://127.0.0.1:{port}"
    shutdown()


@pytest.fixture(scope="module")
def readyz(base_url: str) -> httpx.Response:
    """One /readyz answer, shared by the tests that read it."""
    return httpx.get(f"{base_url}/readyz", timeout=30)


def test_healthz_is_ok_while_the_app_runs(base_url: str) -> None:
    """GET /healthz answers 200 {"status": "OK"}."""
    response = httpx.get(f"{base_url}/healthz", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "OK"}


def test_readyz_is_503_when_postgres_is_unreachable(readyz: httpx.Response) -> None:
    """An unreachable PostgreSQL makes its component and the whole report CRITICAL (503)."""
    assert readyz.status_code == 503
    body = readyz.json()
    assert body["status"] == "CRITICAL"
    postgres = body["components"]["postgres"]
    assert postgres["status"] == "CRITICAL"
    assert postgres["message"].startswith("health check failed after 2 attempts: ")


def test_readyz_never_shows_the_password(readyz: httpx.Response) -> None:
    """The DSN's password appears nowhere in the report."""
    assert PASSWORD not in readyz.text


def test_readyz_reports_router_shards_and_processing(readyz: httpx.Response) -> None:
    """Router and shards come from the router actor; processing from the metrics actor."""
    components = readyz.json()["components"]
    assert set(components) == {"router", "shards", "postgres", "processing"}
    router = components["router"]
    assert router["status"] == "OK"
    assert router["message"] == "routing to 2 shards"
    assert router["detail"] == {"events_routed": 7}
    shards = components["shards"]
    assert shards["status"] == "WARNING"
    assert shards["detail"]["shard-1"] == {"status": "WARNING", "message": "3 batches in flight"}
    processing = components["processing"]
    assert processing["status"] == "OK"
    assert processing["message"].startswith("1,234 events, error rate 0.2 %, p99 ")
    assert all(c["latency_ms"] >= 0 for c in components.values())


def test_unknown_component_is_404(base_url: str) -> None:
    """GET /health/{unknown} answers 404 naming the component."""
    response = httpx.get(f"{base_url}/health/unknown", timeout=10)
    assert response.status_code == 404
    assert response.json() == {"error": "Component not found", "component": "unknown"}


def test_one_component_answers_by_its_status(base_url: str) -> None:
    """GET /health/{component} is 200 unless that component is CRITICAL (503)."""
    router = httpx.get(f"{base_url}/health/router", timeout=10)
    assert router.status_code == 200
    assert router.json()["component"] == "router"
    postgres = httpx.get(f"{base_url}/health/postgres", timeout=30)
    assert postgres.status_code == 503
    assert postgres.json()["status"] == "CRITICAL"


def test_metrics_is_prometheus_text(base_url: str) -> None:
    """GET /metrics serves text format 0.0.4 that the reference parser reads."""
    response = httpx.get(f"{base_url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert samples[("rayworker_events_processed_total", ())] == 1234
    assert samples[("rayworker_events_processed_total", (("tenant", "acme"),))] == 1000
    assert (
        samples[("rayworker_alerts_by_rule_total", (("rule", "FAILED_AUTH"), ("tenant", "acme")))]
        == 2
    )
    assert samples[("rayworker_alerts_by_rule_total", (("rule", "FAILED_AUTH"),))] == 3
    assert samples[("rayworker_processing_latency_seconds_count", ())] == 3
    assert samples[("rayworker_health_status", (("component", "postgres"),))] == 2
    assert samples[("rayworker_health_status", (("component", "shards"),))] == 1


# --------------------------------------------------------------------------- outside Serve


def test_collect_without_a_router_is_critical(ray_cluster: str, tmp_path: Any) -> None:
    """collect() in a driver: a namespace without the router says "router not running"."""
    db = tmp_path / "alerts.db"
    db.touch()
    settings = Settings(
        ray_namespace=f"empty-{uuid.uuid4().hex[:8]}",
        alerts_dsn=f"sqlite:///{db}",
        source="synthetic",
    )
    report = asyncio.run(collect(settings, attempts=1))
    assert report.components["router"].message == "router not running"
    assert report.components["shards"].status is Status.CRITICAL
    assert report.components["sqlite"].status is Status.OK
    assert report.components["processing"].message == "metrics not available"
    assert report.status is Status.CRITICAL


def test_collect_measures_redis_and_consumer_lag(ray_cluster: str, live_redis_url: str) -> None:
    """With Redis source and metrics: PING, an empty snapshot, and lag = undelivered + pending."""
    key = f"rayworker-health-test:{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        client = aioredis.Redis.from_url(live_redis_url)
        try:
            await client.xgroup_create(key, "g", id="0", mkstream=True)
            for i in range(3):
                await client.xadd(key, {"n": str(i)})
            await client.xreadgroup("g", "c1", {key: ">"}, count=1)  # 1 pending, 2 undelivered
            settings = Settings(
                ray_namespace=NAMESPACE,
                alerts_dsn="sqlite:///:memory:",
                source="redis",
                stream_url=live_redis_url,
                stream_key=key,
                consumer_group="g",
                metrics_url=live_redis_url,
                metrics_prefix=f"rayworker-health-test-{uuid.uuid4().hex[:8]}",
            )
            report = await collect(settings, attempts=1)
        finally:
            await client.delete(key)
            await client.aclose()
        assert report.components["redis"].status is Status.OK
        assert report.components["redis"].message.startswith("PING answered (metrics, stream)")
        assert report.components["processing"].message.startswith("0 events, error rate 0.0 %")
        lag = report.components["lag"]
        assert lag.status is Status.OK
        assert lag.detail["pending"] == 1
        assert lag.detail["lag"] == 2
        assert lag.message == "3 entries behind (1 pending, 2 undelivered)"

    asyncio.run(scenario())


def test_lag_of_a_missing_stream_is_a_warning(ray_cluster: str, live_redis_url: str) -> None:
    """A stream not created yet is WARNING, not a failure."""
    settings = Settings(
        ray_namespace=NAMESPACE,
        alerts_dsn="sqlite:///:memory:",
        source="redis",
        stream_url=live_redis_url,
        stream_key=f"rayworker-health-test:missing-{uuid.uuid4().hex[:8]}",
    )
    report = asyncio.run(collect(settings, attempts=1))
    assert report.components["lag"].status is Status.WARNING
    assert "does not exist yet" in report.components["lag"].message


def test_dead_letter_stream_is_graded_on_its_newest_record(live_redis_url: str) -> None:
    """No dead-letter stream: OK. A record just added: WARNING naming its reason and tenant.
    Only records older than dead_letter_recent_s: OK, with the count."""
    key = f"rayworker-health-test:dead-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        ray_namespace=NAMESPACE,
        alerts_dsn="sqlite:///:memory:",
        source="redis",
        stream_url=live_redis_url,
        dead_letter_stream=key,
    )

    async def scenario() -> list[ComponentHealth]:
        client = aioredis.Redis.from_url(live_redis_url)
        try:
            seen = [await probe_dead_letters(settings)]
            await client.xadd(
                key, {"reason": "late", "tenant": "t1", "payload": b"{}"}, id="1000-0"
            )
            seen.append(await probe_dead_letters(settings))
            await client.xadd(key, {"reason": "poison", "tenant": "t2", "payload": b"{}"})
            seen.append(await probe_dead_letters(settings))
            return seen
        finally:
            await client.delete(key)
            await client.aclose()

    missing, old, fresh = asyncio.run(scenario())
    assert missing.status is Status.OK
    assert missing.detail["length"] == 0
    assert old.status is Status.OK
    assert old.message == "1 dead letter, none in the last 900 s"
    assert fresh.status is Status.WARNING
    assert "2 dead letters, the newest" in fresh.message
    assert "(poison, tenant t2)" in fresh.message
    assert fresh.detail["newest_reason"] == "poison"
