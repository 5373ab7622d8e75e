"""The pipeline families of /metrics parse with prometheus_client and say what the router says."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

from rayworker.health import ComponentHealth, HealthReport, Status, render_prometheus
from rayworker.sinks.histogram import LatencyHistogram
from rayworker.sinks.metrics_store import MetricsSnapshot
from rayworker.telemetry.exposition import render_pipeline


def _report() -> HealthReport:
    latency = LatencyHistogram.of([3.0, 40.0, 40.0, 900.0])
    stats = {
        "events": 1200,
        "sent": {"0": 700, "1": 650},
        "key_groups": {"0": 128, "1": 128},
        "rescales": 2,
        "assignment_version": 3,
        "completed_barrier": int(datetime(2026, 3, 10, tzinfo=UTC).timestamp() * 1000) - 4_500,
        "barrier_failures": 1,
        "checkpoint_bytes": 2048,
        "buffered": 12,
        "queued_batches": 1,
        "inflight_batches": 2,
        "open_tickets": 3,
        "batch_latency_ms": latency.to_fields(),
    }
    components = [
        ComponentHealth("router", Status.OK, "ok", {"stats": stats}),
        ComponentHealth(
            "lag", Status.OK, "ok", {"stream": "s", "group": "g", "pending": 4, "lag": 9}
        ),
    ]
    return HealthReport.of(components, datetime(2026, 3, 10, tzinfo=UTC))


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_pipeline_families_parse_and_match_router_stats() -> None:
    """Router counters, key groups per shard, hand-offs, batch latency and consumer lag are exposed
    under Prometheus names (units, _total) with the router's values."""
    samples = _samples(render_pipeline(_report(), prefix="rw"))
    assert samples[("rw_router_events_total", ())] == 1200
    assert samples[("rw_shard_events_total", (("shard", "0"),))] == 700
    assert samples[("rw_shard_key_groups", (("shard", "1"),))] == 128
    assert samples[("rw_router_handoffs_total", ())] == 2
    assert samples[("rw_assignment_version", ())] == 3
    assert samples[("rw_checkpoint_age_seconds", ())] == 4.5
    assert samples[("rw_checkpoint_failures_total", ())] == 1
    assert samples[("rw_checkpoint_bytes", ())] == 2048
    assert samples[("rw_router_open_batches", ())] == 3
    assert samples[("rw_batch_duration_seconds_count", ())] == 4
    assert samples[("rw_batch_duration_seconds_bucket", (("le", "+Inf"),))] == 4
    assert abs(samples[("rw_batch_duration_seconds_sum", ())] - 0.983) < 1e-9
    assert samples[("rw_consumer_lag_entries", (("group", "g"), ("stream", "s")))] == 9
    assert samples[("rw_consumer_pending_entries", (("group", "g"), ("stream", "s")))] == 4


def test_whole_metrics_page_parses_without_duplicate_families() -> None:
    """The per-tenant page plus the pipeline families form one valid exposition."""
    report = _report()
    snapshots = {None: MetricsSnapshot(tenant=None, events=10), "org-1": MetricsSnapshot("org-1")}
    text = render_prometheus(report, snapshots, prefix="rw") + render_pipeline(report, prefix="rw")
    names = [family.name for family in text_string_to_metric_families(text)]
    assert len(names) == len(set(names))
    assert "rw_events_processed" in names
    assert "rw_batch_duration_seconds" in names


def test_no_report_no_pipeline_families() -> None:
    """Without a health report nothing is added."""
    assert render_pipeline(None) == ""


def test_a_pipeline_without_checkpoints_has_no_checkpoint_families() -> None:
    """No complete checkpoint (a pipeline that keeps none) means no checkpoint age, failures
    or size, rather than an age counted from 1970."""
    report = _report()
    stats = dict(report.components["router"].detail["stats"])
    stats["completed_barrier"] = 0
    router = ComponentHealth("router", Status.OK, "ok", {"stats": stats})
    text = render_pipeline(HealthReport.of([router], report.at), prefix="rw")
    names = {family.name for family in text_string_to_metric_families(text)}
    assert "rw_router_events" in names
    assert not {n for n in names if n.startswith("rw_checkpoint")}
