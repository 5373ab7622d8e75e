"""Faults that are not crashes: a poison entry, and PostgreSQL going away mid-run.

Both are fault drills (:func:`rayworker.chaos.run_drill`): the attack-laden synthetic workload
flows through a Redis Stream into PostgreSQL with a recoverable pipeline (checkpoints on), and
the stored alerts are compared with one detector's over the same events:

* a poison entry (a shard fails every batch holding it) is dead-lettered after
  ``poison_attempts`` failures, with its history, while every other entry flows and is acked;
* a private PostgreSQL is stopped for ~30 s (:func:`rayworker.chaos.stop_postgres`): the
  router's health reports the alert store CRITICAL and ``/readyz`` answers 503 while it is
  down, nothing is acknowledged beyond the latest checkpoint, and once the server is back the
  pipeline finishes by itself with exactly the expected alerts.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import msgspec
import pytest

from rayworker.chaos import (
    DrillReport,
    FaultPlan,
    drill_settings,
    drill_workload,
    run_drill,
    stop_postgres,
)
from rayworker.pipeline.app import Pipeline
from rayworker.settings import Settings
from tests.integration.private_services import (
    PrivatePostgres,
    private_postgres_fixture,  # noqa: F401 - registers the fixture in this module
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

_MARKER = "rw-poison-7f3a"
_FINISH_TIMEOUT_S = 80.0
"""How long a run may take to acknowledge every entry before the test gives up."""
_DOWN_S = 30.0


def _settings(redis_url: str, pg_dsn: str, **extra: Any) -> Settings:
    return drill_settings(redis_url, pg_dsn, secrets.token_hex(5), **extra)


def _poisoned(line: bytes) -> bytes:
    """A valid event like ``line`` whose outcome description carries the poison marker."""
    event = msgspec.json.decode(line)
    event["outcomeDescription"] = f"{event.get('outcomeDescription', '')} {_MARKER}"
    return msgspec.json.encode(event)


def _no_faults(_: DrillReport) -> FaultPlan:
    async def plan(_pipeline: Pipeline, _finished: Any) -> None:
        return None

    return plan


def _assert_exact(report: DrillReport, events: int) -> None:
    """Every entry acked once a checkpoint covered it; alerts equal the detector's."""
    assert report.finished, f"not every entry was acknowledged in {_FINISH_TIMEOUT_S} s"
    assert report.router["events"] == events
    assert report.acked_uncovered == []
    assert report.unverified_acks == []
    assert report.lost_entries == []
    assert report.stored == report.expected
    assert report.stored_rows == len(report.expected)
    assert (report.lost, report.duplicates) == (0, 0)


def test_poison_entry_is_dead_lettered_after_its_attempts_while_the_rest_flows(
    ray_cluster: str, live_redis_url: str, pg_dsn: str
) -> None:
    """An entry whose event makes its shard fail every time goes to the dead-letter stream
    (reason poison, its entry id, its attempts) after poison_attempts failures; every other
    entry is acked and the stored alerts equal one detector's over all other events."""
    settings = _settings(live_redis_url, pg_dsn, fault_poison=_MARKER, poison_attempts=3)
    lines = drill_workload(30_000, seed=5)
    # A failed login: the brute-force rule counts every one, so it surely reaches a shard
    # (an event no rule counts is accepted but sent to none, and could not poison one).
    at = next(i for i, line in enumerate(lines) if i >= 15_000 and b'"auth.login.failure"' in line)
    poison = _poisoned(lines[at])
    lines = [*lines[:at], poison, *lines[at:]]

    report = asyncio.run(
        run_drill(
            settings,
            lines,
            _no_faults,
            rate=6_000.0,
            alone={at},
            finish_timeout_s=_FINISH_TIMEOUT_S,
        )
    )

    router = {k: report.router.get(k) for k in ("events", "late", "rejected", "errors")}
    print(f"pump: {report.pump}; router: {router}; dead letters: {len(report.dead_letters)}")
    _assert_exact(report, len(lines) - 1)
    [entry] = report.poisoned
    assert report.written[entry] == 1
    poisoned = [d for d in report.dead_letters if d[b"reason"] == b"poison"]
    assert len(poisoned) == 1, poisoned
    record = poisoned[0]
    assert record[b"entry"].decode() == entry
    assert record[b"payload"] == poison
    assert b"failed 3 times" in record[b"message"]
    assert report.pump is not None
    assert report.pump.recoveries >= 1 + settings.poison_attempts
    # The detector's reference excluded exactly the poison event.
    assert report.delivered_events == len(lines)


def test_postgres_outage_back_pressures_reports_critical_and_recovers_by_itself(
    ray_cluster: str, live_redis_url: str, private_postgres: PrivatePostgres
) -> None:
    """PostgreSQL stopped for ~30 s mid-run: the router's alert store turns CRITICAL (and
    stays so) and /readyz answers 503 with postgres CRITICAL while it is down, nothing is
    acked beyond the latest checkpoint, and once it is back the pipeline recovers by itself
    (alert store OK, checkpoints again, /readyz shows PostgreSQL OK) with exactly one
    detector's alerts and no duplicate rows."""
    settings = _settings(live_redis_url, private_postgres.dsn)
    lines = drill_workload(60_000, seed=7)
    report = asyncio.run(
        run_drill(
            settings,
            lines,
            lambda r: stop_postgres(
                r, private_postgres, settings, down_s=_DOWN_S, after_events=12_000
            ),
            rate=3_000.0,
            finish_timeout_s=_FINISH_TIMEOUT_S + _DOWN_S,
        )
    )

    [outage] = report.outages
    down = [s for s in outage.health if s.at_s < outage.down_s]
    print(f"alert-store status while down: {[(round(s.at_s, 1), s.store) for s in down]}")
    print(f"/readyz while down: {[s.ready for s in down]}; recovery: {report.recoveries}")
    print(f"outage {outage.down_s:.1f} s, /readyz shows it OK again {outage.ready_s} s after")
    assert outage.down_s >= _DOWN_S
    statuses = [s.store for s in down]
    assert "CRITICAL" in statuses, down
    first = statuses.index("CRITICAL")
    assert down[first].at_s <= 10.0, down
    # Once open, the breaker stays open until the store answers again.
    assert set(statuses[first:]) == {"CRITICAL"}, down
    assert "unavailable" in down[-1].message
    # /readyz: the database probe fails at once, so every sample while down is a 503.
    assert {s.ready for s in down} == {503}, down
    assert {s.components["postgres"] for s in down} == {"CRITICAL"}, down
    assert all(s.components["shards"] == "CRITICAL" for s in down[first:]), down
    # No checkpoint completes without its database, so nothing more may be acknowledged.
    assert outage.completed_at_up == outage.completed_at_down
    assert outage.acked_beyond == []
    after = [e for begun, _, ids in report.acks if begun >= outage.up_at for e in ids]
    print(f"entries acked during the outage: {outage.acked_during}, after it: {len(after)}")
    assert after, "nothing was acknowledged once PostgreSQL was back"
    # It recovers without intervention: the breaker's next probe closes it (every 5 s).
    [recovery] = report.recoveries
    assert recovery.recovered_s <= 15.0, recovery
    assert outage.ready_s is not None
    # Every component is OK again but `processing`, which grades the p99 latency of all
    # events so far: the outage's slow batches keep it up for a while by design.
    after_components = dict(outage.health[-1].components)
    after_components.pop("processing")
    assert set(after_components.values()) == {"OK"}, outage.health[-1]
    _assert_exact(report, len(lines))
