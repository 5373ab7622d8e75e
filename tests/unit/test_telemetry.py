"""Tracing without Ray: propagation, sampling, the alert's trace id, attributes, logs, settings."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rayworker.detect import PRIMARY_BIT, DetectorConfig
from rayworker.errors import ConfigError
from rayworker.events import derive_event_id
from rayworker.partition import ShardBatch
from rayworker.pipeline.shard import DetectorShard
from rayworker.rules import builtin_pack
from rayworker.settings import TelemetrySettings, load_settings
from rayworker.telemetry.logs import JsonFormatter
from rayworker.telemetry.propagation import (
    carrier_from_fields,
    carrier_of,
    span_context_of,
    trace_id_of,
)
from rayworker.telemetry.setup import setup_process
from rayworker.telemetry.spans import tracer
from rayworker.telemetry.traced import BatchTrace, choose_parent, event_ids, sampled_lines

PRODUCER_TRACE = "0af7651916cd43dd8448eb211c80319c"
SAMPLED = f"00-{PRODUCER_TRACE}-b7ad6b7169203331-01"
UNSAMPLED = "00-1bf7651916cd43dd8448eb211c80319c-c7ad6b7169203331-00"
PRINCIPAL = "alice@example.com"
IP = "203.0.113.77"


def _failed_logins(n: int = 5) -> list[bytes]:
    return [
        json.dumps(
            {
                "id": f"evt-{i}",
                "timestamp": f"2026-03-10T10:00:0{i}Z",
                "action": "auth.login.failure",
                "status": "failure",
                "principalId": PRINCIPAL,
                "organizationId": "org-1",
                "sessionContext": {"ipAddress": IP},
            },
            separators=(",", ":"),
        ).encode()
        for i in range(n)
    ]


def _batch(lines: list[bytes]) -> ShardBatch:
    wm = np.zeros(len(lines), dtype=np.int64)
    owned = np.full(len(lines), (1 << 64) - 1, dtype=np.uint64)
    assert PRIMARY_BIT < 64
    return ShardBatch.build(lines, wm, owned)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, every new trace sampled, spans kept in memory."""
    exporter = InMemorySpanExporter()
    setup_process(
        TelemetrySettings(sample_ratio=1.0), component="test", exporter=exporter, logs=False
    )
    yield exporter
    exporter.clear()


def _by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


def test_carrier_from_fields_accepts_w3c_and_ignores_garbage() -> None:
    """A valid traceparent becomes a carrier; a malformed one is ignored, not an error."""
    carrier = carrier_from_fields(SAMPLED, "vendor=1")
    assert carrier == {"traceparent": SAMPLED, "tracestate": "vendor=1"}
    assert carrier_from_fields("x-trace-id: 42") is None
    assert carrier_from_fields("00-" + "0" * 32 + "-b7ad6b7169203331-01") is None
    assert carrier_from_fields(None) is None


def test_trace_id_of_names_only_sampled_traces() -> None:
    """An unsampled trace has no trace id to go to; a sampled one gives its 32 hex digits."""
    assert trace_id_of({"traceparent": SAMPLED}) == PRODUCER_TRACE
    assert trace_id_of({"traceparent": UNSAMPLED}) is None
    assert trace_id_of({"traceparent": UNSAMPLED}, sampled_only=False) is not None


def test_choose_parent_continues_the_first_sampled_producer_trace() -> None:
    """A batch continues its first sampled producer, links the other sampled ones, and
    follows an unsampled producer when no producer sampled."""
    other = {"traceparent": f"00-{'a' * 32}-{'b' * 16}-01"}
    unsampled = {"traceparent": UNSAMPLED}
    sampled = {"traceparent": SAMPLED}
    assert choose_parent([unsampled, sampled, other]) == (sampled, [other])
    assert choose_parent([unsampled]) == (unsampled, [])
    assert choose_parent([]) == (None, [])


def test_event_ids_match_the_detectors_ids() -> None:
    """Traced events are found by the id the detector gives them (producer's or derived)."""
    lines = [b'{"id":"given","organizationId":"t"}', b'{"organizationId":"t"}', b"not json"]
    assert event_ids(lines, [0, 1, 2]) == {0: "given", 1: derive_event_id(lines[1])}


def test_sampled_lines_keep_only_sampled_producer_contexts() -> None:
    """Lines whose producer did not sample are not tracked (no per-event cost for them)."""
    sampled, unsampled = {"traceparent": SAMPLED}, {"traceparent": UNSAMPLED}
    got = sampled_lines([(0, sampled), (1, sampled), (2, unsampled)])
    assert got == {0: sampled, 1: sampled}


def test_alert_span_and_alert_carry_the_firing_events_trace(
    spans: InMemorySpanExporter,
) -> None:
    """The alert fired by a traced event gets a span in that event's trace, linked to the
    batch's detect span, and the alert keeps that trace id."""
    lines = _failed_logins()
    with tracer().start_as_current_span("rayworker.route"):
        batch_parent = carrier_of()
    assert batch_parent is not None
    shard = DetectorShard(0, builtin_pack(), None, DetectorConfig())
    trace_ = BatchTrace(batch_parent, events={"evt-4": {"traceparent": SAMPLED}})
    output = shard.process(_batch(lines), trace_)

    assert [a.rule_id for a in output.alerts] == ["failed_auth"]
    assert output.alerts[0].trace_id == PRODUCER_TRACE
    finished = spans.get_finished_spans()
    (detect,) = _by_name(finished, "rayworker.detect")
    (alert,) = _by_name(finished, "rayworker.alert")
    route = span_context_of(batch_parent)
    assert route is not None
    assert detect.parent is not None
    assert detect.parent.span_id == route.span_id
    assert alert.context.trace_id == int(PRODUCER_TRACE, 16)
    assert alert.parent is not None
    assert alert.parent.span_id == int("b7ad6b7169203331", 16)
    assert [link.context.span_id for link in alert.links] == [detect.context.span_id]
    carried = span_context_of(output.trace)
    assert carried is not None
    assert carried.span_id == detect.context.span_id


def test_untraced_alert_takes_the_batch_trace(spans: InMemorySpanExporter) -> None:
    """Without a producer context the alert's span and trace id are the batch's."""
    with tracer().start_as_current_span("rayworker.route") as root:
        parent = carrier_of()
    assert parent is not None
    shard = DetectorShard(0, builtin_pack(), None, DetectorConfig())
    output = shard.process(_batch(_failed_logins()), BatchTrace(parent))
    expected = trace.format_trace_id(root.get_span_context().trace_id)
    assert output.alerts[0].trace_id == expected
    (alert,) = _by_name(spans.get_finished_spans(), "rayworker.alert")
    assert alert.context.trace_id == root.get_span_context().trace_id


def test_unsampled_producer_drops_the_whole_trace(spans: InMemorySpanExporter) -> None:
    """A producer's 'not sampled' decision holds downstream: no span, no trace id."""
    unsampled = {"traceparent": UNSAMPLED}
    shard = DetectorShard(0, builtin_pack(), None, DetectorConfig())
    output = shard.process(
        _batch(_failed_logins()), BatchTrace(unsampled, events={"evt-4": unsampled})
    )
    assert len(output.alerts) == 1
    assert output.alerts[0].trace_id is None
    assert spans.get_finished_spans() == ()


def test_ratio_zero_drops_new_traces_everywhere() -> None:
    """At sample_ratio 0 a new trace is dropped, and what continues it is dropped too."""
    exporter = InMemorySpanExporter()
    setup_process(
        TelemetrySettings(sample_ratio=0.0), component="test", exporter=exporter, logs=False
    )
    with tracer().start_as_current_span("rayworker.ingest"):
        carrier = carrier_of()
    assert carrier is not None
    assert int(carrier["traceparent"].rsplit("-", 1)[1], 16) & 1 == 0  # sampled flag off
    shard = DetectorShard(0, builtin_pack(), None, DetectorConfig())
    output = shard.process(_batch(_failed_logins()), BatchTrace(carrier))
    assert output.alerts[0].trace_id is None
    assert exporter.get_finished_spans() == ()


def test_span_attributes_hold_no_event_payload(spans: InMemorySpanExporter) -> None:
    """No principal id, IP or other event value reaches a span attribute by default."""
    with tracer().start_as_current_span("rayworker.route"):
        parent = carrier_of()
    assert parent is not None
    shard = DetectorShard(0, builtin_pack(), None, DetectorConfig())
    shard.process(_batch(_failed_logins()), BatchTrace(parent))
    values = [str(v) for s in spans.get_finished_spans() for v in (s.attributes or {}).values()]
    assert values
    assert not [v for v in values if PRINCIPAL in v or IP in v or "auth.login" in v]


def test_record_payload_puts_group_values_on_the_alert_span(
    spans: InMemorySpanExporter,
) -> None:
    """Group values appear only when record_payload is explicitly enabled."""
    with tracer().start_as_current_span("rayworker.route"):
        parent = carrier_of()
    assert parent is not None
    shard = DetectorShard(
        0, builtin_pack(), None, DetectorConfig(), telemetry=TelemetrySettings(record_payload=True)
    )
    shard.process(_batch(_failed_logins()), BatchTrace(parent))
    (alert,) = _by_name(spans.get_finished_spans(), "rayworker.alert")
    assert PRINCIPAL in [str(v) for v in (alert.attributes or {}).values()]


def test_untraced_batches_create_no_spans(spans: InMemorySpanExporter) -> None:
    """Tracing off for a batch (no context) costs no span and leaves no trace id."""
    shard = DetectorShard(0, builtin_pack(), None, DetectorConfig())
    output = shard.process(_batch(_failed_logins()))
    assert output.alerts[0].trace_id is None
    assert output.trace is None
    assert spans.get_finished_spans() == ()


def test_json_log_lines_carry_ids_and_only_known_fields(spans: InMemorySpanExporter) -> None:
    """A log line is one JSON object with tenant, shard, batch and the current trace id;
    unknown extras (a payload, a DSN) are left out."""
    formatter = JsonFormatter(component="router", shard=3)
    record = logging.LogRecord("rayworker.router", logging.INFO, __file__, 1, "done", (), None)
    record.__dict__.update(tenant="org-1", batch=7, payload="secret event", dsn="postgres://x")
    with tracer().start_as_current_span("rayworker.route") as span:
        line = json.loads(formatter.format(record))
    assert line["tenant"] == "org-1"
    assert line["batch"] == 7
    assert line["shard"] == 3
    assert line["trace_id"] == trace.format_trace_id(span.get_span_context().trace_id)
    assert "payload" not in line
    assert "dsn" not in line


def test_telemetry_settings_from_env_keep_headers_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nested RAYWORKER_TELEMETRY__* variables configure tracing; headers never print."""
    monkeypatch.setenv("RAYWORKER_TELEMETRY__EXPORTER", "otlp")
    monkeypatch.setenv("RAYWORKER_TELEMETRY__OTLP_ENDPOINT", "http://collector:4318/v1/traces")
    monkeypatch.setenv("RAYWORKER_TELEMETRY__OTLP_HEADERS", '{"authorization": "Bearer s3cr3t"}')
    monkeypatch.setenv("RAYWORKER_TELEMETRY__SAMPLE_RATIO", "0.25")
    settings = load_settings()
    assert settings.telemetry.exporter == "otlp"
    assert settings.telemetry.sample_ratio == 0.25
    assert "s3cr3t" not in json.dumps(settings.public())
    assert "s3cr3t" not in repr(settings)


def test_bad_telemetry_settings_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad endpoint or ratio fails at start-up naming the variable to fix."""
    monkeypatch.setenv("RAYWORKER_TELEMETRY__OTLP_ENDPOINT", "collector:4317")
    with pytest.raises(ConfigError, match="RAYWORKER_TELEMETRY__OTLP_ENDPOINT"):
        load_settings()
    monkeypatch.delenv("RAYWORKER_TELEMETRY__OTLP_ENDPOINT")
    monkeypatch.setenv("RAYWORKER_TELEMETRY__SAMPLE_RATIO", "1.5")
    with pytest.raises(ConfigError, match="RAYWORKER_TELEMETRY__SAMPLE_RATIO"):
        load_settings()


def test_build_exporter_follows_the_settings() -> None:
    """otlp/http, otlp/grpc, console and none give the matching exporter; headers are sent
    in clear only to the exporter."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter as GrpcExporter,
    )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter as HttpExporter,
    )
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

    from rayworker.telemetry.setup import build_exporter  # noqa: PLC0415

    headers = {"authorization": "Bearer s3cr3t"}
    http = build_exporter(
        TelemetrySettings.model_validate(
            {
                "exporter": "otlp",
                "otlp_endpoint": "http://127.0.0.1:4318/v1/traces",
                "otlp_headers": headers,
            }
        )
    )
    assert isinstance(http, HttpExporter)
    http.shutdown()
    grpc = build_exporter(
        TelemetrySettings(
            exporter="otlp", otlp_protocol="grpc", otlp_endpoint="http://127.0.0.1:4317"
        )
    )
    assert isinstance(grpc, GrpcExporter)
    grpc.shutdown()
    assert isinstance(build_exporter(TelemetrySettings(exporter="console")), ConsoleSpanExporter)
    assert build_exporter(TelemetrySettings()) is None
