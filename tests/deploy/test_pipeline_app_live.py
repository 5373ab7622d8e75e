"""The pipeline Serve application on real Ray, Serve and Redis: it starts, pumps, drains.

The replica reads its DSNs from its own environment (a runtime_env here, the pod's env on
KubeRay); plain settings come from the builder's overrides, as in the RayService.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import redis.asyncio as aioredis
from ray import serve

from rayworker.alerts import AlertBook
from rayworker.clock import SystemClock
from rayworker.detect import Detector, DetectorConfig
from rayworker.ingest.redis_streams import StreamProducer
from rayworker.rules import builtin_pack
from rayworker.serve_apps import PipelineDeployment, PipelineRunner, PipelineState
from rayworker.settings import load_settings
from rayworker.sinks.factory import open_alert_store

pytestmark = pytest.mark.integration

APP = "rwtest-pipeline"
PASSWORD = "sekret-pw-77"


def _sample() -> list[bytes]:
    data = resources.files("rayworker").joinpath("data/sample_events.jsonl").read_bytes()
    return [line for line in data.splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _replay_ids(lines: list[bytes]) -> set[str]:
    detector = Detector(builtin_pack(), config=DetectorConfig(), clock=SystemClock())
    book = AlertBook()
    for start in range(0, len(lines), 1000):
        book.update(detector.process_lines(lines[start : start + 1000]).alerts)
    book.update(detector.flush().alerts)
    return {a.id for a in book}


@pytest.fixture
def serve_port(ray_cluster: str) -> Iterator[int]:
    """Serve started on a free loopback port; shut down afterwards."""
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()  # type: ignore[no-untyped-call]


def _wait_for(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def test_pipeline_app_pumps_the_stream_and_drains_on_delete(
    serve_port: int, live_redis_url: str, tmp_path: Path
) -> None:
    """The deployed app reports running, detects the stream's events into the alert store,
    and on delete drains: every entry acknowledged, the router gone."""
    token = secrets.token_hex(5)
    namespace = f"rwtest-{token}"
    overrides = {
        "ray_namespace": namespace,
        "source": "redis",
        "stream_key": f"rwtest:{token}:events",
        "dead_letter_stream": f"rwtest:{token}:dead",
        "consumer_group": "serve",
        "shards": 2,
        "flush_events": 300,
        "linger_ms": 5,
        "read_count": 25,
        "block_ms": 20,
    }
    env = {
        "RAYWORKER_ALERTS_DSN": f"sqlite:///{tmp_path / 'alerts.db'}",
        "RAYWORKER_METRICS_URL": "memory://",
        "RAYWORKER_STREAM_URL": live_redis_url,
    }
    lines = _sample()
    app = PipelineDeployment.options(
        ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": env}}
    ).bind(overrides, migrate=True, predecessor_wait_s=5.0)
    serve.run(app, name=APP, route_prefix="/pipeline")
    url = f"http://127.0.0.1:{serve_port}/pipeline"

    async def push() -> None:
        client = aioredis.Redis.from_url(live_redis_url)
        try:
            await StreamProducer(client, stream=str(overrides["stream_key"])).add_events(
                lines, per_entry=100
            )
        finally:
            await client.aclose()

    def status() -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(url, timeout=10).json()
        return body

    _wait_for(lambda: status()["state"] == "running", 60, "the pipeline to run")
    assert httpx.get(url, timeout=10).status_code == 200
    asyncio.run(push())
    done = _wait_for(
        lambda: (s := status()).get("events") == len(lines) and s["batches_acked"] > 0 and s,
        120,
        "every event to be read",
    )
    assert done["state"] == "running"
    assert done["error"] is None

    serve.delete(APP)

    async def leftovers() -> tuple[int, list[Any]]:
        client = aioredis.Redis.from_url(live_redis_url)
        try:
            groups = await client.xinfo_groups(str(overrides["stream_key"]))
            keys = [k async for k in client.scan_iter(match=f"rwtest:{token}:*")]
            if keys:
                await client.delete(*keys)
            return int(groups[0]["pending"]), keys
        finally:
            await client.aclose()

    def router_gone() -> bool:
        try:
            ray.get_actor("rayworker-router", namespace=namespace)
        except ValueError:
            return True
        return False

    _wait_for(router_gone, 60, "the router to stop")
    pending, _ = asyncio.run(leftovers())
    assert pending == 0

    settings = load_settings(alerts_dsn=env["RAYWORKER_ALERTS_DSN"], **overrides)

    async def stored_ids() -> set[str]:
        store = await open_alert_store(settings)
        try:
            tenants = {a.tenant_id for a in Detector(builtin_pack()).process_lines(lines).alerts}
            ids: set[str] = set()
            for tenant in tenants:
                offset = 0
                while page := await store.list(tenant, status=None, limit=1000, offset=offset):
                    ids |= {row.id for row in page}
                    offset += len(page)
            return ids
        finally:
            await store.close()

    stored = asyncio.run(stored_ids())
    assert stored
    assert stored <= _replay_ids(lines)


def test_runner_reports_a_failed_start_without_leaking_the_password(
    ray_cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreachable alert database fails the start: status says why, the health check
    raises (so Serve replaces the replica), and the DSN's password appears nowhere."""
    monkeypatch.setenv("RAYWORKER_ALERTS_DSN", f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/x")
    monkeypatch.setenv("RAYWORKER_METRICS_URL", "memory://")

    async def scenario() -> tuple[dict[str, Any], str]:
        runner = PipelineRunner(
            {"ray_namespace": f"rwtest-{secrets.token_hex(5)}"}, predecessor_wait_s=0.0
        )
        deadline = time.monotonic() + 30
        while runner.status()["state"] == "starting" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        try:
            await runner.check_health()
        except RuntimeError as exc:
            health = str(exc)
        else:
            health = ""
        return await runner.drain(timeout_s=10), health

    status, health = asyncio.run(scenario())
    assert status["state"] == PipelineState.FAILED
    assert status["error"]
    assert "failed" in health
    assert PASSWORD not in str(status)
    assert PASSWORD not in health
