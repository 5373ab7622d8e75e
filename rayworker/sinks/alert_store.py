"""The alert store seam: the :class:`AlertStore` Protocol, its row types and the lifecycle.

Three implementations honour the same contract (one contract test runs against all of them):
:class:`~rayworker.sinks.memory_alerts.MemoryAlertStore` (the reference semantics),
:class:`~rayworker.sinks.sqlite_alerts.SqliteAlertStore` (the embedded default) and
:class:`~rayworker.sinks.postgres_alerts.PostgresAlertStore`.

Contract
    * Every read and every lifecycle action is scoped by ``tenant``. Another tenant's alert id
      behaves exactly like an unknown id (``None`` or :class:`AlertNotFound`, same message),
      so a caller learns nothing about other tenants' alerts.
    * :meth:`AlertStore.upsert` is idempotent on the alert id. A re-delivery never creates a
      second row; ``occurrences`` and ``last_seen`` take the greater value and ``first_seen``
      the smaller, so a stale re-delivery cannot move them back; the descriptive fields
      (count, evidence, title, description, metadata) come from the version with the most
      occurrences (ties: the incoming one). An id that already belongs to another tenant is
      never overwritten. An upsert never changes an alert's lifecycle status.
    * Lifecycle actions follow :func:`transition` and each writes one :class:`Transition`.
    * Every text is stored and returned verbatim: SQL metacharacters, any Unicode, and NUL
      (``"\\x00"``) too. PostgreSQL ``text`` and ``jsonb`` cannot hold NUL, so the SQL stores
      keep text through :func:`store_text` / :func:`load_text`, a reversible escape that
      leaves every other string as it is (see :data:`NUL_ESCAPE`); a NUL never fails a write,
      so an attacker cannot keep an alert out of the store by putting one in an event field.
    * :meth:`AlertStore.list` returns newest ``last_seen`` first (ties: id descending), or
      with ``sort="severity"`` CRITICAL, HIGH, MEDIUM, LOW, INFO (then any other severity),
      newest first within a severity.

Lifecycle (status machine)::

    active ──acknowledge──▶ acknowledged
    active | acknowledged ──resolve──▶ resolved
    active | acknowledged ──dismiss──▶ dismissed
    acknowledged | resolved | dismissed ──reopen──▶ active

Times are timezone-aware datetimes. ``created_at``, ``updated_at`` and the lifecycle times come
from the store's injected :class:`~rayworker.clock.Clock`; ``first_seen``/``last_seen`` are the
alert's event times.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, Protocol, get_args

import msgspec

from rayworker.alerts import Alert
from rayworker.errors import SinkError

__all__ = [
    "ACTIVE_STATUSES",
    "NUL_ESCAPE",
    "SEVERITIES",
    "SORTS",
    "STATUSES",
    "Action",
    "AlertNotFound",
    "AlertStats",
    "AlertStore",
    "Cursor",
    "LifecycleActions",
    "LifecycleError",
    "MigrationError",
    "QueryError",
    "Row",
    "Sort",
    "Status",
    "StoredAlert",
    "Transition",
    "TrendPoint",
    "alert_values",
    "apply_action",
    "fold_batch",
    "load_json",
    "load_text",
    "merge_update",
    "new_row",
    "severity_rank",
    "store_json",
    "store_text",
    "stored_alert",
    "stored_transition",
    "transition",
]

Status = Literal["active", "acknowledged", "resolved", "dismissed"]
Action = Literal["acknowledge", "resolve", "dismiss", "reopen"]
Sort = Literal["newest", "severity"]

STATUSES: Final[tuple[str, ...]] = get_args(Status)
ACTIVE_STATUSES: Final[tuple[str, ...]] = ("active", "acknowledged")
SEVERITIES: Final[tuple[str, ...]] = ("INFO", "LOW", "MEDIUM", "HIGH", "CRITICAL")
SORTS: Final[tuple[str, ...]] = get_args(Sort)
TREND_PERIODS: Final[tuple[tuple[str, timedelta], ...]] = (
    ("24h", timedelta(hours=24)),
    ("7d", timedelta(days=7)),
    ("30d", timedelta(days=30)),
)
MAX_LIMIT: Final = 1000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- errors


class LifecycleError(SinkError):
    """Raised when a lifecycle action is not allowed from the alert's current status."""


class AlertNotFound(SinkError):  # noqa: N818 - the name reads as the condition, like KeyError
    """Raised when an alert id is unknown to the tenant (or belongs to another tenant)."""


class QueryError(SinkError):
    """Raised when a store call gets an invalid argument (limit, naive time, empty actor)."""


class MigrationError(SinkError):
    """Raised when the schema is not migrated, or an applied migration file has changed."""


# --------------------------------------------------------------------------- state machine

_ALLOWED: Final[dict[str, tuple[frozenset[str], Status]]] = {
    "acknowledge": (frozenset({"active"}), "acknowledged"),
    "resolve": (frozenset({"active", "acknowledged"}), "resolved"),
    "dismiss": (frozenset({"active", "acknowledged"}), "dismissed"),
    "reopen": (frozenset({"acknowledged", "resolved", "dismissed"}), "active"),
}
_PAST: Final = {
    "acknowledge": "acknowledged",
    "resolve": "resolved",
    "dismiss": "dismissed",
    "reopen": "reopened",
}


def transition(current_status: str, action: str, *, alert_id: str = "the alert") -> Status:
    """The status after ``action`` on an alert in ``current_status``; pure.

    Raises :class:`LifecycleError` naming the alert, its status and what to do instead.
    """
    rule = _ALLOWED.get(action)
    if rule is None:
        msg = f"unknown alert action {action!r}; expected one of {', '.join(_ALLOWED)}"
        raise LifecycleError(msg)
    sources, target = rule
    if current_status not in STATUSES:
        msg = f"alert {alert_id} has unknown status {current_status!r}; expected one of {STATUSES}"
        raise LifecycleError(msg)
    if current_status in sources:
        return target
    if action == "reopen":
        msg = f"alert {alert_id} is already active; only a closed or acknowledged alert reopens"
    elif current_status == target:
        msg = f"alert {alert_id} is already {current_status}"
    elif current_status in ("resolved", "dismissed"):
        msg = (
            f"alert {alert_id} is {current_status}; it cannot be {_PAST[action]} — reopen it first"
        )
    else:
        msg = f"alert {alert_id} is {current_status}; it cannot be {_PAST[action]}"
    raise LifecycleError(msg)


# --------------------------------------------------------------------------- row types


@dataclass(frozen=True, slots=True)
class Cursor:
    """A keyset position in newest-first order: pass ``page[-1].cursor`` as ``after``."""

    last_seen: datetime
    id: str


@dataclass(frozen=True, slots=True)
class StoredAlert:
    """One stored alert: the detector's fields plus its lifecycle."""

    id: str
    tenant_id: str
    fingerprint: str
    rule_id: str
    rule_version: str
    group: dict[str, Any]
    severity: str
    type: str
    title: str
    description: str
    source: str
    status: Status
    metadata: dict[str, Any]
    tags: list[str]
    evidence: list[str]
    evidence_window: dict[str, Any]
    occurrences: int
    count: int
    first_seen: datetime
    last_seen: datetime
    period_start: datetime
    period_end: datetime
    created_at: datetime
    updated_at: datetime
    acknowledged: bool = False
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    resolved: bool = False
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    resolution_notes: str | None = None
    trace_id: str | None = None

    @property
    def cursor(self) -> Cursor:
        """The keyset position of this alert, for :meth:`AlertStore.list_active` paging."""
        return Cursor(self.last_seen, self.id)

    @property
    def is_active(self) -> bool:
        """Active or acknowledged: still needs attention (as in the original)."""
        return self.status in ACTIVE_STATUSES


@dataclass(frozen=True, slots=True)
class Transition:
    """One recorded lifecycle change of an alert: who moved it from what to what, and when."""

    alert_id: str
    tenant_id: str
    from_status: Status
    to_status: Status
    by: str
    at: datetime
    note: str | None = None


@dataclass(frozen=True, slots=True)
class TrendPoint:
    """Alerts created and resolved (or dismissed) in the ``period`` before ``now``."""

    period: str
    created: int
    resolved: int


@dataclass(frozen=True, slots=True)
class AlertStats:
    """A tenant's alert statistics; every status and severity is present, zeros included."""

    total: int
    by_status: dict[str, int]
    by_severity: dict[str, int]
    by_rule: dict[str, int]
    trends: tuple[TrendPoint, ...] = field(default_factory=tuple)

    @property
    def active(self) -> int:
        """Active plus acknowledged alerts."""
        return sum(self.by_status.get(s, 0) for s in ACTIVE_STATUSES)


# --------------------------------------------------------------------------- the seam


class AlertStore(Protocol):
    """Persistence and lifecycle of alerts; every read and action is scoped by tenant."""

    async def upsert(self, alerts: Sequence[Alert]) -> int:
        """Insert or update alerts by id; returns how many distinct ids were written."""
        ...

    async def get(self, tenant: str, alert_id: str) -> StoredAlert | None:
        """One of the tenant's alerts, or None (also for another tenant's id)."""
        ...

    async def list_active(
        self, tenant: str, *, limit: int = 50, offset: int = 0, after: Cursor | None = None
    ) -> builtins.list[StoredAlert]:
        """Active and acknowledged alerts, newest ``last_seen`` first (ties: id descending)."""
        ...

    async def list(
        self,
        tenant: str,
        *,
        status: str | None = None,
        severity: str | None = None,
        rule_id: str | None = None,
        sort: Sort = "newest",
        limit: int = 50,
        offset: int = 0,
        after: Cursor | None = None,
    ) -> builtins.list[StoredAlert]:
        """The tenant's alerts matching every given filter, newest ``last_seen`` first.

        ``sort="severity"`` puts CRITICAL first (see :func:`severity_rank`). ``after`` (a
        :attr:`StoredAlert.cursor`) pages the newest-first order only.
        """
        ...

    async def count_active(self, tenant: str) -> int:
        """How many of the tenant's alerts are active or acknowledged."""
        ...

    async def acknowledge(self, tenant: str, alert_id: str, *, by: str) -> StoredAlert:
        """Acknowledge an active alert."""
        ...

    async def resolve(
        self, tenant: str, alert_id: str, *, by: str, notes: str | None = None
    ) -> StoredAlert:
        """Resolve an active or acknowledged alert."""
        ...

    async def dismiss(
        self, tenant: str, alert_id: str, *, by: str, notes: str | None = None
    ) -> StoredAlert:
        """Dismiss an active or acknowledged alert (a false positive)."""
        ...

    async def reopen(
        self, tenant: str, alert_id: str, *, by: str, note: str | None = None
    ) -> StoredAlert:
        """Make an acknowledged, resolved or dismissed alert active again."""
        ...

    async def transitions(self, tenant: str, alert_id: str) -> builtins.list[Transition]:
        """The alert's lifecycle history, oldest first (empty for unknown ids)."""
        ...

    async def stats(self, tenant: str, *, now: datetime) -> AlertStats:
        """Counts by status, severity and rule, and 24 h / 7 d / 30 d trends before ``now``."""
        ...

    async def cleanup_resolved(self, tenant: str, *, older_than: timedelta, now: datetime) -> int:
        """Delete resolved and dismissed alerts closed before ``now - older_than``."""
        ...

    async def close(self) -> None:
        """Release connections and threads."""
        ...


# --------------------------------------------------------------------------- shared helpers


def us_to_dt(micros: int) -> datetime:
    """Microseconds since the epoch as an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=micros)


def dt_to_us(at: datetime) -> int:
    """An aware datetime as microseconds since the epoch."""
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def require_aware(at: datetime, name: str) -> datetime:
    """Return ``at`` in UTC, or raise :class:`QueryError` if it is naive."""
    if at.tzinfo is None or at.utcoffset() is None:
        msg = f"{name} must be timezone-aware, got {at.isoformat()}; add tzinfo=UTC"
        raise QueryError(msg)
    return at.astimezone(UTC)


def check_page(limit: int, offset: int) -> None:
    """Validate paging arguments."""
    if not 1 <= limit <= MAX_LIMIT:
        msg = f"limit must be between 1 and {MAX_LIMIT}, got {limit}"
        raise QueryError(msg)
    if offset < 0:
        msg = f"offset must be 0 or more, got {offset}"
        raise QueryError(msg)


def check_list(sort: str, after: Cursor | None) -> None:
    """Validate the order of :meth:`AlertStore.list` and its cursor."""
    if sort not in SORTS:
        msg = f"sort must be one of {', '.join(SORTS)}, got {sort!r}"
        raise QueryError(msg)
    if after is not None and sort != "newest":
        msg = f"a cursor (after) pages only the newest-first order; with sort={sort!r} use offset"
        raise QueryError(msg)


_SEVERITY_RANK: Final = {name: rank for rank, name in enumerate(reversed(SEVERITIES))}


def severity_rank(severity: str) -> int:
    """0 for CRITICAL up to 4 for INFO; 5 for a severity outside :data:`SEVERITIES`.

    The SQL stores spell the same ranks as a ``CASE`` expression.
    """
    return _SEVERITY_RANK.get(severity, len(SEVERITIES))


def check_actor(by: str) -> None:
    """Lifecycle actions must name who performed them."""
    if not by.strip():
        msg = "by must name who performs the action (a user or service id), got an empty string"
        raise QueryError(msg)


def check_retention(older_than: timedelta) -> None:
    """Cleanup needs a positive age."""
    if older_than <= timedelta(0):
        msg = f"older_than must be a positive duration, got {older_than}"
        raise QueryError(msg)


def not_found(alert_id: str) -> AlertNotFound:
    """The one message for unknown and foreign ids alike (it reveals nothing)."""
    return AlertNotFound(f"alert {alert_id} not found for this tenant")


def evidence_window(alert: Alert) -> dict[str, Any]:
    """The evidence window of an alert as stored (the shape of ``Alert.to_json``)."""
    return alert.evidence_window()


def fold_batch(alerts: Iterable[Alert]) -> builtins.list[Alert]:
    """Collapse repeated ids in one batch with the upsert rules; drops foreign-tenant repeats.

    A database cannot update the same row twice in one statement, and folding first keeps
    the result independent of the order of the batch.
    """
    folded: dict[str, Alert] = {}
    for alert in alerts:
        seen = folded.get(alert.id)
        if seen is None:
            folded[alert.id] = alert
        elif seen.tenant_id == alert.tenant_id:
            base = alert if alert.occurrences >= seen.occurrences else seen
            folded[alert.id] = dataclasses.replace(
                base,
                occurrences=max(seen.occurrences, alert.occurrences),
                last_seen_us=max(seen.last_seen_us, alert.last_seen_us),
                first_seen_us=min(seen.first_seen_us, alert.first_seen_us),
                trace_id=seen.trace_id or alert.trace_id,
            )
    return builtins.list(folded.values())


def new_row(alert: Alert, now: datetime) -> StoredAlert:
    """The row a first delivery of ``alert`` creates (status active, lifecycle empty)."""
    return StoredAlert(
        id=alert.id,
        tenant_id=alert.tenant_id,
        fingerprint=alert.fingerprint,
        rule_id=alert.rule_id,
        rule_version=alert.rule_version,
        group=dict(alert.group),
        severity=alert.severity,
        type=alert.type,
        title=alert.title,
        description=alert.description,
        source=alert.source,
        status="active",
        metadata=dict(alert.metadata),
        tags=builtins.list(alert.tags),
        evidence=builtins.list(alert.evidence_ids),
        evidence_window=evidence_window(alert),
        occurrences=alert.occurrences,
        count=alert.count,
        first_seen=us_to_dt(alert.first_seen_us),
        last_seen=us_to_dt(alert.last_seen_us),
        period_start=us_to_dt(alert.period_start_us),
        period_end=us_to_dt(alert.period_end_us),
        created_at=now,
        updated_at=now,
        trace_id=alert.trace_id,
    )


def merge_update(current: StoredAlert, incoming: StoredAlert, now: datetime) -> StoredAlert:
    """The upsert rule for an existing row (the SQL stores mirror it exactly)."""
    newer = incoming.occurrences >= current.occurrences
    src = incoming if newer else current
    return dataclasses.replace(
        current,
        occurrences=max(current.occurrences, incoming.occurrences),
        last_seen=max(current.last_seen, incoming.last_seen),
        first_seen=min(current.first_seen, incoming.first_seen),
        count=src.count,
        evidence=src.evidence,
        evidence_window=src.evidence_window,
        description=src.description,
        title=src.title,
        metadata=src.metadata,
        trace_id=current.trace_id or incoming.trace_id,
        updated_at=now,
    )


def apply_action(
    row: StoredAlert, action: Action, *, by: str, note: str | None, at: datetime
) -> tuple[StoredAlert, Transition]:
    """The row after a lifecycle action, and the transition to record; pure."""
    target = transition(row.status, action, alert_id=row.id)
    if action == "acknowledge":
        updated = dataclasses.replace(
            row, status=target, acknowledged=True, acknowledged_at=at, acknowledged_by=by
        )
    elif action in ("resolve", "dismiss"):
        updated = dataclasses.replace(
            row,
            status=target,
            resolved=True,
            resolved_at=at,
            resolved_by=by,
            resolution_notes=note,
        )
    else:  # reopen: the history lives in the transitions
        updated = dataclasses.replace(
            row,
            status=target,
            acknowledged=False,
            acknowledged_at=None,
            acknowledged_by=None,
            resolved=False,
            resolved_at=None,
            resolved_by=None,
            resolution_notes=None,
        )
    updated = dataclasses.replace(updated, updated_at=at)
    record = Transition(row.id, row.tenant_id, row.status, target, by, at, note)
    return updated, record


def tally_stats(
    groups: Iterable[tuple[str, str, str, int]], trends: Sequence[TrendPoint]
) -> AlertStats:
    """Statistics from (status, severity, rule id, count) groups; every status and severity
    appears, at zero when absent."""
    by_status = dict.fromkeys(STATUSES, 0)
    by_severity = dict.fromkeys(SEVERITIES, 0)
    by_rule: dict[str, int] = {}
    total = 0
    for status, severity, rule_id, n in groups:
        total += n
        by_status[status] = by_status.get(status, 0) + n
        by_severity[severity] = by_severity.get(severity, 0) + n
        by_rule[rule_id] = by_rule.get(rule_id, 0) + n
    return AlertStats(total, by_status, by_severity, by_rule, tuple(trends))


# --------------------------------------------------------------------------- SQL rows

NUL_ESCAPE: Final = "\ufdd0"
"""The escape character of stored text: a Unicode noncharacter, reserved for internal use.

:func:`store_text` writes NUL as ``NUL_ESCAPE + "0"`` and the escape itself as
``NUL_ESCAPE * 2``; :func:`load_text` reverses it. Text holding neither is stored as it is, so
the columns stay readable and comparable, and filters compare escaped with escaped.
"""
_UNESCAPE: Final = re.compile(f"{NUL_ESCAPE}([0{NUL_ESCAPE}])")
_JSON_NEEDS_ESCAPE: Final = ("\\u0000", NUL_ESCAPE, "\\ufdd0")
"""NUL as JSON writes it, and the escape as msgspec writes it (raw) or ``json.dumps`` does."""
_JSON_ENCODER: Final = msgspec.json.Encoder()
_JSON_MAY_BE_ESCAPED: Final = (NUL_ESCAPE, "\\ufdd0", "\\uFDD0")


def store_text(text: str) -> str:
    """``text`` as a SQL store keeps it: NUL (which PostgreSQL refuses) reversibly escaped."""
    if "\x00" not in text and NUL_ESCAPE not in text:
        return text
    return text.replace(NUL_ESCAPE, NUL_ESCAPE * 2).replace("\x00", NUL_ESCAPE + "0")


def load_text(text: str) -> str:
    """The original of a :func:`store_text` result."""
    if NUL_ESCAPE not in text:
        return text
    return _UNESCAPE.sub(lambda m: "\x00" if m.group(1) == "0" else NUL_ESCAPE, text)


def _opt_store(text: str | None) -> str | None:
    return None if text is None else store_text(text)


def _opt_load(text: str | None) -> str | None:
    return None if text is None else load_text(text)


def _walk(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {fn(k) if isinstance(k, str) else k: _walk(v, fn) for k, v in value.items()}
    if isinstance(value, builtins.list | tuple):
        return [_walk(v, fn) for v in value]
    return value


def store_json(value: Any) -> str:
    """A JSON column's text, every string in it (keys too) passed through :func:`store_text`.

    msgspec writes it: an alert's row (:func:`alert_values`, five JSON columns) takes about
    18 us instead of 32 us with ``json.dumps``. What msgspec refuses (a lone surrogate, a type
    it does not know) goes through ``json.dumps``, whose escaped form a JSON column takes just
    the same.
    """
    try:
        text = _JSON_ENCODER.encode(value).decode()
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        text = json.dumps(value)
    if any(marker in text for marker in _JSON_NEEDS_ESCAPE):
        text = json.dumps(_walk(value, store_text))
    return text


def load_json(text: str) -> Any:
    """The value of a :func:`store_json` column (SQLite's text or PostgreSQL's ``jsonb``)."""
    value = json.loads(text)
    if any(marker in text for marker in _JSON_MAY_BE_ESCAPED):
        value = _walk(value, load_text)
    return value


class Row(Protocol):
    """A database row read by column name (``sqlite3.Row``, ``asyncpg.Record``)."""

    def __getitem__(self, key: str, /) -> Any: ...


def alert_values(alert: Alert) -> dict[str, Any]:
    """The columns an upsert of ``alert`` writes, as stored; times in epoch microseconds."""
    return {
        "id": store_text(alert.id),
        "tenant_id": store_text(alert.tenant_id),
        "fingerprint": store_text(alert.fingerprint),
        "rule_id": store_text(alert.rule_id),
        "rule_version": store_text(alert.rule_version),
        "group": store_json(alert.group),
        "severity": store_text(alert.severity),
        "type": store_text(alert.type),
        "title": store_text(alert.title),
        "description": store_text(alert.description),
        "source": store_text(alert.source),
        "metadata": store_json(alert.metadata),
        "tags": store_json(alert.tags),
        "evidence": store_json(alert.evidence_ids),
        "evidence_window": store_json(evidence_window(alert)),
        "occurrences": alert.occurrences,
        "count": alert.count,
        "first_seen": alert.first_seen_us,
        "last_seen": alert.last_seen_us,
        "period_start": alert.period_start_us,
        "period_end": alert.period_end_us,
        "trace_id": _opt_store(alert.trace_id),
    }


def lifecycle_values(row: StoredAlert) -> dict[str, Any]:
    """The lifecycle columns of ``row`` as stored (times stay datetimes)."""
    return {
        "status": row.status,
        "acknowledged": row.acknowledged,
        "acknowledged_at": row.acknowledged_at,
        "acknowledged_by": _opt_store(row.acknowledged_by),
        "resolved": row.resolved,
        "resolved_at": row.resolved_at,
        "resolved_by": _opt_store(row.resolved_by),
        "resolution_notes": _opt_store(row.resolution_notes),
        "updated_at": row.updated_at,
    }


def transition_values(record: Transition) -> tuple[Any, ...]:
    """A transition's columns as stored, in table order (the time stays a datetime)."""
    return (
        store_text(record.alert_id),
        store_text(record.tenant_id),
        record.from_status,
        record.to_status,
        store_text(record.by),
        record.at,
        _opt_store(record.note),
    )


def stored_alert(r: Row, when: Callable[[Any], datetime]) -> StoredAlert:
    """The alert a SQL row holds; ``when`` turns a time column into an aware datetime."""

    def opt_when(value: Any) -> datetime | None:
        return None if value is None else when(value)

    return StoredAlert(
        id=load_text(r["id"]),
        tenant_id=load_text(r["tenant_id"]),
        fingerprint=load_text(r["fingerprint"]),
        rule_id=load_text(r["rule_id"]),
        rule_version=load_text(r["rule_version"]),
        group=load_json(r["group"]),
        severity=load_text(r["severity"]),
        type=load_text(r["type"]),
        title=load_text(r["title"]),
        description=load_text(r["description"]),
        source=load_text(r["source"]),
        status=r["status"],
        metadata=load_json(r["metadata"]),
        tags=load_json(r["tags"]),
        evidence=load_json(r["evidence"]),
        evidence_window=load_json(r["evidence_window"]),
        occurrences=r["occurrences"],
        count=r["count"],
        first_seen=when(r["first_seen"]),
        last_seen=when(r["last_seen"]),
        period_start=when(r["period_start"]),
        period_end=when(r["period_end"]),
        created_at=when(r["created_at"]),
        updated_at=when(r["updated_at"]),
        acknowledged=bool(r["acknowledged"]),
        acknowledged_at=opt_when(r["acknowledged_at"]),
        acknowledged_by=_opt_load(r["acknowledged_by"]),
        resolved=bool(r["resolved"]),
        resolved_at=opt_when(r["resolved_at"]),
        resolved_by=_opt_load(r["resolved_by"]),
        resolution_notes=_opt_load(r["resolution_notes"]),
        trace_id=_opt_load(r["trace_id"]),
    )


def stored_transition(r: Row, when: Callable[[Any], datetime]) -> Transition:
    """The transition a SQL row of ``alert_transitions`` holds."""
    return Transition(
        load_text(r["alert_id"]),
        load_text(r["tenant_id"]),
        r["from_status"],
        r["to_status"],
        load_text(r["by"]),
        when(r["at"]),
        _opt_load(r["note"]),
    )


def stored_groups(rows: Iterable[Row]) -> Iterable[tuple[str, str, str, int]]:
    """(status, severity, rule id, count) from rows of a ``GROUP BY`` query, for tally_stats."""
    return (
        (r["status"], load_text(r["severity"]), load_text(r["rule_id"]), int(r["n"])) for r in rows
    )


class LifecycleActions(ABC):
    """The four lifecycle calls, shared by every store; each store implements ``_act``."""

    @abstractmethod
    async def _act(
        self, tenant: str, alert_id: str, action: Action, by: str, note: str | None
    ) -> StoredAlert:
        """Apply one lifecycle action in one transaction, recording the transition."""

    async def acknowledge(self, tenant: str, alert_id: str, *, by: str) -> StoredAlert:
        """Acknowledge an active alert."""
        return await self._act(tenant, alert_id, "acknowledge", by, None)

    async def resolve(
        self, tenant: str, alert_id: str, *, by: str, notes: str | None = None
    ) -> StoredAlert:
        """Resolve an active or acknowledged alert."""
        return await self._act(tenant, alert_id, "resolve", by, notes)

    async def dismiss(
        self, tenant: str, alert_id: str, *, by: str, notes: str | None = None
    ) -> StoredAlert:
        """Dismiss an active or acknowledged alert."""
        return await self._act(tenant, alert_id, "dismiss", by, notes)

    async def reopen(
        self, tenant: str, alert_id: str, *, by: str, note: str | None = None
    ) -> StoredAlert:
        """Make a closed or acknowledged alert active again."""
        return await self._act(tenant, alert_id, "reopen", by, note)
