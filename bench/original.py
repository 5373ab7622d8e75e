"""A faithful port of the original worker's detection algorithm: the benchmark baseline (c).

This is deliberately the original's algorithm (reference section 3, ``MonitoringService`` v3),
defects included, so its cost can be measured next to rayworker's core. Do not use it for
anything else. Per event it:

* appends the event to one in-process list and drops events older than the largest window
  (measured against ``now``; the original used the wall clock, the benchmark passes the
  event's own time so windows behave as on live traffic);
* runs the five detectors over ``list + [event]`` (a full copy, and the new event counted
  twice), each filtering the whole retained list, parsing every timestamp again as
  ``new Date(e.timestamp)`` does, grouping in insertion order and returning at most the first
  group at or above its threshold;
* turns each hit into an alert, deduplicated by ``source:title:severity:description`` for
  300 s (the v3 key, which contains the count and so rarely deduplicates).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

FAILED_AUTH = (5, 300_000)
UNAUTHORIZED = (3, 600_000)
VELOCITY = (50, 60_000)
BULK = (100, 300_000)
OFF_HOURS = (22, 6)
RETENTION_MS = max(FAILED_AUTH[1], UNAUTHORIZED[1], VELOCITY[1], BULK[1])
COOLDOWN_MS = 300_000


def _ms(stamp: str) -> float:
    """``new Date(s).getTime()``."""
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp() * 1000


def _first_over(groups: dict[str, list[dict[str, Any]]], threshold: int) -> tuple[str, int] | None:
    for key, members in groups.items():
        if len(members) >= threshold:
            return key, len(members)
    return None


class OriginalMonitor:
    """The original MonitoringService's detection, event by event."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.cooldown: dict[str, float] = {}
        self.alerts: list[dict[str, Any]] = []

    def prefill(self, events: list[dict[str, Any]]) -> None:
        """Load the retained list without detection (the steady state of a long run)."""
        self.events.extend(events)

    def process(self, event: dict[str, Any], now_ms: float) -> int:
        """Process one event; returns the number of patterns found."""
        self.events.append(event)
        self.events = [e for e in self.events if _ms(e["timestamp"]) > now_ms - RETENTION_MS]
        candidates = [*self.events, event]  # the original re-appends: counted twice
        patterns = [
            self._failed_auth(candidates, now_ms),
            self._unauthorized(candidates, now_ms),
            self._velocity(candidates, now_ms),
            self._bulk(candidates, now_ms),
            self._off_hours(candidates),
        ]
        found = [p for p in patterns if p is not None]
        for pattern in found:
            self._alert(pattern, now_ms)
        return len(found)

    def _failed_auth(self, events: list[dict[str, Any]], now: float) -> dict[str, Any] | None:
        threshold, window = FAILED_AUTH
        hits = [
            e
            for e in events
            if "auth.login.failure" in e.get("action", "")
            and e.get("status") == "failure"
            and _ms(e["timestamp"]) > now - window
        ]
        groups: dict[str, list[dict[str, Any]]] = {}
        for e in hits:
            key = e.get("principalId") or (e.get("sessionContext") or {}).get("ipAddress")
            groups.setdefault(key or "unknown", []).append(e)
        first = _first_over(groups, threshold)
        if first is None:
            return None
        key, n = first
        return {
            "type": "FAILED_AUTH",
            "severity": "HIGH",
            "description": f"{n} failed authentication attempts detected from {key} "
            f"within {window // 1000} seconds",
            "events": groups[key],
        }

    def _unauthorized(self, events: list[dict[str, Any]], now: float) -> dict[str, Any] | None:
        threshold, window = UNAUTHORIZED
        hits = []
        for e in events:
            text = (e.get("outcomeDescription") or "").lower()
            if (
                e.get("status") == "failure"
                and ("unauthorized" in text or "access denied" in text or "forbidden" in text)
                and _ms(e["timestamp"]) > now - window
            ):
                hits.append(e)
        groups: dict[str, list[dict[str, Any]]] = {}
        for e in hits:
            groups.setdefault(e.get("principalId") or "unknown", []).append(e)
        first = _first_over(groups, threshold)
        if first is None:
            return None
        key, n = first
        return {
            "type": "UNAUTHORIZED_ACCESS",
            "severity": "CRITICAL",
            "description": f"{n} unauthorized access attempts detected from principal {key} "
            f"within {window // 1000} seconds",
            "events": groups[key],
        }

    def _velocity(self, events: list[dict[str, Any]], now: float) -> dict[str, Any] | None:
        threshold, window = VELOCITY
        hits = [
            e
            for e in events
            if (
                "data.read" in e.get("action", "")
                or "fhir." in e.get("action", "")
                or e.get("targetResourceType")
            )
            and e.get("status") == "success"
            and _ms(e["timestamp"]) > now - window
        ]
        groups: dict[str, list[dict[str, Any]]] = {}
        for e in hits:
            groups.setdefault(e.get("principalId") or "unknown", []).append(e)
        first = _first_over(groups, threshold)
        if first is None:
            return None
        key, n = first
        return {
            "type": "DATA_VELOCITY",
            "severity": "MEDIUM",
            "description": f"{n} data access operations detected from principal {key} "
            f"within {window // 1000} seconds",
            "events": groups[key],
        }

    def _bulk(self, events: list[dict[str, Any]], now: float) -> dict[str, Any] | None:
        threshold, window = BULK
        hits = [
            e
            for e in events
            if (
                "data.export" in e.get("action", "")
                or "data.import" in e.get("action", "")
                or "bulk" in e.get("action", "")
                or (e.get("recordCount") or 0) > 10
            )
            and _ms(e["timestamp"]) > now - window
        ]
        if len(hits) < threshold:
            return None
        return {
            "type": "BULK_OPERATION",
            "severity": "MEDIUM",
            "description": f"{len(hits)} bulk operations detected within {window // 1000} seconds",
            "events": hits,
        }

    def _off_hours(self, events: list[dict[str, Any]]) -> dict[str, Any] | None:
        start, end = OFF_HOURS
        hits = []
        for e in events:
            hour = datetime.fromtimestamp(_ms(e["timestamp"]) / 1000, tz=UTC).hour
            off = (hour >= start or hour < end) if start > end else start <= hour < end
            action = e.get("action", "")
            if off and ("data." in action or "fhir." in action) and e.get("status") == "success":
                hits.append(e)
        if not hits:
            return None
        return {
            "type": "OFF_HOURS",
            "severity": "LOW",
            "description": f"{len(hits)} data access operations detected during off-hours "
            f"({start}:00 - {end}:00)",
            "events": hits,
        }

    def _alert(self, pattern: dict[str, Any], now: float) -> None:
        title = f"Suspicious Pattern Detected: {pattern['type']}"
        key = f"audit-monitoring:{title}:{pattern['severity']}:{pattern['description']}"
        until = self.cooldown.get(key)
        if until is not None and until > now:
            return
        self.cooldown[key] = now + COOLDOWN_MS
        self.alerts.append(
            {
                "title": title,
                "severity": pattern["severity"],
                "description": pattern["description"],
                "organizationId": pattern["events"][0].get("organizationId"),
            }
        )
