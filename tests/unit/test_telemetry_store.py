"""The alert row keeps the trace id of the event that fired the alert (memory and SQLite)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

from rayworker.alerts import Alert
from rayworker.cli_alerts import register
from rayworker.clock import SystemClock
from rayworker.detect import Detector, DetectorConfig
from rayworker.rules import builtin_pack
from rayworker.sinks.alert_store import AlertStore, fold_batch
from rayworker.sinks.memory_alerts import MemoryAlertStore
from rayworker.sinks.sqlite_alerts import SqliteAlertStore

FIRST = "a" * 32
LATER = "b" * 32


def _versions() -> tuple[Alert, Alert]:
    """One failed_auth alert as first raised and after a later hit."""
    lines = [
        json.dumps(
            {
                "timestamp": f"2026-03-10T10:00:{i:02d}Z",
                "action": "auth.login.failure",
                "status": "failure",
                "principalId": "p1",
                "organizationId": "org-1",
            }
        ).encode()
        for i in range(6)
    ]
    detector = Detector(builtin_pack(), config=DetectorConfig(), clock=SystemClock())
    first = detector.process_lines(lines[:5]).alerts[0]
    first = dataclasses.replace(first, trace_id=FIRST)
    later = dataclasses.replace(detector.process_lines(lines[5:]).alerts[0], trace_id=LATER)
    assert later.id == first.id
    assert later.occurrences > first.occurrences
    return first, later


async def _round_trip(store: AlertStore) -> list[str | None]:
    first, later = _versions()
    seen = []
    await store.upsert([first])
    seen.append((await store.get("org-1", first.id)).trace_id)  # type: ignore[union-attr]
    await store.upsert([later, dataclasses.replace(later, trace_id=None)])
    row = await store.get("org-1", first.id)
    assert row is not None
    assert row.occurrences == later.occurrences
    seen.append(row.trace_id)
    await store.close()
    return seen


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_store_keeps_the_first_trace_id(backend: str, tmp_path: Path) -> None:
    """An alert row holds the trace id of the version that first had one; updates with
    another trace (or none) do not replace it."""

    async def run() -> list[str | None]:
        store: AlertStore
        if backend == "memory":
            store = MemoryAlertStore()
        else:
            store = SqliteAlertStore(tmp_path / "alerts.db")
            await store.open(migrate=True)
        return await _round_trip(store)

    assert asyncio.run(run()) == [FIRST, FIRST]


def test_fold_batch_keeps_the_first_trace_id() -> None:
    """Folding versions of one alert in a batch keeps the first trace id it meets."""
    first, later = _versions()
    (folded,) = fold_batch([dataclasses.replace(first, trace_id=None), later, first])
    assert folded.trace_id == LATER
    (folded,) = fold_batch([first, later])
    assert folded.trace_id == FIRST


def test_alert_json_carries_the_trace_id() -> None:
    """The alert's JSON form names its trace, so tools can link to it."""
    first, _ = _versions()
    assert first.to_json()["trace_id"] == FIRST


def test_alerts_show_prints_the_trace_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rayworker alerts show` prints the alert's trace id, in the table and in --json."""
    monkeypatch.setenv("COLUMNS", "200")
    first, _ = _versions()

    async def seed() -> None:
        store = SqliteAlertStore(tmp_path / "alerts.db")
        await store.open(migrate=True)
        await store.upsert([first])
        await store.close()

    asyncio.run(seed())
    parser = argparse.ArgumentParser(prog="rayworker")
    register(parser.add_subparsers(dest="command", required=True))
    base = ["alerts", "show", "--alerts-dsn", f"sqlite:///{tmp_path / 'alerts.db'}"]
    base += ["--tenant", "org-1", first.id]
    args = parser.parse_args(base)
    assert args.handler(args) == 0
    assert FIRST in capsys.readouterr().out
    args = parser.parse_args([*base, "--json"])
    assert args.handler(args) == 0
    assert json.loads(capsys.readouterr().out)["trace_id"] == FIRST
