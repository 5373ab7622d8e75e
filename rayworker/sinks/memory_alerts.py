"""The in-memory alert store: the reference semantics of the :class:`AlertStore` contract.

Tests, notebooks and single-process runs use it. State lives in plain dicts guarded by the
event loop: every method runs to completion without awaiting, so no lock is needed.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime, timedelta

from rayworker.alerts import Alert
from rayworker.clock import Clock, SystemClock
from rayworker.sinks.alert_store import (
    ACTIVE_STATUSES,
    TREND_PERIODS,
    Action,
    AlertStats,
    Cursor,
    LifecycleActions,
    Sort,
    StoredAlert,
    Transition,
    TrendPoint,
    apply_action,
    check_actor,
    check_list,
    check_page,
    check_retention,
    fold_batch,
    merge_update,
    new_row,
    not_found,
    require_aware,
    severity_rank,
    tally_stats,
)
from rayworker.sinks.checkpoint_store import MemoryCheckpoints

__all__ = ["MemoryAlertStore"]


def _newest_first(row: StoredAlert) -> tuple[datetime, str]:
    return (row.last_seen, row.id)


def _page(
    rows: builtins.list[StoredAlert],
    *,
    sort: Sort = "newest",
    after: Cursor | None,
    limit: int,
    offset: int,
) -> builtins.list[StoredAlert]:
    """One page of ``rows`` in the store's order (the SQL stores' ``ORDER BY``)."""
    if after is not None:
        key = (after.last_seen, after.id)
        rows = [r for r in rows if _newest_first(r) < key]
    rows.sort(key=_newest_first, reverse=True)
    if sort == "severity":
        rows.sort(key=lambda r: severity_rank(r.severity))  # stable: newest first within
    return rows[offset : offset + limit]


class MemoryAlertStore(LifecycleActions, MemoryCheckpoints):
    """An :class:`~rayworker.sinks.alert_store.AlertStore` held in memory."""

    def __init__(self, *, clock: Clock | None = None) -> None:
        MemoryCheckpoints.__init__(self)
        self._clock: Clock = clock or SystemClock()
        self._rows: dict[str, StoredAlert] = {}
        self._transitions: builtins.list[Transition] = []

    async def __aenter__(self) -> MemoryAlertStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Nothing to release."""

    async def upsert(self, alerts: Sequence[Alert]) -> int:
        """Insert or update alerts by id; returns how many distinct ids were written."""
        now = self._clock.now()
        written = 0
        for alert in fold_batch(alerts):
            incoming = new_row(alert, now)
            current = self._rows.get(alert.id)
            if current is None:
                self._rows[alert.id] = incoming
            elif current.tenant_id == alert.tenant_id:
                self._rows[alert.id] = merge_update(current, incoming, now)
            else:
                continue
            written += 1
        return written

    def _own(self, tenant: str, alert_id: str) -> StoredAlert | None:
        row = self._rows.get(alert_id)
        return row if row is not None and row.tenant_id == tenant else None

    async def get(self, tenant: str, alert_id: str) -> StoredAlert | None:
        """One of the tenant's alerts, or None."""
        return self._own(tenant, alert_id)

    async def list_active(
        self, tenant: str, *, limit: int = 50, offset: int = 0, after: Cursor | None = None
    ) -> builtins.list[StoredAlert]:
        """Active and acknowledged alerts, newest first."""
        check_page(limit, offset)
        rows = [
            r for r in self._rows.values() if r.tenant_id == tenant and r.status in ACTIVE_STATUSES
        ]
        return _page(rows, after=after, limit=limit, offset=offset)

    async def count_active(self, tenant: str) -> int:
        """How many of the tenant's alerts are active or acknowledged."""
        return sum(
            1 for r in self._rows.values() if r.tenant_id == tenant and r.status in ACTIVE_STATUSES
        )

    async def _act(
        self, tenant: str, alert_id: str, action: Action, by: str, note: str | None
    ) -> StoredAlert:
        check_actor(by)
        row = self._own(tenant, alert_id)
        if row is None:
            raise not_found(alert_id)
        updated, record = apply_action(row, action, by=by, note=note, at=self._clock.now())
        self._rows[alert_id] = updated
        self._transitions.append(record)
        return updated

    async def transitions(self, tenant: str, alert_id: str) -> builtins.list[Transition]:
        """The alert's lifecycle history, oldest first."""
        return [t for t in self._transitions if t.tenant_id == tenant and t.alert_id == alert_id]

    async def stats(self, tenant: str, *, now: datetime) -> AlertStats:
        """Counts by status, severity and rule, and trends before ``now``."""
        now = require_aware(now, "now")
        rows = [r for r in self._rows.values() if r.tenant_id == tenant]
        trends = []
        for name, span in TREND_PERIODS:
            since = now - span
            created = sum(1 for r in rows if since <= r.created_at <= now)
            resolved = sum(
                1 for r in rows if r.resolved_at is not None and since <= r.resolved_at <= now
            )
            trends.append(TrendPoint(name, created, resolved))
        return tally_stats(((r.status, r.severity, r.rule_id, 1) for r in rows), trends)

    async def cleanup_resolved(self, tenant: str, *, older_than: timedelta, now: datetime) -> int:
        """Delete resolved and dismissed alerts closed before ``now - older_than``."""
        check_retention(older_than)
        cutoff = require_aware(now, "now") - older_than
        gone = {
            r.id
            for r in self._rows.values()
            if r.tenant_id == tenant
            and r.status in ("resolved", "dismissed")
            and r.resolved_at is not None
            and r.resolved_at < cutoff
        }
        for alert_id in gone:
            del self._rows[alert_id]
        self._transitions = [
            t for t in self._transitions if not (t.tenant_id == tenant and t.alert_id in gone)
        ]
        return len(gone)

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
        """The tenant's alerts matching every given filter, newest (or most severe) first."""
        check_page(limit, offset)
        check_list(sort, after)
        rows = [
            r
            for r in self._rows.values()
            if r.tenant_id == tenant
            and (status is None or r.status == status)
            and (severity is None or r.severity == severity)
            and (rule_id is None or r.rule_id == rule_id)
        ]
        return _page(rows, sort=sort, after=after, limit=limit, offset=offset)
