"""The ``alerts`` and ``db`` commands against a real PostgreSQL, in a throw-away schema."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta
from urllib.parse import quote

import pytest

from rayworker.alerts import Alert
from rayworker.sinks.postgres_alerts import PostgresAlertStore
from tests.integration.test_alert_store_contract import pg_schema_factory  # noqa: F401 - fixture
from tests.unit.test_cli_alerts import NOW, SEED, alerts, make_alert, run

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_dsn(live_postgres_dsn: str, pg_schema_factory: Callable[[], str]) -> str:  # noqa: F811
    """The test DSN pointed (through ``options``) at a new, empty schema of its own."""
    schema = pg_schema_factory()
    options = quote(f"-csearch_path={schema}", safe="")
    sep = "&" if "?" in live_postgres_dsn else "?"
    return f"{live_postgres_dsn}{sep}options={options}"


def seed(dsn: str, alerts: list[Alert]) -> None:
    """Upsert alerts through the PostgreSQL store (the schema must be migrated)."""

    async def go() -> None:
        async with PostgresAlertStore(dsn, max_size=1) as store:
            await store.upsert(alerts)

    asyncio.run(go())


def test_db_migrate_then_status_on_an_empty_schema(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """status reports the pending migration (exit 1); migrate applies it once; status is 0."""
    assert run(["db", "status", "--alerts-dsn", pg_dsn]) == 1
    assert "pending: 0001_alerts" in capsys.readouterr().out
    assert run(["alerts", "list", "--alerts-dsn", pg_dsn, "--tenant", "t"]) == 1
    assert "rayworker db migrate" in capsys.readouterr().err
    assert run(["db", "migrate", "--alerts-dsn", pg_dsn]) == 0
    assert "0001_alerts" in capsys.readouterr().out
    assert run(["db", "migrate", "--alerts-dsn", pg_dsn]) == 0
    assert "up to date" in capsys.readouterr().out
    assert run(["db", "status", "--alerts-dsn", pg_dsn]) == 0


def test_list_show_lifecycle_stats_and_cleanup(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The key flows of the unit tests, on PostgreSQL: paging, JSON, actions, stats."""
    assert run(["db", "migrate", "--alerts-dsn", pg_dsn]) == 0
    seed(
        pg_dsn,
        [
            make_alert(i, t, severity=s, rule_id=r, last_seen=NOW - timedelta(hours=h))
            for i, (t, s, r, h) in SEED.items()
        ],
    )
    capsys.readouterr()

    assert run(alerts(pg_dsn, "list", "--json", "--limit", "2")) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["id"] for line in captured.out.splitlines()] == ["al-1", "al-3"]
    cursor = captured.err.split("--cursor ")[1].split()[0]
    assert run(alerts(pg_dsn, "list", "--json", "--limit", "2", "--cursor", cursor)) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == ["al-2"]
    assert run(alerts(pg_dsn, "list", "--json", "--sort", "severity")) == 0
    ids = [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()]
    assert ids == ["al-2", "al-1", "al-3"]

    assert run(alerts(pg_dsn, "ack", "al-1", "--by", "ana")) == 0
    assert run(alerts(pg_dsn, "ack", "al-1", "--by", "ana")) == 1
    assert "already acknowledged" in capsys.readouterr().err
    assert run(alerts(pg_dsn, "resolve", "al-1", "--by", "bob", "--note", "'; DROP TABLE x")) == 0
    assert "al-1 resolved by bob" in capsys.readouterr().out
    assert run(alerts(pg_dsn, "show", "al-1", "--json")) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["status"], shown["resolution_notes"]) == ("resolved", "'; DROP TABLE x")
    assert [t["to_status"] for t in shown["transitions"]] == ["acknowledged", "resolved"]

    assert run(alerts(pg_dsn, "dismiss", "al-b", "--by", "mallory")) == 1
    assert "error: alert al-b not found for this tenant" in capsys.readouterr().err
    assert run(alerts(pg_dsn, "show", "al-b")) == 1

    assert run(alerts(pg_dsn, "stats", "--json")) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["total"], stats["active"]) == (3, 2)
    assert stats["by_rule"] == {"failed-auth": 2, "priv-esc": 1}

    assert run(alerts(pg_dsn, "cleanup", "--older-than-days", "1")) == 0
    assert "deleted 0 alerts" in capsys.readouterr().out  # al-1 was resolved just now
    assert run(alerts(pg_dsn, "show", "al-1")) == 0
