"""One contract, three alert stores: memory, SQLite and PostgreSQL run the same tests."""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from rayworker.alerts import Alert
from rayworker.checkpoint import Checkpoint
from rayworker.clock import FixedClock
from rayworker.sinks import (
    AlertNotFound,
    AlertStore,
    Cursor,
    LifecycleError,
    MemoryAlertStore,
    MigrationError,
    QueryError,
    SqliteAlertStore,
)
from rayworker.sinks.alert_store import NUL_ESCAPE, dt_to_us
from rayworker.sinks.migrate import (
    check_postgres,
    check_sqlite,
    migrate_postgres,
    migrate_sqlite,
)
from rayworker.sinks.postgres_alerts import PostgresAlertStore

pytestmark = pytest.mark.integration

DSN = os.environ.get("RAYWORKER_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
INJECTIONS = (
    "'; DROP TABLE alerts; --",
    '" OR 1=1 --',
    "ünïcødé 🚨 \u202e \u02bc\uff05 \\ %s $1 ?",  # RTL override, look-alikes, placeholders
    "x' || (SELECT string_agg(id, ',') FROM alerts) || '",
    "\\'); DELETE FROM alert_transitions; --",
)
NUL_TEXTS = (
    "\x00",
    "before\x00after",
    f"\x00{NUL_ESCAPE}0{NUL_ESCAPE}{NUL_ESCAPE}\x00",  # the escape character itself, twice
    "\\u0000 \\ufdd0 ' OR 1=1 --",  # what JSON writes for NUL and the escape, as plain text
)

Scenario = Callable[[AlertStore], Awaitable[None]]


def make_alert(
    alert_id: str = "al-1",
    tenant: str = "tenant-a",
    *,
    occurrences: int = 1,
    last_seen: datetime = NOW - timedelta(hours=1),
    first_seen: datetime | None = None,
    severity: str = "HIGH",
    rule_id: str = "failed-auth",
    title: str = "Suspicious Pattern Detected: FAILED_AUTH",
    description: str = "5 failed logins",
    evidence: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    group: dict[str, Any] | None = None,
    text: str | None = None,
) -> Alert:
    """An alert with sensible defaults; ``text`` (if given) goes into every free text field."""
    first = first_seen or last_seen - timedelta(minutes=5)
    return Alert(
        id=alert_id,
        fingerprint=text or "fp-1",
        tenant_id=tenant,
        rule_id=rule_id,
        rule_version=text or "v1",
        group=group if group is not None else {"principal_id": text or "user-1"},
        severity=severity,
        type=text or "SECURITY",
        title=title,
        description=description,
        tags=[text or "suspicious-pattern"],
        first_seen_us=dt_to_us(first),
        last_seen_us=dt_to_us(last_seen),
        occurrences=occurrences,
        count=occurrences,
        evidence_ids=evidence if evidence is not None else ["ev-1"],
        window_start_us=dt_to_us(first),
        window_end_us=dt_to_us(last_seen),
        watermark_us=dt_to_us(last_seen),
        period_start_us=dt_to_us(NOW - timedelta(days=1)),
        period_end_us=dt_to_us(NOW + timedelta(days=1)),
        source=text or "rayworker",
        metadata=metadata if metadata is not None else {"k": text or "v"},
    )


# --------------------------------------------------------------------------- fixtures


def _unreachable(exc: BaseException) -> None:
    """Fail in CI, skip locally (STYLE example 6)."""
    reason = f"PostgreSQL unreachable at RAYWORKER_TEST_POSTGRES_DSN: {type(exc).__name__}"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


async def _pg_schema(action: str, schema: str) -> None:
    conn = await asyncpg.connect(DSN, timeout=5)
    try:
        template = "CREATE SCHEMA %I" if action == "create" else "DROP SCHEMA IF EXISTS %I CASCADE"
        # format(%I) quotes the identifier server-side; the schema name is still a parameter.
        sql = await conn.fetchval("SELECT format($1::text, $2::text)", template, schema)
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_schema_factory() -> Iterator[Callable[[], str]]:
    """Creates throw-away PostgreSQL schemas; drops them all at the end of the session."""
    made: list[str] = []

    def make() -> str:
        schema = f"rw_test_{secrets.token_hex(6)}"
        try:
            asyncio.run(_pg_schema("create", schema))
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            _unreachable(exc)
        made.append(schema)
        return schema

    yield make
    for schema in made:
        asyncio.run(_pg_schema("drop", schema))


@pytest.fixture(scope="session")
def pg_schema(pg_schema_factory: Callable[[], str]) -> str:
    """One migrated schema shared by the contract tests of this session."""
    schema = pg_schema_factory()

    async def setup() -> None:
        store = PostgresAlertStore(DSN, search_path=schema, max_size=2)
        await store.open(migrate=True)
        await store.close()

    asyncio.run(setup())
    return schema


@dataclass
class Harness:
    """Runs a scenario against a fresh store of one backend, with an injected clock."""

    kind: str
    clock: FixedClock
    schema: str | None = None

    def run(self, scenario: Scenario) -> None:
        asyncio.run(self._run(scenario))

    async def _run(self, scenario: Scenario) -> None:
        store: Any
        if self.kind == "memory":
            store = MemoryAlertStore(clock=self.clock)
        elif self.kind == "sqlite":
            store = SqliteAlertStore(":memory:", clock=self.clock)
            await store.open()
        else:
            store = PostgresAlertStore(DSN, search_path=self.schema, max_size=3, clock=self.clock)
            await store.open()
            conn = await asyncpg.connect(DSN, server_settings={"search_path": self.schema or ""})
            try:
                await conn.execute("TRUNCATE alerts, alert_transitions")
            finally:
                await conn.close()
        try:
            await scenario(store)
        finally:
            await store.close()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def harness(request: pytest.FixtureRequest) -> Harness:
    """The contract runs once per backend."""
    clock = FixedClock(NOW)
    if request.param == "postgres":
        return Harness("postgres", clock, request.getfixturevalue("pg_schema"))
    return Harness(request.param, clock)


# --------------------------------------------------------------------------- upsert


def test_upsert_same_alert_three_times_keeps_one_row(harness: Harness) -> None:
    """Re-delivering one alert three times leaves exactly one row with the latest counts."""

    async def scenario(store: AlertStore) -> None:
        for n in (1, 2, 3):
            assert await store.upsert([make_alert(occurrences=n)]) == 1
        rows = await store.list("tenant-a")
        assert [r.id for r in rows] == ["al-1"]
        assert rows[0].occurrences == 3
        assert rows[0].status == "active"
        assert rows[0].created_at == NOW

    harness.run(scenario)


def test_stale_redelivery_does_not_regress(harness: Harness) -> None:
    """An older version cannot move occurrences, last_seen or the description back."""

    async def scenario(store: AlertStore) -> None:
        late = NOW - timedelta(minutes=1)
        await store.upsert([make_alert(occurrences=5, last_seen=late, description="five")])
        await store.upsert([make_alert(occurrences=3, description="three")])
        row = await store.get("tenant-a", "al-1")
        assert row is not None
        assert (row.occurrences, row.last_seen, row.description) == (5, late, "five")
        await store.upsert([make_alert(occurrences=7, last_seen=late, description="seven")])
        row = await store.get("tenant-a", "al-1")
        assert row is not None
        assert (row.occurrences, row.description) == (7, "seven")

    harness.run(scenario)


def test_batch_with_repeated_ids_folds_to_one_write(harness: Harness) -> None:
    """A batch holding several versions of an id writes one row with the greatest values."""

    async def scenario(store: AlertStore) -> None:
        batch = [make_alert(occurrences=n, description=str(n)) for n in (2, 4, 3)]
        assert await store.upsert(batch) == 1
        row = await store.get("tenant-a", "al-1")
        assert row is not None
        assert (row.occurrences, row.description) == (4, "4")

    harness.run(scenario)


def test_colliding_id_from_another_tenant_never_overwrites(harness: Harness) -> None:
    """An id already owned by tenant A is not updated by tenant B's alert."""

    async def scenario(store: AlertStore) -> None:
        await store.upsert([make_alert("al-x", "tenant-a", title="A's")])
        written = await store.upsert([make_alert("al-x", "tenant-b", occurrences=9, title="B's")])
        assert written == 0
        row = await store.get("tenant-a", "al-x")
        assert row is not None
        assert (row.tenant_id, row.title, row.occurrences) == ("tenant-a", "A's", 1)
        assert await store.get("tenant-b", "al-x") is None

    harness.run(scenario)


def test_upsert_never_changes_lifecycle_status(harness: Harness) -> None:
    """An update to a resolved alert's occurrences keeps it resolved."""

    async def scenario(store: AlertStore) -> None:
        await store.upsert([make_alert(occurrences=1)])
        await store.resolve("tenant-a", "al-1", by="ana", notes="fixed")
        await store.upsert([make_alert(occurrences=4)])
        row = await store.get("tenant-a", "al-1")
        assert row is not None
        assert (row.status, row.occurrences, row.resolution_notes) == ("resolved", 4, "fixed")

    harness.run(scenario)


# --------------------------------------------------------------------------- tenancy


def test_tenant_cannot_see_or_act_on_another_tenants_alert(harness: Harness) -> None:
    """Tenant B gets None/empty/0 for A's alert, and AlertNotFound like for an unknown id."""

    async def scenario(store: AlertStore) -> None:
        await store.upsert([make_alert("al-a", "tenant-a")])
        assert await store.get("tenant-b", "al-a") is None
        assert await store.list_active("tenant-b") == []
        assert await store.list("tenant-b") == []
        assert await store.count_active("tenant-b") == 0
        actions: list[Callable[[str], Awaitable[object]]] = [
            lambda i: store.acknowledge("tenant-b", i, by="mallory"),
            lambda i: store.resolve("tenant-b", i, by="mallory"),
            lambda i: store.dismiss("tenant-b", i, by="mallory"),
            lambda i: store.reopen("tenant-b", i, by="mallory"),
        ]
        for act in actions:
            with pytest.raises(AlertNotFound) as foreign:
                await act("al-a")
            with pytest.raises(AlertNotFound) as unknown:
                await act("al-nope")
            assert str(foreign.value) == str(unknown.value).replace("al-nope", "al-a")
        assert await store.transitions("tenant-b", "al-a") == []
        row = await store.get("tenant-a", "al-a")
        assert row is not None
        assert row.status == "active"
        assert await store.transitions("tenant-a", "al-a") == []

    harness.run(scenario)


# --------------------------------------------------------------------------- lifecycle


def test_resolved_alert_must_be_reopened_before_acknowledging(harness: Harness) -> None:
    """Acknowledging a resolved alert fails; reopen then acknowledge works and is recorded."""

    async def scenario(store: AlertStore) -> None:
        await store.upsert([make_alert()])
        harness.clock.set(NOW + timedelta(minutes=1))
        resolved = await store.resolve("tenant-a", "al-1", by="ana", notes="false alarm")
        assert resolved.status == "resolved"
        assert resolved.resolved
        assert resolved.resolved_by == "ana"
        assert resolved.resolved_at == NOW + timedelta(minutes=1)
        with pytest.raises(LifecycleError, match="is resolved; it cannot be acknowledged"):
            await store.acknowledge("tenant-a", "al-1", by="bob")
        harness.clock.set(NOW + timedelta(minutes=2))
        reopened = await store.reopen("tenant-a", "al-1", by="bob", note="recurred")
        assert reopened.status == "active"
        assert not reopened.resolved
        assert reopened.resolved_at is None
        harness.clock.set(NOW + timedelta(minutes=3))
        acked = await store.acknowledge("tenant-a", "al-1", by="carol")
        assert (acked.status, acked.acknowledged, acked.acknowledged_by) == (
            "acknowledged",
            True,
            "carol",
        )
        assert acked.acknowledged_at == NOW + timedelta(minutes=3)
        assert await store.get("tenant-a", "al-1") == acked
        history = await store.transitions("tenant-a", "al-1")
        assert [(t.from_status, t.to_status, t.by, t.note) for t in history] == [
            ("active", "resolved", "ana", "false alarm"),
            ("resolved", "active", "bob", "recurred"),
            ("active", "acknowledged", "carol", None),
        ]
        assert [t.at - NOW for t in history] == [timedelta(minutes=m) for m in (1, 2, 3)]

    harness.run(scenario)


def test_dismiss_closes_and_empty_actor_is_refused(harness: Harness) -> None:
    """Dismiss from acknowledged closes the alert; an action without `by` is refused."""

    async def scenario(store: AlertStore) -> None:
        await store.upsert([make_alert()])
        with pytest.raises(QueryError, match="by must name"):
            await store.acknowledge("tenant-a", "al-1", by=" ")
        await store.acknowledge("tenant-a", "al-1", by="ana")
        dismissed = await store.dismiss("tenant-a", "al-1", by="ana", notes="test traffic")
        assert (dismissed.status, dismissed.resolution_notes) == ("dismissed", "test traffic")
        with pytest.raises(LifecycleError, match="reopen it first"):
            await store.resolve("tenant-a", "al-1", by="ana")
        assert await store.count_active("tenant-a") == 0

    harness.run(scenario)


# --------------------------------------------------------------------------- reads


def test_list_active_newest_first_with_paging(harness: Harness) -> None:
    """Active and acknowledged alerts come newest first; offset and cursor pages agree."""

    async def scenario(store: AlertStore) -> None:
        alerts = [make_alert(f"al-{i}", last_seen=NOW - timedelta(hours=i)) for i in range(6)]
        await store.upsert(alerts)
        await store.upsert([make_alert("al-t", last_seen=NOW - timedelta(hours=2))])  # a tie
        await store.acknowledge("tenant-a", "al-1", by="ana")
        await store.resolve("tenant-a", "al-3", by="ana")
        expected = ["al-0", "al-1", "al-t", "al-2", "al-4", "al-5"]
        assert await store.count_active("tenant-a") == 6
        by_offset = [
            r.id
            for off in (0, 2, 4)
            for r in await store.list_active("tenant-a", limit=2, offset=off)
        ]
        assert by_offset == expected
        by_cursor: list[str] = []
        page = await store.list_active("tenant-a", limit=2)
        while page:
            by_cursor += [r.id for r in page]
            page = await store.list_active("tenant-a", limit=2, after=page[-1].cursor)
        assert by_cursor == expected
        with pytest.raises(QueryError, match="limit"):
            await store.list_active("tenant-a", limit=0)

    harness.run(scenario)


def test_list_filters_by_status_severity_and_rule(harness: Harness) -> None:
    """list() applies every given filter and only the tenant's rows."""

    async def scenario(store: AlertStore) -> None:
        await store.upsert(
            [
                make_alert("al-1", severity="HIGH", rule_id="r1"),
                make_alert("al-2", severity="LOW", rule_id="r1"),
                make_alert("al-3", severity="HIGH", rule_id="r2"),
                make_alert("al-4", "tenant-b", severity="HIGH", rule_id="r1"),
            ]
        )
        await store.resolve("tenant-a", "al-3", by="ana")
        ids = {r.id for r in await store.list("tenant-a", severity="HIGH")}
        assert ids == {"al-1", "al-3"}
        ids = {r.id for r in await store.list("tenant-a", rule_id="r1")}
        assert ids == {"al-1", "al-2"}
        ids = {r.id for r in await store.list("tenant-a", status="resolved", severity="HIGH")}
        assert ids == {"al-3"}
        assert await store.list("tenant-a", status="dismissed") == []

    harness.run(scenario)


def test_list_sorts_by_severity_critical_first(harness: Harness) -> None:
    """sort="severity": CRITICAL, HIGH, MEDIUM, LOW, INFO, then others; newest first within."""

    async def scenario(store: AlertStore) -> None:
        spec = [  # (id, severity, hours ago)
            ("al-info", "INFO", 0),
            ("al-low", "LOW", 1),
            ("al-crit-old", "CRITICAL", 9),
            ("al-high", "HIGH", 3),
            ("al-odd", "URGENT", 0),
            ("al-crit-new", "CRITICAL", 2),
            ("al-med", "MEDIUM", 5),
        ]
        await store.upsert(
            [make_alert(i, severity=s, last_seen=NOW - timedelta(hours=h)) for i, s, h in spec]
        )
        by_severity = [r.id for r in await store.list("tenant-a", sort="severity")]
        assert by_severity == [
            "al-crit-new",
            "al-crit-old",
            "al-high",
            "al-med",
            "al-low",
            "al-info",
            "al-odd",
        ]
        paged = [
            r.id
            for off in (0, 3, 6)
            for r in await store.list("tenant-a", sort="severity", limit=3, offset=off)
        ]
        assert paged == by_severity
        newest = [r.id for r in await store.list("tenant-a")]
        assert newest == [r.id for r in await store.list("tenant-a", sort="newest")]
        assert newest[:2] == ["al-odd", "al-info"]  # the default stays newest first
        assert newest[-1] == "al-crit-old"
        with pytest.raises(QueryError, match="sort must be one of"):
            await store.list("tenant-a", sort="loudest")  # type: ignore[arg-type]
        with pytest.raises(QueryError, match="cursor"):
            await store.list("tenant-a", sort="severity", after=Cursor(NOW, "al-info"))

    harness.run(scenario)


def test_list_pages_by_cursor_with_filters(harness: Harness) -> None:
    """list(after=cursor) continues the newest-first order, filters included, like offset."""

    async def scenario(store: AlertStore) -> None:
        await store.upsert(
            [make_alert(f"al-{i}", last_seen=NOW - timedelta(hours=i)) for i in range(5)]
            + [make_alert("al-t", last_seen=NOW - timedelta(hours=2))]  # a tie with al-2
            + [make_alert("al-low", severity="LOW", last_seen=NOW)]
        )
        expected = [r.id for r in await store.list("tenant-a", severity="HIGH")]
        assert expected == ["al-0", "al-1", "al-t", "al-2", "al-3", "al-4"]
        by_cursor: list[str] = []
        page = await store.list("tenant-a", severity="HIGH", limit=4)
        while page:
            by_cursor += [r.id for r in page]
            page = await store.list("tenant-a", severity="HIGH", limit=4, after=page[-1].cursor)
        assert by_cursor == expected

    harness.run(scenario)


def test_stats_and_trends_use_the_injected_now(harness: Harness) -> None:
    """Totals, every status and severity (zeros included), rules and 24h/7d/30d trends."""

    async def scenario(store: AlertStore) -> None:
        created = {"al-1": 1, "al-2": 24 * 3, "al-3": 24 * 20, "al-4": 24 * 40}  # hours ago
        for alert_id, hours in created.items():
            harness.clock.set(NOW - timedelta(hours=hours))
            await store.upsert([make_alert(alert_id, rule_id=f"r-{alert_id[-1]}")])
        harness.clock.set(NOW - timedelta(hours=2))
        await store.resolve("tenant-a", "al-4", by="ana")
        harness.clock.set(NOW - timedelta(days=10))
        await store.dismiss("tenant-a", "al-3", by="ana")
        harness.clock.set(NOW)
        await store.acknowledge("tenant-a", "al-2", by="ana")
        await store.upsert([make_alert("al-9", "tenant-b", severity="LOW")])

        stats = await store.stats("tenant-a", now=NOW)
        assert stats.total == 4
        assert stats.active == 2
        assert stats.by_status == {"active": 1, "acknowledged": 1, "resolved": 1, "dismissed": 1}
        assert stats.by_severity == {"INFO": 0, "LOW": 0, "MEDIUM": 0, "HIGH": 4, "CRITICAL": 0}
        assert stats.by_rule == {"r-1": 1, "r-2": 1, "r-3": 1, "r-4": 1}
        trends = {t.period: (t.created, t.resolved) for t in stats.trends}
        assert trends == {"24h": (1, 1), "7d": (2, 1), "30d": (3, 2)}
        past = await store.stats("tenant-a", now=NOW - timedelta(days=30))
        assert {t.period: (t.created, t.resolved) for t in past.trends}["30d"] == (1, 0)
        with pytest.raises(QueryError, match="timezone-aware"):
            await store.stats("tenant-a", now=NOW.replace(tzinfo=None))

    harness.run(scenario)


def test_cleanup_deletes_only_old_closed_alerts_of_the_tenant(harness: Harness) -> None:
    """Resolved/dismissed alerts closed before the cutoff go, with their history; others stay."""

    async def scenario(store: AlertStore) -> None:
        ids = ["al-old-res", "al-old-dis", "al-new-res", "al-active"]
        await store.upsert([make_alert(i) for i in ids])
        await store.upsert([make_alert("al-b", "tenant-b")])
        harness.clock.set(NOW - timedelta(days=100))
        await store.resolve("tenant-a", "al-old-res", by="ana")
        await store.dismiss("tenant-a", "al-old-dis", by="ana")
        await store.resolve("tenant-b", "al-b", by="bob")
        harness.clock.set(NOW - timedelta(days=1))
        await store.resolve("tenant-a", "al-new-res", by="ana")
        deleted = await store.cleanup_resolved("tenant-a", older_than=timedelta(days=90), now=NOW)
        assert deleted == 2
        assert {r.id for r in await store.list("tenant-a")} == {"al-new-res", "al-active"}
        assert await store.transitions("tenant-a", "al-old-res") == []
        assert await store.get("tenant-b", "al-b") is not None
        with pytest.raises(QueryError, match="positive"):
            await store.cleanup_resolved("tenant-a", older_than=timedelta(0), now=NOW)

    harness.run(scenario)


def _round_trip_every_text_field(harness: Harness, text: str) -> None:
    """``text`` in every text field, filter and lifecycle argument comes back verbatim."""

    async def scenario(store: AlertStore) -> None:
        alert = make_alert(
            text,
            text,
            severity=text,
            rule_id=text,
            title=text,
            description=text,
            evidence=[text],
            metadata={text: text, "nested": [{text: text}]},
            group={text: text},
            text=text,
        )
        assert await store.upsert([alert]) == 1
        assert await store.upsert([alert]) == 1  # the update path matches the escaped id too
        row = await store.get(text, text)
        assert row is not None
        got = (row.id, row.tenant_id, row.fingerprint, row.rule_id, row.rule_version)
        assert got == (text,) * 5
        got = (row.severity, row.type, row.title, row.description, row.source)
        assert got == (text,) * 5
        assert (row.tags, row.evidence, row.metadata, row.group) == (
            [text],
            [text],
            {text: text, "nested": [{text: text}]},
            {text: text},
        )
        assert row.evidence_window["rule_version"] == text
        filtered = await store.list(text, severity=text, rule_id=text, status="active")
        assert [r.id for r in filtered] == [text]
        assert [r.id for r in await store.list(text, after=row.cursor)] == []
        assert [r.id for r in await store.list_active(text)] == [text]
        assert await store.count_active(text) == 1
        acked = await store.acknowledge(text, text, by=text)
        assert acked.acknowledged_by == text
        dismissed = await store.dismiss(text, text, by=text, notes=text)
        assert (dismissed.resolved_by, dismissed.resolution_notes) == (text, text)
        await store.reopen(text, text, by=text, note=text)
        resolved = await store.resolve(text, text, by=text, notes=text)
        assert (resolved.resolved_by, resolved.resolution_notes) == (text, text)
        assert await store.get(text, text) == resolved
        history = await store.transitions(text, text)
        assert [(t.alert_id, t.tenant_id, t.by, t.note) for t in history] == [
            (text, text, text, None),
            (text, text, text, text),
            (text, text, text, text),
            (text, text, text, text),
        ]
        stats = await store.stats(text, now=NOW)
        assert stats.by_rule == {text: 1}
        assert stats.by_severity[text] == 1
        await store.upsert([make_alert("al-other", "tenant-z")])
        assert await store.count_active("tenant-z") == 1  # the tables are still there
        later = NOW + timedelta(days=400)
        assert await store.cleanup_resolved(text, older_than=timedelta(days=1), now=later) == 1
        assert await store.get(text, text) is None
        assert await store.transitions(text, text) == []

    harness.run(scenario)


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_strings_are_stored_and_returned_verbatim(harness: Harness, text: str) -> None:
    """SQL metacharacters and unicode in every text field (notes and `by` too) round-trip."""
    _round_trip_every_text_field(harness, text)


@pytest.mark.parametrize("text", NUL_TEXTS)
def test_nul_characters_are_stored_and_returned_verbatim(harness: Harness, text: str) -> None:
    """NUL, which PostgreSQL text cannot hold, round-trips in every field of every store."""
    _round_trip_every_text_field(harness, text)


def test_nul_escaping_never_makes_two_texts_one(harness: Harness) -> None:
    """Ids that differ only by NUL versus the escape character stay two separate alerts."""
    ids = ["a\x00", f"a{NUL_ESCAPE}0", f"a{NUL_ESCAPE}", "a", f"a{NUL_ESCAPE}{NUL_ESCAPE}"]

    async def scenario(store: AlertStore) -> None:
        assert await store.upsert([make_alert(i, description=repr(i)) for i in ids]) == len(ids)
        for alert_id in ids:
            row = await store.get("tenant-a", alert_id)
            assert row is not None
            assert (row.id, row.description) == (alert_id, repr(alert_id))
        assert {r.id for r in await store.list("tenant-a")} == set(ids)
        await store.acknowledge("tenant-a", "a\x00", by="ana")
        statuses = {r.id: r.status for r in await store.list("tenant-a")}
        assert statuses == {i: "acknowledged" if i == "a\x00" else "active" for i in ids}

    harness.run(scenario)


# --------------------------------------------------------------------------- migrations


def test_sqlite_migrations_apply_once_and_detect_tampering() -> None:
    """check() reports the pending migration; migrate applies it once; edits are refused."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        status = check_sqlite(conn)
        assert not status.up_to_date
        assert [m.name for m in status.pending] == [
            "0001_alerts",
            "0002_silences",
            "0003_checkpoints",
        ]
        assert migrate_sqlite(conn) == (1, 2, 3)
        assert migrate_sqlite(conn) == ()
        assert check_sqlite(conn).up_to_date
        assert check_sqlite(conn).applied == (1, 2, 3)
        conn.execute("UPDATE schema_migrations SET checksum = ?", ("edited",))
        with pytest.raises(MigrationError, match="changed after it was applied"):
            check_sqlite(conn)
        with pytest.raises(MigrationError, match="changed after it was applied"):
            migrate_sqlite(conn)
    finally:
        conn.close()


def test_sqlite_file_store_uses_the_write_ahead_log(tmp_path: Path) -> None:
    """A file store opens its database in WAL mode (one sync per commit; readers never wait
    for a commit), and the database stays in it for every later connection."""
    path = tmp_path / "alerts.db"

    async def scenario() -> None:
        store = SqliteAlertStore(path)
        await store.open()
        try:
            await store.upsert([make_alert("a-1", "t1")])
        finally:
            await store.close()

    asyncio.run(scenario())
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT id FROM alerts").fetchall() == [("a-1",)]
    finally:
        conn.close()


def test_sqlite_store_refuses_an_unmigrated_database() -> None:
    """open(migrate=False) on an empty database raises MigrationError naming what is pending."""

    async def scenario() -> None:
        store = SqliteAlertStore(":memory:")
        with pytest.raises(MigrationError, match="0001_alerts"):
            await store.open(migrate=False)
        await store.close()

    asyncio.run(scenario())


def test_postgres_migrations_apply_once_and_store_refuses_unmigrated(
    pg_schema_factory: Callable[[], str],
) -> None:
    """On an empty schema check() reports pending, migrate applies once, then is a no-op."""
    schema = pg_schema_factory()

    async def scenario() -> None:
        store = PostgresAlertStore(DSN, search_path=schema, max_size=1)
        with pytest.raises(MigrationError, match="0001_alerts"):
            await store.open(migrate=False)
        conn = await asyncpg.connect(DSN, server_settings={"search_path": schema})
        try:
            status = await check_postgres(conn)
            assert [m.name for m in status.pending] == [
                "0001_alerts",
                "0002_silences",
                "0003_checkpoints",
            ]
            assert await migrate_postgres(conn) == (1, 2, 3)
            assert await migrate_postgres(conn) == ()
            assert (await check_postgres(conn)).applied == (1, 2, 3)
            async with PostgresAlertStore(DSN, search_path=schema, max_size=1) as opened:
                assert (await opened.check()).up_to_date
            await conn.execute("UPDATE schema_migrations SET checksum = $1", "edited")
            with pytest.raises(MigrationError, match="changed after it was applied"):
                await check_postgres(conn)
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_postgres_store_hides_the_dsn() -> None:
    """Neither the repr nor a connection error shows the DSN's password."""
    secret_dsn = "postgresql://postgres:hunter2@127.0.0.1:1/test"
    store = PostgresAlertStore(secret_dsn, max_size=1)
    assert "hunter2" not in repr(store)

    async def scenario() -> None:
        with pytest.raises(Exception, match="could not connect") as info:
            await store.open()
        assert "hunter2" not in str(info.value)

    asyncio.run(scenario())


# --------------------------------------------------------------------------- checkpoints


def test_checkpoints_round_trip_latest_and_exact_barrier(harness: Harness) -> None:
    """A saved checkpoint reads back byte for byte, by exact barrier and as the latest."""
    pipeline = f"p-{secrets.token_hex(4)}"
    blob = bytes(range(256)) * 40  # every byte value, NUL included

    async def scenario(store: Any) -> None:
        assert await store.latest_checkpoint(pipeline, "router") is None
        await store.save_checkpoint(pipeline, Checkpoint("shard-0", 1, 10, b"one"))
        await store.save_checkpoint(pipeline, Checkpoint("shard-0", 2, 20, blob))
        await store.save_checkpoint(pipeline, Checkpoint("router", 1, 10, b"r1"))
        latest = await store.latest_checkpoint(pipeline, "shard-0")
        assert latest == Checkpoint("shard-0", 2, 20, blob)
        assert await store.load_checkpoint(pipeline, "shard-0", 1) == Checkpoint(
            "shard-0", 1, 10, b"one"
        )
        assert await store.load_checkpoint(pipeline, "shard-0", 3) is None
        assert await store.latest_checkpoint(pipeline, "router") == Checkpoint(
            "router", 1, 10, b"r1"
        )
        assert await store.latest_checkpoint(f"{pipeline}-other", "shard-0") is None

    harness.run(scenario)


def test_checkpoint_save_overwrites_and_prune_keeps_recent(harness: Harness) -> None:
    """Saving a barrier twice keeps the second; prune drops older barriers of that pipeline only."""
    pipeline, other = f"p-{secrets.token_hex(4)}", f"q-{secrets.token_hex(4)}"

    async def scenario(store: Any) -> None:
        for barrier in (1, 2, 3):
            await store.save_checkpoint(pipeline, Checkpoint("shard-1", barrier, barrier, b"x"))
        await store.save_checkpoint(other, Checkpoint("shard-1", 1, 1, b"y"))
        await store.save_checkpoint(pipeline, Checkpoint("shard-1", 3, 33, b"z"))
        assert await store.load_checkpoint(pipeline, "shard-1", 3) == Checkpoint(
            "shard-1", 3, 33, b"z"
        )
        assert await store.prune_checkpoints(pipeline, 3) == 2
        assert await store.load_checkpoint(pipeline, "shard-1", 2) is None
        assert await store.load_checkpoint(other, "shard-1", 1) is not None
        assert await store.clear_checkpoints(pipeline) == 1
        assert await store.latest_checkpoint(pipeline, "shard-1") is None
        assert await store.clear_checkpoints(other) == 1

    harness.run(scenario)
