"""Health statuses, probe retries, thresholds and the Prometheus exposition (no Ray)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rayworker.clock import FixedClock
from rayworker.health import (
    ComponentHealth,
    HealthReport,
    Probe,
    ProbeError,
    Status,
    check_all,
    escape_label_value,
    grade_error_rate,
    grade_lag,
    grade_latency,
    processing_health,
    render_prometheus,
    run_probe,
    snapshot_from_json,
    worst,
)
from rayworker.settings import HealthThresholds
from rayworker.sinks.histogram import LatencyHistogram
from rayworker.sinks.metrics_store import MetricsSnapshot

AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
T = HealthThresholds()


async def _no_sleep(_seconds: float) -> None:
    return None


def _ok(name: str = "x") -> ComponentHealth:
    return ComponentHealth(name, Status.OK, "fine")


# --------------------------------------------------------------------------- statuses


def test_status_order_is_by_severity_not_alphabet() -> None:
    """OK < WARNING < CRITICAL, so max() picks the worst."""
    assert Status.OK < Status.WARNING < Status.CRITICAL
    assert max(Status.CRITICAL, Status.OK) is Status.CRITICAL
    assert [s.severity for s in Status] == [0, 1, 2]


def test_worst_of_nothing_is_ok() -> None:
    """The worst of no statuses is OK; otherwise the most severe one."""
    assert worst([]) is Status.OK
    assert worst([Status.WARNING, Status.OK]) is Status.WARNING
    assert worst([Status.WARNING, Status.CRITICAL, Status.OK]) is Status.CRITICAL


@pytest.mark.parametrize(
    ("status", "code"), [(Status.OK, 200), (Status.WARNING, 200), (Status.CRITICAL, 503)]
)
def test_http_status_is_503_only_for_critical(status: Status, code: int) -> None:
    """A report answers 200 while OK or WARNING and 503 when CRITICAL."""
    report = HealthReport.of([ComponentHealth("a", status, "m")], AT)
    assert report.http_status == code


def test_report_json_lists_components() -> None:
    """to_json carries the overall status, the time and each component's fields."""
    report = HealthReport.of(
        [_ok("a"), ComponentHealth("b", Status.WARNING, "slow", {"ms": 3})], AT
    )
    data = report.to_json()
    assert data["status"] == "WARNING"
    assert data["at"] == "2024-05-01T12:00:00+00:00"
    assert data["components"]["b"] == {
        "status": "WARNING",
        "message": "slow",
        "detail": {"ms": 3},
        "latency_ms": 0.0,
    }


# --------------------------------------------------------------------------- probes


def test_probe_answer_is_stamped_with_name_and_latency() -> None:
    """run_probe renames the answer and measures its latency with the injected timer."""
    ticks = iter([10.0, 10.0, 10.25])

    async def probe() -> ComponentHealth:
        return _ok("whatever")

    result = asyncio.run(run_probe("db", probe, timeout_s=1, timer=lambda: next(ticks)))
    assert result.name == "db"
    assert result.status is Status.OK
    assert result.latency_ms == pytest.approx(250.0)


def test_hanging_probe_is_retried_then_critical_with_timeout() -> None:
    """A probe that never answers times out on every attempt and becomes CRITICAL."""
    calls = 0
    waits: list[float] = []

    async def hang() -> ComponentHealth:
        nonlocal calls
        calls += 1
        await asyncio.Event().wait()
        raise AssertionError  # pragma: no cover

    async def record_sleep(seconds: float) -> None:
        waits.append(seconds)

    result = asyncio.run(
        run_probe("redis", hang, timeout_s=0.01, attempts=3, retry_delay_s=1.0, sleep=record_sleep)
    )
    assert calls == 3
    assert waits == [1.0, 1.0]
    assert result.status is Status.CRITICAL
    assert result.message == "health check failed after 3 attempts: timeout"


def test_raising_probe_reports_the_last_reason() -> None:
    """A probe that raises is retried; the message names the exception of the last attempt."""
    calls = 0

    async def boom() -> ComponentHealth:
        nonlocal calls
        calls += 1
        msg = f"refused #{calls}"
        raise ConnectionError(msg)

    result = asyncio.run(run_probe("pg", boom, timeout_s=1, attempts=2, sleep=_no_sleep))
    assert result.message == "health check failed after 2 attempts: ConnectionError: refused #2"


def test_probe_error_message_is_used_verbatim() -> None:
    """A ProbeError's message (already scrubbed of secrets) is reported without its type."""

    async def fail() -> ComponentHealth:
        msg = "OSError: connect to postgresql://u:***@h/db failed"
        raise ProbeError(msg)

    result = asyncio.run(run_probe("pg", fail, timeout_s=1, attempts=1, sleep=_no_sleep))
    assert result.message == (
        "health check failed after 1 attempts: OSError: connect to postgresql://u:***@h/db failed"
    )


def test_flaky_probe_recovers_on_retry() -> None:
    """A probe that fails once and then answers is reported with its answer."""
    calls = 0

    async def flaky() -> ComponentHealth:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError
        return ComponentHealth("x", Status.WARNING, "slow")

    result = asyncio.run(run_probe("x", flaky, timeout_s=1, sleep=_no_sleep))
    assert (calls, result.status, result.message) == (2, Status.WARNING, "slow")


def test_returned_critical_is_not_retried() -> None:
    """A probe that answers CRITICAL has answered: it runs once."""
    calls = 0

    async def down() -> ComponentHealth:
        nonlocal calls
        calls += 1
        return ComponentHealth("r", Status.CRITICAL, "router not running")

    result = asyncio.run(run_probe("router", down, timeout_s=1, sleep=_no_sleep))
    assert calls == 1
    assert result.message == "router not running"


def test_run_probe_refuses_zero_attempts() -> None:
    """attempts must be at least 1."""

    async def probe() -> ComponentHealth:
        return _ok()  # pragma: no cover

    with pytest.raises(ValueError, match="attempts >= 1"):
        asyncio.run(run_probe("x", probe, timeout_s=1, attempts=0))


def test_check_all_runs_probes_concurrently_and_takes_the_worst() -> None:
    """Probes run at the same time; the overall status is the worst component's."""
    started: list[str] = []
    gate = asyncio.Event()

    def probe(name: str, status: Status) -> Probe:
        async def run() -> ComponentHealth:
            started.append(name)
            if len(started) == 3:
                gate.set()
            await gate.wait()  # deadlocks unless all three run concurrently
            return ComponentHealth(name, status, name)

        return run

    async def main() -> HealthReport:
        async with asyncio.timeout(2):
            return await check_all(
                {
                    "a": probe("a", Status.OK),
                    "b": probe("b", Status.CRITICAL),
                    "c": probe("c", Status.WARNING),
                },
                clock=FixedClock(AT),
            )

    report = asyncio.run(main())
    assert report.status is Status.CRITICAL
    assert sorted(report.components) == ["a", "b", "c"]
    assert report.at == AT


# --------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize(
    ("ms", "expected"),
    [(0, Status.OK), (2000, Status.OK), (2000.1, Status.WARNING), (5000.1, Status.CRITICAL)],
)
def test_grade_latency(ms: float, expected: Status) -> None:
    """Latency strictly above 2000 ms warns and above 5000 ms is critical."""
    assert grade_latency(ms, T) is expected


@pytest.mark.parametrize(
    ("rate", "expected"),
    [(0.0, Status.OK), (0.05, Status.OK), (0.06, Status.WARNING), (0.11, Status.CRITICAL)],
)
def test_grade_error_rate(rate: float, expected: Status) -> None:
    """An error rate above 5 % warns and above 10 % is critical."""
    assert grade_error_rate(rate, T) is expected


@pytest.mark.parametrize(
    ("entries", "expected"),
    [(0, Status.OK), (10_000, Status.OK), (10_001, Status.WARNING), (100_001, Status.CRITICAL)],
)
def test_grade_lag(entries: int, expected: Status) -> None:
    """Stream lag above lag_warn warns and above lag_crit is critical."""
    assert grade_lag(entries, T) is expected


def test_processing_health_grades_error_rate() -> None:
    """An error rate above the critical level makes processing CRITICAL."""
    snap = MetricsSnapshot(tenant=None, events=1000, errors=200)
    assert processing_health(snap, T).status is Status.CRITICAL


def test_processing_health_grades_p99_latency_and_says_so() -> None:
    """Few errors but a slow p99 warns; the message gives events, error rate and p99."""
    fast = [1.0] * 1212
    slow = [3000.0] * 22
    snap = MetricsSnapshot(
        tenant=None, events=1234, errors=2, latency=LatencyHistogram.of(fast + slow)
    )
    health = processing_health(snap, T)
    assert health.status is Status.WARNING
    assert health.message.startswith("1,234 events, error rate 0.2 %, p99 ")
    assert health.message.endswith(" ms")


def test_processing_health_without_events_is_ok() -> None:
    """No events yet is OK with a zero error rate."""
    health = processing_health(MetricsSnapshot(tenant=None), T)
    assert health.status is Status.OK
    assert health.message == "0 events, error rate 0.0 %, p99 0 ms"


def test_snapshot_json_round_trips() -> None:
    """snapshot_from_json rebuilds what MetricsSnapshot.to_json wrote."""
    snap = MetricsSnapshot(
        tenant="t1",
        events=10,
        rejected=2,
        rejected_by_reason={"schema": 2},
        alerts=1,
        alerts_by_rule={"FAILED_AUTH": 1},
        alerts_by_severity={"HIGH": 1},
        errors=1,
        errors_by_kind={"sink": 1},
        latency=LatencyHistogram.of([1.0, 4.0, 20000.0]),
    )
    back = snapshot_from_json(snap.to_json())
    assert back.to_json() == snap.to_json()


# --------------------------------------------------------------------------- Prometheus


def test_label_values_are_escaped() -> None:
    """Backslash, double quote and newline are escaped in label values."""
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert escape_label_value("plain") == "plain"


def _snapshot(tenant: str | None) -> MetricsSnapshot:
    return MetricsSnapshot(
        tenant=tenant,
        events=100,
        rejected=3,
        rejected_by_reason={"schema": 2},
        late=1,
        alerts=2,
        alerts_by_rule={'we"ird\\rule\n': 2},
        alerts_by_severity={"HIGH": 2},
        errors=1,
        errors_by_kind={"sink": 1},
        latency=LatencyHistogram.of([0.5, 3.0, 3.0, 40.0, 20000.0]),
    )


def _render() -> str:
    report = HealthReport.of(
        [_ok("router"), ComponentHealth("postgres", Status.CRITICAL, "down")], AT
    )
    return render_prometheus(report, {None: _snapshot(None), "t\\1": _snapshot("t\\1")})


def test_prometheus_text_parses_and_escapes() -> None:
    """The exposition parses with the reference parser and label values come back intact."""
    families = {f.name: f for f in text_string_to_metric_families(_render())}
    rule = families["rayworker_alerts_by_rule"]
    assert rule.type == "counter"
    labels = [s.labels for s in rule.samples]
    assert {"rule": 'we"ird\\rule\n'} in labels
    assert {"tenant": "t\\1", "rule": 'we"ird\\rule\n'} in labels


def test_prometheus_has_help_and_type_per_family() -> None:
    """Every family has one HELP and one TYPE line before its samples."""
    text = _render()
    assert "# HELP rayworker_events_processed_total Audit events processed.\n" in text
    assert "# TYPE rayworker_events_processed_total counter\n" in text
    assert "# TYPE rayworker_processing_latency_seconds histogram\n" in text
    assert text.count("# TYPE rayworker_health_status gauge") == 1
    assert "rayworker_events_processed_total 100\n" in text  # overall: no tenant label
    assert 'rayworker_events_processed_total{tenant="t\\\\1"} 100\n' in text
    assert text.endswith("\n")


def test_prometheus_histogram_buckets_are_cumulative() -> None:
    """Buckets count everything at or below their bound; +Inf equals _count."""
    families = {f.name: f for f in text_string_to_metric_families(_render())}
    hist = families["rayworker_processing_latency_seconds"]
    overall = [s for s in hist.samples if "tenant" not in s.labels]
    buckets = {s.labels["le"]: s.value for s in overall if s.name.endswith("_bucket")}
    assert buckets["0.001"] == 1  # 0.5 ms
    assert buckets["0.005"] == 3  # + 3 ms twice
    assert buckets["0.05"] == 4  # + 40 ms
    assert buckets["10.0"] == 4
    assert buckets["+Inf"] == 5  # + 20 s
    values = list(buckets.values())
    assert values == sorted(values)
    count = next(s.value for s in overall if s.name.endswith("_count"))
    total = next(s.value for s in overall if s.name.endswith("_sum"))
    assert count == 5
    assert total == pytest.approx((0.5 + 3 + 3 + 40 + 20000) / 1000)


def test_prometheus_breakdowns_account_for_totals() -> None:
    """Rejections and errors by reason add up to their totals (remainder: unspecified)."""
    families = {f.name: f for f in text_string_to_metric_families(_render())}
    rejected = {
        s.labels["reason"]: s.value
        for s in families["rayworker_events_rejected"].samples
        if "tenant" not in s.labels and s.name.endswith("_total")
    }
    assert rejected == {"schema": 2, "unspecified": 1}


def test_prometheus_health_gauges() -> None:
    """Each component's gauge is 0 OK, 1 WARNING, 2 CRITICAL; the overall is the worst."""
    text = _render()
    assert 'rayworker_health_status{component="postgres"} 2\n' in text
    assert 'rayworker_health_status{component="router"} 0\n' in text
    assert "rayworker_health_overall_status 2\n" in text


def test_prometheus_prefix_is_sanitised() -> None:
    """A metrics prefix with characters Prometheus forbids in names is made valid."""
    text = render_prometheus(None, {None: MetricsSnapshot(tenant=None)}, prefix="my-app.v1")
    assert "my_app_v1_events_processed_total 0\n" in text
    assert "health_status" not in text
