"""The ``alerts`` and ``db`` commands, run in-process against a SQLite store in tmp_path."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from rayworker.alerts import Alert
from rayworker.cli_alerts import decode_cursor, encode_cursor, register
from rayworker.clock import FixedClock
from rayworker.errors import RayworkerError
from rayworker.sinks import Cursor, SqliteAlertStore, StoredAlert
from rayworker.sinks.alert_store import dt_to_us
from rayworker.sinks.factory import sqlite_path

if TYPE_CHECKING:
    from pathlib import Path

NOW = datetime.now(UTC).replace(microsecond=0)
SEED = {  # id: (tenant, severity, rule, hours ago)
    "al-1": ("tenant-a", "HIGH", "failed-auth", 1),
    "al-2": ("tenant-a", "CRITICAL", "priv-esc", 3),
    "al-3": ("tenant-a", "LOW", "failed-auth", 2),
    "al-b": ("tenant-b", "HIGH", "failed-auth", 1),
}


def make_alert(
    alert_id: str,
    tenant: str = "tenant-a",
    *,
    severity: str = "HIGH",
    rule_id: str = "failed-auth",
    last_seen: datetime = NOW - timedelta(hours=1),
    title: str = "Suspicious Pattern Detected: FAILED_AUTH",
) -> Alert:
    """An alert like the detector's, with two evidence events."""
    first = last_seen - timedelta(minutes=5)
    return Alert(
        id=alert_id,
        fingerprint=f"fp-{alert_id}",
        tenant_id=tenant,
        rule_id=rule_id,
        rule_version="v1",
        group={"principal_id": "user-1"},
        severity=severity,
        type="SECURITY",
        title=title,
        description="5 failed logins",
        tags=["suspicious-pattern"],
        first_seen_us=dt_to_us(first),
        last_seen_us=dt_to_us(last_seen),
        occurrences=5,
        count=5,
        evidence_ids=[f"ev-{alert_id}-1", f"ev-{alert_id}-2"],
        window_start_us=dt_to_us(first),
        window_end_us=dt_to_us(last_seen),
        watermark_us=dt_to_us(last_seen),
        period_start_us=dt_to_us(first),
        period_end_us=dt_to_us(last_seen + timedelta(hours=1)),
        metadata={"k": "v"},
    )


def run(argv: list[str]) -> int:
    """Parse ``argv`` with the registered commands and run the handler as ``cli.main`` does."""
    parser = argparse.ArgumentParser(prog="rayworker")
    commands = parser.add_subparsers(dest="command", required=True)
    register(commands)
    args = parser.parse_args(argv)
    try:
        rc: int = args.handler(args)
    except RayworkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return rc


def seed(dsn: str, alerts: list[Alert], *, at: datetime = NOW) -> None:
    """Upsert alerts into the store ``dsn`` names, migrating it first."""

    async def go() -> None:
        async with SqliteAlertStore(sqlite_path(dsn), clock=FixedClock(at)) as store:
            await store.upsert(alerts)

    asyncio.run(go())


def stored(dsn: str, tenant: str, alert_id: str) -> StoredAlert | None:
    """The alert as the store holds it."""

    async def go() -> StoredAlert | None:
        async with SqliteAlertStore(sqlite_path(dsn)) as store:
            return await store.get(tenant, alert_id)

    return asyncio.run(go())


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` parsed as JSON."""
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables render at 200 columns, so no cell is folded across lines."""
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture
def dsn(tmp_path: Path) -> str:
    """A migrated SQLite store seeded with three alerts of tenant-a and one of tenant-b."""
    url = f"sqlite:///{tmp_path / 'alerts.db'}"
    seed(
        url,
        [
            make_alert(i, t, severity=s, rule_id=r, last_seen=NOW - timedelta(hours=h))
            for i, (t, s, r, h) in SEED.items()
        ],
    )
    return url


def alerts(dsn: str, *argv: str) -> list[str]:
    """An ``alerts`` command line for tenant-a on the store ``dsn``."""
    command, *rest = argv
    return ["alerts", command, "--alerts-dsn", dsn, "--tenant", "tenant-a", *rest]


# --------------------------------------------------------------------------- list


def test_list_prints_a_table_of_the_tenants_alerts_newest_first(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table holds tenant-a's alerts, newest first, and nothing of tenant-b."""
    assert run(alerts(dsn, "list")) == 0
    out = capsys.readouterr().out
    assert out.index("al-1") < out.index("al-3") < out.index("al-2")
    assert "al-b" not in out
    assert "CRITICAL" in out
    assert "priv-esc" in out


def test_list_json_filters_and_sorts_by_severity(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints one parsable alert per line; filters and --sort severity apply."""
    assert run(alerts(dsn, "list", "--json")) == 0
    rows = json_lines(capsys.readouterr().out)
    assert [r["id"] for r in rows] == ["al-1", "al-3", "al-2"]
    assert rows[0]["evidence"] == ["ev-al-1-1", "ev-al-1-2"]
    assert datetime.fromisoformat(rows[0]["last_seen"]) == NOW - timedelta(hours=1)
    assert run(alerts(dsn, "list", "--json", "--severity", "high")) == 0
    assert [r["id"] for r in json_lines(capsys.readouterr().out)] == ["al-1"]
    assert run(alerts(dsn, "list", "--json", "--rule", "failed-auth", "--status", "active")) == 0
    assert [r["id"] for r in json_lines(capsys.readouterr().out)] == ["al-1", "al-3"]
    assert run(alerts(dsn, "list", "--json", "--sort", "severity")) == 0
    assert [r["id"] for r in json_lines(capsys.readouterr().out)] == ["al-2", "al-1", "al-3"]
    assert run(alerts(dsn, "list", "--json", "--status", "resolved")) == 0
    assert capsys.readouterr().out == ""


def test_list_pages_with_the_printed_cursor(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A full page prints the next --cursor on stderr; following it reaches the last page."""
    assert run(alerts(dsn, "list", "--json", "--limit", "2")) == 0
    captured = capsys.readouterr()
    assert [r["id"] for r in json_lines(captured.out)] == ["al-1", "al-3"]
    cursor = captured.err.split("--cursor ")[1].split()[0]
    assert run(alerts(dsn, "list", "--json", "--limit", "2", "--cursor", cursor)) == 0
    captured = capsys.readouterr()
    assert [r["id"] for r in json_lines(captured.out)] == ["al-2"]
    assert captured.err == ""


def test_list_pages_by_offset_when_sorted_by_severity(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --sort severity the hint is an --offset; an exact last page prints no hint."""
    assert run(alerts(dsn, "list", "--json", "--sort", "severity", "--limit", "2")) == 0
    assert "--offset 2" in capsys.readouterr().err
    argv = alerts(dsn, "list", "--json", "--sort", "severity", "--limit", "1", "--offset", "2")
    assert run(argv) == 0
    captured = capsys.readouterr()
    assert [r["id"] for r in json_lines(captured.out)] == ["al-3"]
    assert captured.err == ""


def test_cursor_round_trips_and_garbage_is_a_usage_error(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """encode/decode_cursor agree; a made-up --cursor exits 2 with a message."""
    cursor = Cursor(NOW, "al-'\x00🚨")
    assert decode_cursor(encode_cursor(cursor)) == cursor
    with pytest.raises(SystemExit) as exc:
        run(alerts(dsn, "list", "--cursor", "not-a-cursor"))
    assert exc.value.code == 2
    assert "--cursor" in capsys.readouterr().err


def test_untrusted_text_cannot_drive_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Escape sequences, bidi overrides and rich markup in alert fields print inert."""
    dsn = f"sqlite:///{tmp_path / 'alerts.db'}"
    evil = "\x1b[2J[bold]x[/bold]\u202e"
    seed(dsn, [make_alert("al-e\x1b]0;pwn\x07", title=evil)])
    assert run(alerts(dsn, "list")) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\u202e" not in out
    assert "\\x1b]0;pwn\\x07" in out
    assert run(alerts(dsn, "show", "al-e\x1b]0;pwn\x07")) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "[bold]x[/bold]" in out


# --------------------------------------------------------------------------- show


def test_show_prints_evidence_and_lifecycle(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    """show lists the alert's evidence and, after actions, its transitions (table and JSON)."""
    assert run(alerts(dsn, "ack", "al-1", "--by", "ana")) == 0
    assert run(alerts(dsn, "resolve", "al-1", "--by", "bob", "--note", "rotated key")) == 0
    capsys.readouterr()
    assert run(alerts(dsn, "show", "al-1")) == 0
    out = capsys.readouterr().out
    assert "ev-al-1-2" in out
    assert "rotated key" in out
    lifecycle = out[out.index("lifecycle") :]
    assert lifecycle.index("ana") < lifecycle.index("bob")
    assert run(alerts(dsn, "show", "al-1", "--json")) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["id"], shown["status"], shown["resolution_notes"]) == (
        "al-1",
        "resolved",
        "rotated key",
    )
    assert shown["evidence"] == ["ev-al-1-1", "ev-al-1-2"]
    assert [
        (t["from_status"], t["to_status"], t["by"], t["note"]) for t in shown["transitions"]
    ] == [
        ("active", "acknowledged", "ana", None),
        ("acknowledged", "resolved", "bob", "rotated key"),
    ]


def test_show_of_another_tenants_alert_is_not_found(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """tenant-a asking for tenant-b's alert gets the same answer as for an unknown id."""
    assert run(alerts(dsn, "show", "al-b")) == 1
    foreign = capsys.readouterr().err
    assert run(alerts(dsn, "show", "al-nope")) == 1
    unknown = capsys.readouterr().err
    assert foreign == "error: alert al-b not found for this tenant\n"
    assert foreign.replace("al-b", "al-nope") == unknown


# --------------------------------------------------------------------------- lifecycle


def test_lifecycle_commands_move_the_alert(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    """ack, dismiss (with a note), reopen and resolve each change the stored status."""
    assert run(alerts(dsn, "ack", "al-2", "--by", "ana")) == 0
    assert "acknowledged by ana" in capsys.readouterr().out
    row = stored(dsn, "tenant-a", "al-2")
    assert row is not None
    assert (row.status, row.acknowledged_by) == ("acknowledged", "ana")
    assert run(alerts(dsn, "dismiss", "al-2", "--by", "ana", "--note", "pentest")) == 0
    row = stored(dsn, "tenant-a", "al-2")
    assert row is not None
    assert (row.status, row.resolution_notes) == ("dismissed", "pentest")
    assert run(alerts(dsn, "reopen", "al-2", "--by", "bob", "--note", "again")) == 0
    assert run(alerts(dsn, "resolve", "al-2", "--by", "bob")) == 0
    row = stored(dsn, "tenant-a", "al-2")
    assert row is not None
    assert (row.status, row.resolved_by) == ("resolved", "bob")


def test_illegal_transition_exits_1_with_a_clear_error(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Acknowledging a resolved alert fails with an error saying to reopen it first."""
    assert run(alerts(dsn, "resolve", "al-1", "--by", "ana")) == 0
    capsys.readouterr()
    assert run(alerts(dsn, "ack", "al-1", "--by", "bob")) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: alert al-1 is resolved")
    assert "reopen it first" in err
    row = stored(dsn, "tenant-a", "al-1")
    assert row is not None
    assert row.status == "resolved"


def test_acting_on_another_tenants_alert_is_not_found_and_changes_nothing(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """ack of tenant-b's alert as tenant-a exits 1, says not found, and leaves it active."""
    before = stored(dsn, "tenant-b", "al-b")
    for command in ("ack", "resolve", "dismiss", "reopen"):
        assert run(alerts(dsn, command, "al-b", "--by", "mallory")) == 1
        assert capsys.readouterr().err == "error: alert al-b not found for this tenant\n"
    after = stored(dsn, "tenant-b", "al-b")
    assert after is not None
    assert after == before
    assert after.status == "active"


def test_ack_takes_no_note_and_by_is_required(dsn: str) -> None:
    """The store records no note with an acknowledgement, so ack refuses --note; --by is a must."""
    with pytest.raises(SystemExit) as exc:
        run(alerts(dsn, "ack", "al-1", "--by", "ana", "--note", "x"))
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        run(alerts(dsn, "resolve", "al-1"))
    assert exc.value.code == 2


# --------------------------------------------------------------------------- stats, cleanup


def test_stats_counts_by_severity_rule_and_status(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """stats --json counts tenant-a's alerts; the table names every section."""
    assert run(alerts(dsn, "resolve", "al-3", "--by", "ana")) == 0
    capsys.readouterr()
    assert run(alerts(dsn, "stats", "--json")) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["total"], stats["active"]) == (3, 2)
    assert stats["by_status"] == {"active": 2, "acknowledged": 0, "resolved": 1, "dismissed": 0}
    assert stats["by_severity"] == {"INFO": 0, "LOW": 1, "MEDIUM": 0, "HIGH": 1, "CRITICAL": 1}
    assert stats["by_rule"] == {"failed-auth": 2, "priv-esc": 1}
    assert {t["period"]: (t["created"], t["resolved"]) for t in stats["trends"]} == {
        "24h": (3, 1),
        "7d": (3, 1),
        "30d": (3, 1),
    }
    assert run(alerts(dsn, "stats")) == 0
    out = capsys.readouterr().out
    for section in ("by status", "by severity", "by rule", "trends", "priv-esc"):
        assert section in out


def test_cleanup_deletes_only_old_closed_alerts(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Alerts resolved 100 days ago go with --older-than-days 90; a fresh resolution stays."""

    async def resolve_long_ago() -> None:
        clock = FixedClock(NOW - timedelta(days=100))
        async with SqliteAlertStore(sqlite_path(dsn), clock=clock) as store:
            await store.resolve("tenant-a", "al-2", by="ana")
            await store.resolve("tenant-b", "al-b", by="bob")

    asyncio.run(resolve_long_ago())
    assert run(alerts(dsn, "resolve", "al-3", "--by", "ana")) == 0
    assert run(alerts(dsn, "cleanup", "--older-than-days", "90")) == 0
    assert "deleted 1 alerts" in capsys.readouterr().out
    assert stored(dsn, "tenant-a", "al-2") is None
    assert stored(dsn, "tenant-a", "al-3") is not None
    assert stored(dsn, "tenant-b", "al-b") is not None
    with pytest.raises(SystemExit):
        run(alerts(dsn, "cleanup", "--older-than-days", "0"))


# --------------------------------------------------------------------------- db, settings


def test_db_migrate_applies_once_then_reports_up_to_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """db status on no file exits 1 without creating it; migrate applies; then up to date."""
    path = tmp_path / "new.db"
    dsn = f"sqlite:///{path}"
    assert run(["db", "status", "--alerts-dsn", dsn]) == 1
    assert "pending: 0001_alerts" in capsys.readouterr().out
    assert not path.exists()
    assert run(["db", "migrate", "--alerts-dsn", dsn]) == 0
    out = capsys.readouterr().out
    assert "applied 3 migration(s)" in out
    assert "0001_alerts" in out
    assert run(["db", "migrate", "--alerts-dsn", dsn]) == 0
    assert "up to date" in capsys.readouterr().out
    assert run(["db", "status", "--alerts-dsn", dsn]) == 0
    assert "schema up to date" in capsys.readouterr().out


def test_alerts_on_a_missing_store_say_to_migrate_and_create_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """alerts list on a SQLite path that does not exist exits 1 pointing at db migrate."""
    path = tmp_path / "missing.db"
    assert run(alerts(f"sqlite:///{path}", "list")) == 1
    assert "rayworker db migrate" in capsys.readouterr().err
    assert not path.exists()


def test_alerts_on_an_unmigrated_store_say_to_migrate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing but empty SQLite file is refused with the pending migration named."""
    path = tmp_path / "empty.db"
    path.touch()
    assert run(alerts(f"sqlite:///{path}", "stats")) == 1
    err = capsys.readouterr().err
    assert "0001_alerts" in err
    assert "rayworker db migrate" in err


def test_the_dsn_comes_from_the_environment_without_the_flag(
    dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --alerts-dsn the commands use RAYWORKER_ALERTS_DSN."""
    monkeypatch.setenv("RAYWORKER_ALERTS_DSN", dsn)
    assert run(["alerts", "list", "--tenant", "tenant-b", "--json"]) == 0
    assert [r["id"] for r in json_lines(capsys.readouterr().out)] == ["al-b"]


def test_a_dsn_password_is_never_printed(capsys: pytest.CaptureFixture[str]) -> None:
    """Connection failures and bad schemes name no password."""
    secret = "postgresql://postgres:hunter2@127.0.0.1:1/test"
    assert run(["db", "status", "--alerts-dsn", secret]) == 1
    assert run(["alerts", "list", "--tenant", "t", "--alerts-dsn", secret]) == 1
    assert run(["db", "migrate", "--alerts-dsn", "mysql://root:hunter2@db/x"]) == 1
    captured = capsys.readouterr()
    assert "hunter2" not in captured.out + captured.err
    assert captured.err.count("error: ") == 3
