"""Routing, grouping, silencing and de-duplication of notifications: Alertmanager's dispatcher.

Each alert is routed within its own tenant only: the tenant's routes are tried in order and
the first that matches takes it (``continue: true`` lets later routes take it too). A route
puts the alert in the *aggregation group* named by the tenant, the route and the values of
the route's ``group_by`` labels, and each group notifies the route's receivers:

* A new group waits ``group_wait`` before its first message, so a storm becomes one message.
  If an alert arrives whose start is already more than ``group_wait`` in the past and the
  group has never been flushed, the group flushes at once (Alertmanager's ``insert``).
* When a group flushes, its next flush is ``group_interval`` later. A flush lists all the
  group's alerts; silenced ones are removed first.
* Per receiver, a *notification log* entry (firing and resolved ids, time) decides whether
  anything is sent (Alertmanager's ``DedupStage.needsUpdate``): always when a firing alert
  is new; when every alert has resolved; when the route sends resolved alerts and a new one
  resolved; otherwise only once ``repeat_interval`` has passed since the last message.
* With ``send_resolved: false`` resolved alerts are left out of messages, and a flush that
  would hold only resolved alerts sends nothing but is logged as done.
* A flush is complete when every receiver's delivery is done. Only if all succeeded are the
  resolved alerts (unchanged since the flush) forgotten; a failed delivery is not logged, so
  the next flush tries again (at-least-once). A group flushes again only after its previous
  flush completed; a group left with no alerts is removed.

One difference from Alertmanager: empty groups are removed when their flush completes
instead of by a 30-second maintenance sweep, so a group re-created later waits
``group_wait`` again (the notification log still prevents a repeated message).

Pure: time is passed in (seconds since the epoch); :meth:`Dispatcher.snapshot` and
:meth:`Dispatcher.restore` carry the groups and the notification log across restarts.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from rayworker.alerts import Alert
from rayworker.notify.config import NotifyConfig, RouteConfig
from rayworker.notify.model import MAX_PAYLOADS, Notification, NotifyAlert
from rayworker.notify.redact import redact_alert, redact_labels
from rayworker.notify.silences import Silences
from rayworker.rules.model import Severity

__all__ = ["Dispatcher", "group_key", "route_matches"]

_RANK = {s.value: s.rank for s in Severity}


def route_matches(route: RouteConfig, alert: NotifyAlert) -> bool:
    """True when the route's severity, rule and tag conditions all hold for the alert."""
    match = route.match
    if _RANK.get(alert.severity, 0) < match.min_severity.rank:
        return False
    if match.rule_ids is not None and alert.labels["rule_id"] not in match.rule_ids:
        return False
    return match.tags is None or bool(set(match.tags) & set(alert.tags))


def _group_labels(group_by: list[str], labels: dict[str, str]) -> dict[str, str]:
    if group_by == ["..."]:
        return dict(labels)
    return {name: labels[name] for name in group_by if name in labels}


def group_key(tenant: str, route: int, labels: dict[str, str]) -> str:
    """The id of an aggregation group; the tenant is always part of it."""
    raw = json.dumps([tenant, route, sorted(labels.items())], separators=(",", ":"))
    return "grp-" + hashlib.sha256(raw.encode()).hexdigest()[:24]


def _severity_order(alert: NotifyAlert) -> tuple[int, float, str]:
    return (-_RANK.get(alert.severity, 0), alert.starts_at, alert.id)


@dataclass(slots=True)
class _LogEntry:
    firing: frozenset[str]
    resolved: frozenset[str]
    at: float
    seq: int
    expires: float


@dataclass(slots=True)
class _Group:
    key: str
    tenant: str
    route: int
    labels: dict[str, str]
    next_flush: float
    alerts: dict[str, NotifyAlert] = field(default_factory=dict)
    has_flushed: bool = False
    in_flight: int | None = None


@dataclass(slots=True)
class _Flush:
    group: str
    firing: frozenset[str]
    resolved: frozenset[str]
    resolved_seen: dict[str, float]
    pending: set[str]
    ok: bool = True


class Dispatcher:
    """Routes, groups, silences and de-duplicates; tells the caller what to send and when."""

    def __init__(self, config: NotifyConfig, silences: Silences | None = None) -> None:
        self.config = config
        self.silences = silences if silences is not None else Silences()
        self.groups: dict[str, _Group] = {}
        self.log: dict[tuple[str, str], _LogEntry] = {}
        self.flushes: dict[int, _Flush] = {}
        self.counts: Counter[str] = Counter()
        self._next_flush_id = 1

    # --- alerts in -------------------------------------------------------------------------

    def ingest(self, alerts: Iterable[dict[str, Any] | Alert], now: float) -> int:
        """Route alert updates received at ``now``; returns how many a route took."""
        taken = 0
        for payload in alerts:
            try:
                alert = NotifyAlert.from_payload(
                    payload, now=now, resolve_timeout=self.config.resolve_timeout
                )
            except ValueError:
                self.counts["malformed"] += 1
                continue
            tenant = self.config.for_tenant(alert.tenant)
            routed = False
            for index, route in enumerate(tenant.routes if tenant is not None else []):
                if not route_matches(route, alert):
                    continue
                routed = True
                self._insert(replace(alert), index, route, now)
                if not route.continue_:
                    break
            self.counts["routed" if routed else "unrouted"] += 1
            taken += routed
        return taken

    def _insert(self, alert: NotifyAlert, index: int, route: RouteConfig, now: float) -> None:
        labels = _group_labels(route.group_by, alert.labels)
        key = group_key(alert.tenant, index, labels)
        group = self.groups.get(key)
        if group is None:
            group = _Group(key, alert.tenant, index, labels, next_flush=now + route.group_wait)
            self.groups[key] = group
        old = group.alerts.get(alert.id)
        group.alerts[alert.id] = old.merge(alert) if old is not None else alert
        # An alert that started more than group_wait ago needs no more waiting.
        if not group.has_flushed and alert.starts_at + route.group_wait < now:
            group.next_flush = min(group.next_flush, now)

    # --- flushing --------------------------------------------------------------------------

    def next_due(self) -> float | None:
        """When the next group is due (None: nothing is waiting)."""
        times = [g.next_flush for g in self.groups.values() if g.in_flight is None]
        return min(times) if times else None

    def due(self, now: float) -> list[Notification]:
        """Flush every group whose time has come; returns the notifications to deliver."""
        out: list[Notification] = []
        for group in list(self.groups.values()):
            if group.in_flight is None and group.next_flush <= now:
                out.extend(self._flush(group, now))
        return out

    def flush_all(self, now: float) -> list[Notification]:
        """Flush every group now, waiting or not (used when draining before a stop)."""
        for group in self.groups.values():
            if group.in_flight is None:
                group.next_flush = min(group.next_flush, now)
        return self.due(now)

    def _route(self, group: _Group) -> RouteConfig | None:
        tenant = self.config.for_tenant(group.tenant)
        if tenant is None or group.route >= len(tenant.routes):
            return None
        return tenant.routes[group.route]

    def _flush(self, group: _Group, now: float) -> list[Notification]:
        route = self._route(group)
        if route is None or not group.alerts:
            del self.groups[group.key]
            return []
        group.next_flush = now + route.group_interval
        group.has_flushed = True
        alerts = sorted(group.alerts.values(), key=_severity_order)
        resolved_seen = {a.id: a.updated_at for a in alerts if a.resolved(now)}
        visible: list[NotifyAlert] = []
        for a in alerts:
            if self.silences.muting(group.tenant, a.labels, a.tags, now):
                self.counts["silenced"] += 1
            else:
                visible.append(a)
        firing = [a for a in visible if not a.resolved(now)]
        resolved = [a for a in visible if a.resolved(now)]
        firing_ids = frozenset(a.id for a in firing)
        resolved_ids = frozenset(a.id for a in resolved)
        flush_id = self._next_flush_id
        self._next_flush_id += 1
        out: list[Notification] = []
        for receiver in route.receivers if visible else []:
            entry = self.log.get((group.key, receiver))
            if not _needs_update(entry, firing_ids, resolved_ids, route, now):
                continue
            if not firing and not route.send_resolved:
                self._log(group.key, receiver, firing_ids, resolved_ids, route, now)
                continue
            sent_resolved = resolved if route.send_resolved else []
            out.append(
                self._notification(
                    group, route, receiver, firing, sent_resolved, entry, flush_id, now
                )
            )
        if out:
            self.flushes[flush_id] = _Flush(
                group.key, firing_ids, resolved_ids, resolved_seen, {n.receiver for n in out}
            )
            group.in_flight = flush_id
        else:
            self._settle(group, resolved_seen, ok=True)
        return out

    def _notification(
        self,
        group: _Group,
        route: RouteConfig,
        receiver: str,
        firing: list[NotifyAlert],
        resolved: list[NotifyAlert],
        entry: _LogEntry | None,
        flush_id: int,
        now: float,
    ) -> Notification:
        seq = entry.seq + 1 if entry is not None else 1
        raw = json.dumps(
            [
                group.tenant,
                receiver,
                group.key,
                sorted(a.id for a in firing),
                sorted(a.id for a in resolved),
                seq,
            ],
            separators=(",", ":"),
        )
        self.counts["notifications"] += 1
        # Redacting and carrying every alert of a huge storm would cost seconds and
        # megabytes for a message no one reads to the end: the first MAX_PAYLOADS go in full.
        full_firing = firing[:MAX_PAYLOADS]
        full_resolved = resolved[: max(0, MAX_PAYLOADS - len(full_firing))]
        return Notification(
            tenant=group.tenant,
            receiver=receiver,
            route=group.route,
            group_key=group.key,
            group_labels=redact_labels(group.labels, route.redact),
            firing=tuple(_shown(a, route, "firing") for a in full_firing),
            resolved=tuple(_shown(a, route, "resolved") for a in full_resolved),
            idempotency_key=hashlib.sha256(raw.encode()).hexdigest()[:32],
            flush_id=flush_id,
            created_at=now,
            firing_ids=tuple(a.id for a in firing),
            resolved_ids=tuple(a.id for a in resolved),
        )

    # --- results -------------------------------------------------------------------------

    def complete(self, notification: Notification, *, ok: bool, now: float) -> None:
        """Record a delivery's outcome; the last receiver of a flush settles the group."""
        flush = self.flushes.get(notification.flush_id)
        if flush is None or notification.receiver not in flush.pending:
            return
        flush.pending.discard(notification.receiver)
        if ok:
            route = self._route_of(flush.group)
            if route is not None:
                self._log(
                    flush.group, notification.receiver, flush.firing, flush.resolved, route, now
                )
        else:
            flush.ok = False
        if flush.pending:
            return
        del self.flushes[notification.flush_id]
        group = self.groups.get(flush.group)
        if group is not None:
            group.in_flight = None
            self._settle(group, flush.resolved_seen, ok=flush.ok)

    def _route_of(self, key: str) -> RouteConfig | None:
        group = self.groups.get(key)
        return self._route(group) if group is not None else None

    def _settle(self, group: _Group, resolved_seen: dict[str, float], *, ok: bool) -> None:
        if ok:
            for alert_id, seen in resolved_seen.items():
                alert = group.alerts.get(alert_id)
                # An alert updated during the flush may be firing again: keep it.
                if alert is not None and alert.updated_at == seen:
                    del group.alerts[alert_id]
        if not group.alerts and group.in_flight is None:
            del self.groups[group.key]

    def _log(
        self,
        key: str,
        receiver: str,
        firing: frozenset[str],
        resolved: frozenset[str],
        route: RouteConfig,
        now: float,
    ) -> None:
        entry = self.log.get((key, receiver))
        seq = entry.seq + 1 if entry is not None else 1
        expires = now + 2 * route.repeat_interval
        self.log[(key, receiver)] = _LogEntry(firing, resolved, now, seq, expires)

    def gc(self, now: float) -> int:
        """Forget notification-log entries past their retention; returns how many."""
        old = [k for k, e in self.log.items() if e.expires <= now]
        for k in old:
            del self.log[k]
        return len(old)

    # --- state -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Groups and the notification log as plain data (deliveries in flight are not kept:
        after a restore their groups flush again, so nothing is lost)."""
        return {
            "groups": [
                {
                    "key": g.key,
                    "tenant": g.tenant,
                    "route": g.route,
                    "labels": g.labels,
                    "next_flush": g.next_flush,
                    "has_flushed": g.has_flushed,
                    "alerts": [a.to_state() for a in g.alerts.values()],
                }
                for g in self.groups.values()
            ],
            "log": [
                {
                    "group": k[0],
                    "receiver": k[1],
                    "firing": sorted(e.firing),
                    "resolved": sorted(e.resolved),
                    "at": e.at,
                    "seq": e.seq,
                    "expires": e.expires,
                }
                for k, e in self.log.items()
            ],
            "next_flush_id": self._next_flush_id,
        }

    @classmethod
    def restore(
        cls, config: NotifyConfig, state: dict[str, Any], silences: Silences | None = None
    ) -> Dispatcher:
        """A dispatcher continuing from :meth:`snapshot` data."""
        dispatcher = cls(config, silences)
        for g in state["groups"]:
            group = _Group(
                g["key"], g["tenant"], int(g["route"]), dict(g["labels"]), float(g["next_flush"])
            )
            group.has_flushed = bool(g["has_flushed"])
            group.alerts = {a["id"]: NotifyAlert.from_state(a) for a in g["alerts"]}
            dispatcher.groups[group.key] = group
        for e in state["log"]:
            dispatcher.log[(e["group"], e["receiver"])] = _LogEntry(
                frozenset(e["firing"]),
                frozenset(e["resolved"]),
                float(e["at"]),
                int(e["seq"]),
                float(e["expires"]),
            )
        dispatcher._next_flush_id = int(state["next_flush_id"])
        return dispatcher


def _needs_update(
    entry: _LogEntry | None,
    firing: frozenset[str],
    resolved: frozenset[str],
    route: RouteConfig,
    now: float,
) -> bool:
    """Alertmanager's ``DedupStage.needsUpdate``."""
    if entry is None:
        return bool(firing)
    if not firing <= entry.firing:
        return True
    # Everything resolved: notify (whatever send_resolved says) so the log is cleared.
    if not firing:
        return bool(entry.firing)
    if route.send_resolved and not resolved <= entry.resolved:
        return True
    return entry.at < now - route.repeat_interval


def _shown(alert: NotifyAlert, route: RouteConfig, status: str) -> dict[str, Any]:
    payload = redact_alert(alert.payload, route.redact)
    return {**payload, "notification_status": status}
