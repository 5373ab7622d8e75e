"""Health checks as plain data: statuses, probes with retries, thresholds and Prometheus text.

Pure: no Ray, Redis or asyncpg here. The adapters (:mod:`rayworker.serve_app`, the ``check``
command) build the probes; this module runs and grades them.

Running probes
    :func:`run_probe` gives each attempt ``timeout_s`` (``asyncio.timeout``, so nothing is
    left running when it expires, unlike the original's uncleared timers) and retries a probe
    that raises or times out, ``retry_delay_s`` apart. After ``attempts`` failures the
    component is CRITICAL with ``health check failed after N attempts: <reason>`` (the reason
    of a timeout is ``timeout``). A probe that *returns* a status is not retried: it has
    answered. :func:`check_all` runs probes concurrently; the overall status is the worst.

Thresholds (:class:`~rayworker.settings.HealthThresholds`)
    A value strictly above the critical level is CRITICAL, strictly above the warning level
    WARNING, else OK. :func:`processing_health` is the worse of the error-rate grade and the
    p99-latency grade.

Prometheus (:func:`render_prometheus`, text exposition format 0.0.4)
    Counters per tenant carry a ``tenant`` label; the overall totals (snapshot key ``None``)
    carry **no** ``tenant`` label, so ``sum(x{tenant!=""})`` adds the tenants and ``x{tenant=""}``
    selects the overall series (PromQL treats a missing label as empty). Latency is a real
    histogram in seconds (``<prefix>_processing_latency_seconds``, cumulative ``_bucket{le}``,
    ``_sum``, ``_count``). ``<prefix>_health_status{component}`` is 0 OK, 1 WARNING,
    2 CRITICAL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from rayworker.clock import Clock, SystemClock
from rayworker.errors import RayworkerError
from rayworker.settings import HealthThresholds
from rayworker.sinks.histogram import BOUNDS_MS, LatencyHistogram
from rayworker.sinks.metrics_store import MetricsSnapshot

__all__ = [
    "PROMETHEUS_CONTENT_TYPE",
    "ComponentHealth",
    "HealthReport",
    "Probe",
    "ProbeError",
    "Status",
    "check_all",
    "escape_label_value",
    "grade_dead_letters",
    "grade_error_rate",
    "grade_lag",
    "grade_latency",
    "processing_health",
    "render_prometheus",
    "run_probe",
    "snapshot_from_json",
    "worst",
]

PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""The content type of :func:`render_prometheus`'s output."""


class Status(StrEnum):
    """A component's health; ordered by severity, so ``max()`` is the worst."""

    OK = "OK"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"

    @property
    def severity(self) -> int:
        """0 for OK, 1 for WARNING, 2 for CRITICAL (also the Prometheus gauge value)."""
        return _SEVERITY[self]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Status):
            return NotImplemented
        return self.severity < other.severity

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Status):
            return NotImplemented
        return self.severity <= other.severity

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Status):
            return NotImplemented
        return self.severity > other.severity

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Status):
            return NotImplemented
        return self.severity >= other.severity


_SEVERITY: Final[dict[Status, int]] = {Status.OK: 0, Status.WARNING: 1, Status.CRITICAL: 2}


def worst(statuses: Iterable[Status]) -> Status:
    """The most severe of ``statuses``; OK when there are none."""
    return max(statuses, default=Status.OK)


@dataclass(frozen=True)
class ComponentHealth:
    """One component's answer. ``latency_ms`` is stamped by :func:`run_probe`."""

    name: str
    status: Status
    message: str
    detail: dict[str, Any] = field(default_factory=dict)
    latency_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The component as a JSON-ready dict."""
        return {
            "status": str(self.status),
            "message": self.message,
            "detail": self.detail,
            "latency_ms": round(self.latency_ms, 3),
        }


@dataclass(frozen=True)
class HealthReport:
    """Every component's health at one moment; ``status`` is the worst of them."""

    status: Status
    components: dict[str, ComponentHealth]
    at: datetime

    @classmethod
    def of(cls, components: Iterable[ComponentHealth], at: datetime) -> HealthReport:
        """A report whose overall status is the worst component's."""
        by_name = {c.name: c for c in components}
        return cls(worst(c.status for c in by_name.values()), by_name, at)

    @property
    def http_status(self) -> int:
        """200 for OK and WARNING (still serving), 503 for CRITICAL."""
        return 503 if self.status is Status.CRITICAL else 200

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return {
            "status": str(self.status),
            "at": self.at.isoformat(),
            "components": {name: c.to_json() for name, c in self.components.items()},
        }


Probe = Callable[[], Awaitable[ComponentHealth]]
"""An async check of one component; raising (or hanging) counts as a failed attempt."""


class ProbeError(RayworkerError):
    """Raised by a probe to fail an attempt with exactly this message (e.g. one already
    stripped of secrets); :func:`run_probe` reports it without the exception's type name."""


# --------------------------------------------------------------------------- running probes


async def run_probe(
    name: str,
    probe: Probe,
    *,
    timeout_s: float,
    attempts: int = 3,
    retry_delay_s: float = 1.0,
    timer: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> ComponentHealth:
    """Run ``probe`` with a timeout per attempt, retrying failures; never raises.

    ``timer`` (seconds, monotonic) measures ``latency_ms`` of the answering attempt (or of all
    attempts for a failure); ``sleep`` waits between attempts. Both are injectable for tests.
    """
    if attempts < 1:
        msg = f"Got attempts={attempts}. Run a probe at least once (attempts >= 1)."
        raise ValueError(msg)
    started = timer()
    reason = ""
    for attempt in range(1, attempts + 1):
        began = timer()
        try:
            async with asyncio.timeout(timeout_s):
                result = await probe()
        except TimeoutError:
            reason = "timeout"
        except ProbeError as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - any failure of a probe is a failed attempt
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        else:
            elapsed = (timer() - began) * 1000.0
            return dataclasses.replace(result, name=name, latency_ms=elapsed)
        if attempt < attempts:
            await sleep(retry_delay_s)
    return ComponentHealth(
        name=name,
        status=Status.CRITICAL,
        message=f"health check failed after {attempts} attempts: {reason}",
        detail={"attempts": attempts},
        latency_ms=(timer() - started) * 1000.0,
    )


async def check_all(
    probes: Mapping[str, Probe],
    *,
    timeout_s: float = 5.0,
    attempts: int = 3,
    retry_delay_s: float = 1.0,
    clock: Clock | None = None,
    timer: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> HealthReport:
    """Run every probe concurrently (see :func:`run_probe`); the overall status is the worst.

    ``clock`` dates the report (default: the system clock, UTC).
    """
    results = await asyncio.gather(
        *(
            run_probe(
                name,
                probe,
                timeout_s=timeout_s,
                attempts=attempts,
                retry_delay_s=retry_delay_s,
                timer=timer,
                sleep=sleep,
            )
            for name, probe in probes.items()
        )
    )
    return HealthReport.of(results, (clock or SystemClock()).now())


# --------------------------------------------------------------------------- thresholds


def _grade(value: float, warn: float, crit: float) -> Status:
    if value > crit:
        return Status.CRITICAL
    if value > warn:
        return Status.WARNING
    return Status.OK


def grade_latency(ms: float, thresholds: HealthThresholds) -> Status:
    """CRITICAL above ``latency_crit_ms``, WARNING above ``latency_warn_ms``, else OK."""
    return _grade(ms, thresholds.latency_warn_ms, thresholds.latency_crit_ms)


def grade_error_rate(rate: float, thresholds: HealthThresholds) -> Status:
    """CRITICAL above ``error_rate_crit``, WARNING above ``error_rate_warn``, else OK."""
    return _grade(rate, thresholds.error_rate_warn, thresholds.error_rate_crit)


def grade_lag(entries: int, thresholds: HealthThresholds) -> Status:
    """CRITICAL above ``lag_crit``, WARNING above ``lag_warn`` stream entries, else OK."""
    return _grade(entries, thresholds.lag_warn, thresholds.lag_crit)


def grade_dead_letters(newest_age_s: float | None, thresholds: HealthThresholds) -> Status:
    """WARNING while the newest dead letter is younger than ``dead_letter_recent_s``, else OK.

    Never CRITICAL: dead-lettering is how bad input leaves without stopping the pipeline, so a
    busy dead-letter stream says the producers need a look, not that this one is unready.
    """
    if newest_age_s is not None and newest_age_s < thresholds.dead_letter_recent_s:
        return Status.WARNING
    return Status.OK


def processing_health(
    snapshot: MetricsSnapshot, thresholds: HealthThresholds, *, name: str = "processing"
) -> ComponentHealth:
    """The worse of the error-rate and p99-latency grades of ``snapshot``."""
    rate, p99 = snapshot.error_rate, snapshot.p99
    status = worst((grade_error_rate(rate, thresholds), grade_latency(p99, thresholds)))
    message = f"{snapshot.events:,} events, error rate {rate * 100:.1f} %, p99 {p99:,.0f} ms"
    detail = {
        "events": snapshot.events,
        "errors": snapshot.errors,
        "error_rate": rate,
        "p50_ms": snapshot.p50,
        "p95_ms": snapshot.p95,
        "p99_ms": p99,
        "alerts": snapshot.alerts,
        "rejected": snapshot.rejected,
        "late": snapshot.late,
    }
    return ComponentHealth(name, status, message, detail)


def snapshot_from_json(data: Mapping[str, Any]) -> MetricsSnapshot:
    """Rebuild a :class:`MetricsSnapshot` from its :meth:`~MetricsSnapshot.to_json` form."""
    latency = data.get("latency_ms") or {}
    counts = tuple(int(n) for _bound, n in latency.get("buckets", ()))
    count = int(latency.get("count", sum(counts)))
    histogram = (
        LatencyHistogram(counts, float(latency.get("mean", 0.0)) * count)
        if counts
        else LatencyHistogram()
    )

    def ints(key: str) -> dict[str, int]:
        return {str(k): int(v) for k, v in (data.get(key) or {}).items()}

    return MetricsSnapshot(
        tenant=data.get("tenant"),
        events=int(data.get("events", 0)),
        rejected=int(data.get("rejected", 0)),
        rejected_by_reason=ints("rejected_by_reason"),
        late=int(data.get("late", 0)),
        alerts=int(data.get("alerts", 0)),
        alerts_by_rule=ints("alerts_by_rule"),
        alerts_by_severity=ints("alerts_by_severity"),
        alert_updates=int(data.get("alert_updates", 0)),
        duplicates=int(data.get("duplicates", 0)),
        naive_timestamps=int(data.get("naive_timestamps", 0)),
        state_capped=int(data.get("state_capped", 0)),
        errors=int(data.get("errors", 0)),
        errors_by_kind=ints("errors_by_kind"),
        latency=histogram,
    )


# --------------------------------------------------------------------------- Prometheus

_NAME_INVALID: Final = re.compile(r"[^a-zA-Z0-9_:]")


def escape_label_value(value: str) -> str:
    r"""Escape a label value: ``\`` ``"`` and LF become ``\\`` ``\"`` ``\n``."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _metric_prefix(prefix: str) -> str:
    cleaned = _NAME_INVALID.sub("_", prefix)
    return f"_{cleaned}" if cleaned[:1].isdigit() else cleaned


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(pairs: Iterable[tuple[str, str | None]]) -> str:
    parts = [f'{k}="{escape_label_value(v)}"' for k, v in pairs if v is not None]
    return "{" + ",".join(parts) + "}" if parts else ""


class _Exposition:
    """Collects samples per metric family and writes them, one HELP/TYPE block per family."""

    def __init__(self, prefix: str) -> None:
        self._prefix = _metric_prefix(prefix)
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def family(self, name: str, kind: str, help_text: str) -> str:
        full = f"{self._prefix}_{name}"
        self._families.setdefault(full, (kind, help_text, []))
        return full

    def sample(
        self, family: str, value: float, labels: Iterable[tuple[str, str | None]], suffix: str = ""
    ) -> None:
        self._families[family][2].append(f"{family}{suffix}{_labels(labels)} {_number(value)}")

    def text(self) -> str:
        lines: list[str] = []
        for name, (kind, help_text, samples) in self._families.items():
            lines.append(f"# HELP {name} {_escape_help(help_text)}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(samples)
        return "\n".join(lines) + "\n"


def _breakdown(total: int, parts: Mapping[str, int]) -> dict[str, int]:
    """``parts``, plus ``unspecified`` for whatever of ``total`` they do not account for."""
    out = dict(parts)
    rest = total - sum(parts.values())
    if rest > 0:
        out["unspecified"] = out.get("unspecified", 0) + rest
    return out


_SIMPLE_COUNTERS: Final[tuple[tuple[str, str, str], ...]] = (
    ("events", "events_processed_total", "Audit events processed."),
    ("late", "events_late_total", "Events older than the watermark minus the allowed lateness."),
    ("duplicates", "events_duplicate_total", "Events dropped as duplicates."),
    ("naive_timestamps", "events_naive_timestamp_total", "Events with naive timestamps."),
    ("alerts", "alerts_total", "Alerts created (updates of an open alert not counted)."),
    ("alert_updates", "alert_updates_total", "Updates of already open alerts."),
    ("state_capped", "state_capped_total", "Times per-key window state hit its cap."),
    (
        "integrity_violations",
        "integrity_violations_total",
        "Events whose hash or signature failed integrity verification.",
    ),
)


def render_prometheus(
    report: HealthReport | None,
    snapshots: Mapping[str | None, MetricsSnapshot],
    *,
    prefix: str = "rayworker",
) -> str:
    """Metrics and health in the Prometheus text format 0.0.4 (see the module docstring).

    ``snapshots`` maps a tenant (``None``: overall, rendered without a ``tenant`` label) to
    its snapshot. ``report`` None leaves out the health gauges.
    """
    out = _Exposition(prefix)
    scopes = sorted(snapshots.items(), key=lambda kv: (kv[0] is not None, kv[0] or ""))
    for attr, name, help_text in _SIMPLE_COUNTERS:
        family = out.family(name, "counter", help_text)
        for tenant, snap in scopes:
            out.sample(family, getattr(snap, attr), [("tenant", tenant)])
    breakdowns: tuple[tuple[str, str, str, Callable[[MetricsSnapshot], dict[str, int]]], ...] = (
        (
            "events_rejected_total",
            "Events rejected at validation, by reason.",
            "reason",
            lambda s: _breakdown(s.rejected, s.rejected_by_reason),
        ),
        (
            "alerts_by_rule_total",
            "Alerts created, by rule.",
            "rule",
            lambda s: dict(s.alerts_by_rule),
        ),
        (
            "alerts_by_severity_total",
            "Alerts created, by severity.",
            "severity",
            lambda s: dict(s.alerts_by_severity),
        ),
        (
            "errors_total",
            "Processing errors, by kind.",
            "kind",
            lambda s: _breakdown(s.errors, s.errors_by_kind),
        ),
    )
    for name, help_text, label, parts_of in breakdowns:
        family = out.family(name, "counter", help_text)
        for tenant, snap in scopes:
            for key, n in sorted(parts_of(snap).items()):
                out.sample(family, n, [("tenant", tenant), (label, key)])

    hist = out.family(
        "processing_latency_seconds", "histogram", "Event processing latency in seconds."
    )
    for tenant, snap in scopes:
        cumulative = 0
        for bound_ms, n in zip((*BOUNDS_MS, math.inf), snap.latency.counts, strict=True):
            cumulative += n
            le = "+Inf" if math.isinf(bound_ms) else repr(bound_ms / 1000.0)
            out.sample(hist, cumulative, [("tenant", tenant), ("le", le)], "_bucket")
        out.sample(hist, snap.latency.sum_ms / 1000.0, [("tenant", tenant)], "_sum")
        out.sample(hist, snap.latency.count, [("tenant", tenant)], "_count")

    if report is not None:
        gauge = out.family(
            "health_status", "gauge", "Component health: 0 OK, 1 WARNING, 2 CRITICAL."
        )
        for name, component in sorted(report.components.items()):
            out.sample(gauge, component.status.severity, [("component", name)])
        overall = out.family(
            "health_overall_status", "gauge", "Worst component health: 0 OK, 1 WARNING, 2 CRITICAL."
        )
        out.sample(overall, report.status.severity, [])
    return out.text()
