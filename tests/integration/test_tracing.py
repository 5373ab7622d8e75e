"""Traces across processes on real Ray, Redis and PostgreSQL, exported over OTLP/HTTP.

Every process of the pipeline (the driver, the router and shard actors, the sink worker) has
its own OpenTelemetry SDK, so the spans are collected by a small OTLP/HTTP receiver started
here, which decodes the protobuf requests with the opentelemetry-proto package.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis.asyncio as aioredis
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families

from rayworker.ingest.redis_streams import StreamConsumer, StreamProducer
from rayworker.pipeline.app import Pipeline
from rayworker.serve_app import collect, metrics_text
from rayworker.settings import Settings, load_settings
from rayworker.sinks.factory import open_alert_store
from tests.integration.conftest import pump_until_read

pytestmark = pytest.mark.integration

PRINCIPAL = "mallory@example.com"
IP = "198.51.100.23"


@dataclass(frozen=True)
class Span:
    """One received span, flattened."""

    name: str
    trace_id: str
    span_id: str
    parent: str
    links: tuple[str, ...]
    component: str
    attributes: dict[str, str]


class Receiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1 that keeps what it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                receiver.take(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        """The URL to export to."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def take(self, request: ExportTraceServiceRequest) -> None:
        """Flatten and keep the spans of one export request."""
        got = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    attributes = {a.key: json.dumps(_value(a.value)) for a in s.attributes}
                    got.append(
                        Span(
                            s.name,
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            tuple(link.span_id.hex() for link in s.links),
                            resource.get("rayworker.component", ""),
                            attributes,
                        )
                    )
        with self.lock:
            self.spans.extend(got)

    def wait_for(self, names: set[str], timeout_s: float = 20.0) -> list[Span]:
        """The spans received once every name in ``names`` has arrived (or the time is up)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if names <= {s.name for s in self.spans}:
                    break
            time.sleep(0.1)
        with self.lock:
            return list(self.spans)

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A fresh OTLP receiver for one test."""
    r = Receiver()
    yield r
    r.close()


def _settings(token: str, redis_url: str, pg_dsn: str, endpoint: str) -> Settings:
    return load_settings(
        alerts_dsn=pg_dsn,
        metrics_url="memory://",
        stream_url=redis_url,
        stream_key=f"rwtrace:{token}:events",
        dead_letter_stream=f"rwtrace:{token}:dead",
        consumer_group="trace",
        consumer_name="c1",
        ray_namespace=f"rwtrace-{token}",
        shards=2,
        linger_ms=5,
        block_ms=20,
        telemetry={
            "exporter": "otlp",
            "otlp_protocol": "http",
            "otlp_endpoint": endpoint,
            "otlp_timeout_s": 5,
            "sample_ratio": 1.0,
            "log_format": "text",
            "log_level": "WARNING",
        },
    )


def _failed_logins(tenant: str) -> bytes:
    return b"\n".join(
        json.dumps(
            {
                "id": f"{tenant}-evt-{i}",
                "timestamp": f"2026-03-10T10:00:0{i}Z",
                "action": "auth.login.failure",
                "status": "failure",
                "principalId": PRINCIPAL,
                "organizationId": tenant,
                "sessionContext": {"ipAddress": IP},
            }
        ).encode()
        for i in range(5)
    )


async def _run(settings: Settings, traceparent: str, tenant: str) -> tuple[Any, str]:
    """Send one traced entry of 5 failed logins through the pipeline; returns the stored
    alert and the /metrics page taken before the pipeline stops."""
    client = aioredis.Redis.from_url(settings.stream_url.get_secret_value())
    producer = StreamProducer(client, stream=settings.stream_key)
    await producer.add_raw({"events": _failed_logins(tenant), "traceparent": traceparent})
    pipeline = Pipeline(settings)
    await pipeline.start(migrate=True)
    consumer = StreamConsumer.from_settings(settings)
    await consumer.ensure_group()
    try:
        await pump_until_read(pipeline, consumer, 5)
        page = await metrics_text(settings, await collect(settings, attempts=1))
        await pipeline.flush_telemetry()
    finally:
        pipeline.stop()
        await consumer.close()
        await client.delete(settings.stream_key, settings.dead_letter_stream)
        await client.aclose()
    store = await open_alert_store(settings)
    try:
        rows = await store.list(tenant, status=None)
    finally:
        await store.close()
    assert len(rows) == 1
    return rows[0], page


def test_one_sampled_event_gives_one_connected_trace_across_processes(
    ray_cluster: str, live_redis_url: str, pg_dsn: str, receiver: Receiver
) -> None:
    """A producer's sampled traceparent is continued from ingest to persistence: every
    stage's span is in its trace, parented stage to stage across the driver, router, shard
    and sink processes; the alert row holds that trace id; no span carries payload."""
    token = secrets.token_hex(5)
    trace_id, producer_span = secrets.token_hex(16), secrets.token_hex(8)
    settings = _settings(token, live_redis_url, pg_dsn, receiver.endpoint)
    tenant = f"org-{token}"
    row, page = asyncio.run(_run(settings, f"00-{trace_id}-{producer_span}-01", tenant))

    stages = {"ingest", "route", "validate", "detect", "alert", "persist", "ack"}
    names = {f"rayworker.{s}" for s in stages}
    spans = [s for s in receiver.wait_for(names) if s.trace_id == trace_id]
    by_name: dict[str, list[Span]] = {}
    for s in spans:
        by_name.setdefault(s.name.removeprefix("rayworker."), []).append(s)
    assert set(by_name) == stages
    # The events go to every shard owning one of their keys: one detect span per such shard.
    assert len(spans) == len(stages) - 1 + len(by_name["detect"])
    one = {name: found[0] for name, found in by_name.items() if len(found) == 1}
    assert set(one) | {"detect"} == stages
    assert one["ingest"].parent == producer_span
    assert one["route"].parent == one["ingest"].span_id
    assert one["validate"].parent == one["route"].span_id
    assert all(d.parent == one["route"].span_id for d in by_name["detect"])
    (firing,) = [d for d in by_name["detect"] if d.attributes["rayworker.alerts"] == "1"]
    assert one["alert"].parent == producer_span
    assert one["alert"].links == (firing.span_id,)
    assert one["persist"].parent == firing.span_id
    assert one["ack"].parent == one["ingest"].span_id
    assert {s.component for s in spans} == {"driver", "router", "shard", "sink"}

    assert row.trace_id == trace_id
    assert json.loads(one["alert"].attributes["rayworker.alert.id"]) == row.id
    everything = json.dumps([s.attributes for s in spans])
    assert PRINCIPAL not in everything
    assert IP not in everything

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }
    prefix = settings.metrics_prefix
    assert samples[(f"{prefix}_events_processed_total", (("tenant", tenant),))] == 5
    assert samples[(f"{prefix}_alerts_total", (("tenant", tenant),))] == 1
    assert (
        samples[(f"{prefix}_alerts_by_rule_total", (("rule", row.rule_id), ("tenant", tenant)))]
        == 1
    )
    assert samples[(f"{prefix}_router_events_total", ())] == 5
    assert sum(v for (n, _), v in samples.items() if n == f"{prefix}_shard_key_groups") == (
        settings.key_groups
    )
    assert samples[(f"{prefix}_batch_duration_seconds_count", ())] == 1


def test_unsampled_producer_drops_the_whole_trace(
    ray_cluster: str, live_redis_url: str, pg_dsn: str, receiver: Receiver
) -> None:
    """A producer's 'not sampled' decision is kept by every process: no span at all is
    exported for the batch, and the alert row names no trace."""
    token = secrets.token_hex(5)
    trace_id = secrets.token_hex(16)
    settings = _settings(token, live_redis_url, pg_dsn, receiver.endpoint)
    row, _ = asyncio.run(_run(settings, f"00-{trace_id}-{secrets.token_hex(8)}-00", f"org-{token}"))
    time.sleep(1.5)  # longer than the export delay: anything queued would have arrived
    assert receiver.spans == []
    assert row.trace_id is None
