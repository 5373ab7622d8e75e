"""What the notifier works on: alerts with labels, and the notifications made of them.

An alert reaches the notifier as the JSON of :meth:`rayworker.alerts.Alert.to_json` (or as
an :class:`~rayworker.alerts.Alert`). Like Alertmanager, the notifier sees it through
*labels*: ``tenant_id``, ``id``, ``rule_id`` (also as ``alertname``), ``severity``, ``type``,
``source``, ``fingerprint`` and one ``group.<name>`` per group-by value. Tags are matched
with the pseudo-label ``tag`` (any of the alert's tags).

Times are seconds since the epoch (floats) from an injected clock. An alert *starts* at its
first hit (event time) and *ends* ``resolve_timeout`` after the notifier last heard of it,
or at once when an update says it was resolved or dismissed (Alertmanager's EndsAt).

Pure: no network client is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rayworker.alerts import Alert

__all__ = ["MAX_PAYLOADS", "Notification", "NotifyAlert", "epoch_s", "from_epoch_s", "labels_of"]

MAX_PAYLOADS = 1000
"""Alerts carried in full by one notification (firing first); the rest are counted and
named by id only, so a storm of any size stays one message of bounded size."""

_ENDED = frozenset({"resolved", "dismissed"})


def epoch_s(at: datetime) -> float:
    """Seconds since the epoch of a timezone-aware time."""
    if at.tzinfo is None:
        msg = f"need a timezone-aware time, got {at.isoformat()}; add tzinfo=UTC"
        raise ValueError(msg)
    return at.timestamp()


def from_epoch_s(seconds: float) -> datetime:
    """The UTC time of seconds since the epoch."""
    return datetime.fromtimestamp(seconds, tz=UTC)


def _parse_time(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return epoch_s(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        return None


def labels_of(payload: dict[str, Any]) -> dict[str, str]:
    """The labels of an alert's JSON (missing values are empty strings, as in Alertmanager)."""
    labels = {
        "tenant_id": str(payload.get("tenant_id", "")),
        "id": str(payload.get("id", "")),
        "rule_id": str(payload.get("rule_id", "")),
        "alertname": str(payload.get("rule_id", "")),
        "severity": str(payload.get("severity", "")),
        "type": str(payload.get("type", "")),
        "source": str(payload.get("source", "")),
        "fingerprint": str(payload.get("fingerprint", "")),
    }
    group = payload.get("group") or {}
    if isinstance(group, dict):
        for name, value in group.items():
            labels[f"group.{name}"] = "" if value is None else str(value)
    return labels


@dataclass(slots=True)
class NotifyAlert:
    """One alert in the notifier: labels for routing, times for grouping, JSON for messages."""

    id: str
    tenant: str
    labels: dict[str, str]
    tags: tuple[str, ...]
    starts_at: float
    ends_at: float
    updated_at: float
    payload: dict[str, Any] = field(repr=False)

    @classmethod
    def from_payload(
        cls, payload: dict[str, Any] | Alert, *, now: float, resolve_timeout: float
    ) -> NotifyAlert:
        """Read an alert update received at ``now``."""
        data = payload.to_json() if isinstance(payload, Alert) else dict(payload)
        tenant = data.get("tenant_id")
        alert_id = data.get("id")
        if not isinstance(tenant, str) or not tenant or not isinstance(alert_id, str):
            msg = "an alert needs a string tenant_id and id (the JSON of Alert.to_json())"
            raise ValueError(msg)
        tags = data.get("tags") or []
        starts = _parse_time(data.get("first_seen") or data.get("created_at"))
        ended = str(data.get("status", "active")) in _ENDED
        return cls(
            id=alert_id,
            tenant=tenant,
            labels=labels_of(data),
            tags=tuple(str(t) for t in tags) if isinstance(tags, list) else (),
            starts_at=now if starts is None else starts,
            ends_at=now if ended else now + resolve_timeout,
            updated_at=now,
            payload=data,
        )

    @property
    def severity(self) -> str:
        """The alert's severity label."""
        return self.labels["severity"]

    def resolved(self, now: float) -> bool:
        """True once the alert has ended (Alertmanager's ``ResolvedAt(now)``)."""
        return self.ends_at <= now

    def merge(self, newer: NotifyAlert) -> NotifyAlert:
        """The state after an update: the first start is kept, the rest is the newer's."""
        newer.starts_at = min(self.starts_at, newer.starts_at)
        return newer

    def to_state(self) -> dict[str, Any]:
        """Plain data for snapshots."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "labels": self.labels,
            "tags": list(self.tags),
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "updated_at": self.updated_at,
            "payload": self.payload,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> NotifyAlert:
        """The inverse of :meth:`to_state`."""
        return cls(
            id=state["id"],
            tenant=state["tenant"],
            labels=dict(state["labels"]),
            tags=tuple(state["tags"]),
            starts_at=float(state["starts_at"]),
            ends_at=float(state["ends_at"]),
            updated_at=float(state["updated_at"]),
            payload=dict(state["payload"]),
        )


@dataclass(frozen=True, slots=True)
class Notification:
    """One message for one receiver: a group's firing (and resolved) alerts, redacted.

    ``firing``/``resolved`` hold at most :data:`MAX_PAYLOADS` alerts in full;
    ``firing_ids``/``resolved_ids`` name all of them. ``idempotency_key`` is the same for
    every attempt and every re-send of the same content, so a receiver can drop the
    duplicates that at-least-once delivery may cause.
    """

    tenant: str
    receiver: str
    route: int
    group_key: str
    group_labels: dict[str, str]
    firing: tuple[dict[str, Any], ...]
    resolved: tuple[dict[str, Any], ...]
    idempotency_key: str
    flush_id: int
    created_at: float
    firing_ids: tuple[str, ...] = ()
    resolved_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Without explicit ids, every alert is carried in full: name them from the payloads.
        if not self.firing_ids and self.firing:
            object.__setattr__(self, "firing_ids", tuple(str(a["id"]) for a in self.firing))
        if not self.resolved_ids and self.resolved:
            object.__setattr__(self, "resolved_ids", tuple(str(a["id"]) for a in self.resolved))

    @property
    def status(self) -> str:
        """``firing`` while any alert fires, else ``resolved``."""
        return "firing" if self.firing_ids else "resolved"

    @property
    def total(self) -> int:
        """How many alerts the message is about (carried in full or not)."""
        return len(self.firing_ids) + len(self.resolved_ids)

    @property
    def omitted(self) -> int:
        """Alerts named by id only (beyond :data:`MAX_PAYLOADS`)."""
        return self.total - len(self.firing) - len(self.resolved)

    @property
    def alerts(self) -> tuple[dict[str, Any], ...]:
        """Firing alerts first, then resolved ones."""
        return self.firing + self.resolved

    @property
    def alert_ids(self) -> list[str]:
        """The ids of every alert in the message."""
        return [*self.firing_ids, *self.resolved_ids]
