"""A restart of the Redis holding the stream, mid-run, on real Ray, Redis and PostgreSQL.

The Redis keeps nothing on disk (:class:`~rayworker.chaos_services.PrivateRedis`), so a restart
takes the stream, its consumer group and the metrics with it. What an operator can rely on,
and what the drill (:func:`rayworker.chaos.restart_redis`) checks exactly:

* the pipeline recovers by itself: the group is recreated, every entry written after the
  restart is read, processed and acknowledged, and metrics are recorded again;
* every entry the pipeline read, before or after the restart, is detected on exactly once:
  the stored alerts equal one detector's over exactly those entries, in stream order, with
  no duplicate row (entries read and not acked when the group vanished are no longer
  pending, but they are finished and acked, their alerts stored);
* the loss is reported, not silent: the consumer's health counts the reset and the entries
  it had read and not acked (``lost_pending``, exactly those, and ``acks_missed``: those
  whose ack reached the recreated group), and says so at WARNING;
  entries written and not yet read before the restart are lost (only the producer can count
  them) and nothing else is;
* ``/readyz`` answers 503 with Redis CRITICAL while it is down, and shows Redis OK again
  after (the overall answer may stay 503 until the p99 latency the outage raised ages out).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets

import pytest

from rayworker.chaos import drill_settings, drill_workload, restart_redis, run_drill
from tests.integration.private_services import (
    PrivateRedis,
    private_redis_fixture,  # noqa: F401 - registers the fixture in this module
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

_FINISH_TIMEOUT_S = 80.0


def _millis(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def test_redis_restart_mid_run_recovers_reports_the_loss_and_detects_every_event_read(
    ray_cluster: str, private_redis: PrivateRedis, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis (stream, group and metrics) restarted empty mid-run: the pipeline reads on by
    itself, the consumer counts and logs exactly the entries it had read and not acked, every
    entry written after the restart is read, and the stored alerts equal one detector's over
    exactly the entries read, with no duplicate row and no entry acked before its checkpoint."""
    settings = drill_settings(private_redis.url, pg_dsn, secrets.token_hex(5))
    lines = drill_workload(60_000, seed=9)
    # The drill's pipeline stops rayworker's records at the "rayworker" logger (they go to
    # stderr) before the consumer logs anything, so listen on the consumer's logger itself.
    ingest = logging.getLogger("rayworker.ingest")
    ingest.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="rayworker.ingest"):
            report = asyncio.run(
                run_drill(
                    settings,
                    lines,
                    lambda r: restart_redis(
                        r, private_redis, settings, down_s=2.0, after_events=20_000
                    ),
                    rate=3_000.0,
                    finish_timeout_s=_FINISH_TIMEOUT_S,
                )
            )
    finally:
        ingest.removeHandler(caplog.handler)

    [outage] = report.outages
    consumer = report.consumer
    assert consumer is not None
    survivors = report.survivors()
    print(
        f"written {len(report.written)} entries, read {len(report.delivered)}, lost (never"
        f" read) {len(report.lost_entries)}, after the restart {len(survivors)}; consumer:"
        f" {consumer}; recovery: {report.recoveries}; metrics events {report.metrics_events}"
        f" of {report.delivered_events} read; router errors {report.router.get('errors')}"
    )
    assert report.finished, f"not every entry was acknowledged in {_FINISH_TIMEOUT_S} s"

    # The pipeline recovered by itself: the group is back and everything written since read.
    assert (consumer.resets, consumer.connected) == (1, True)
    assert consumer.in_flight == 0
    assert survivors, "nothing was written after the restart"
    assert set(survivors) <= set(report.delivered)
    [recovery] = report.recoveries
    assert recovery.recovered_s <= 15.0, recovery

    # The loss is counted exactly: entries read before the reset and acked only after it.
    assert consumer.reset_at is not None
    acked_at = {e: ended for _, ended, ids in report.acks for e in ids}
    in_flight = [
        e for e, read in report.delivered_at.items() if read < consumer.reset_at < acked_at[e]
    ]
    assert consumer.lost_pending == len(in_flight)
    # With the acks that reached the new group for entries read from the old one, that is
    # every entry read and not acked when the old server went (give or take the acks that
    # completed while it was shutting down).
    old = [e for e in report.delivered if _millis(e) <= outage.down_wall_ms]
    at_risk = consumer.lost_pending + consumer.acks_missed
    assert len([e for e in old if acked_at[e] > outage.down_at]) <= at_risk
    assert at_risk <= len([e for e in old if acked_at[e] > outage.stop_at])
    # A record reaches caplog once or twice (its handler on the logger, and the root's while
    # the driver's telemetry set-up has not yet stopped propagation): count each once.
    records = list({id(r): r for r in caplog.records}.values())
    missed = [r.getMessage() for r in records if "no longer pending in group" in r.getMessage()]
    assert sum(int(m.split(" ", 1)[0]) for m in missed) == consumer.acks_missed
    gone = [r.getMessage() for r in records if "is gone" in r.getMessage()]
    assert len(gone) == 1, gone
    assert re.search(rf"\b{consumer.lost_pending} entries this consumer had read", gone[0])
    assert any("unreachable" in r.getMessage() for r in records)
    # Only entries written before the restart and never read are lost.
    assert all(_millis(e) <= outage.down_wall_ms for e in report.lost_entries)
    # An entry read and not confirmed to the producer was written to the old server (the
    # stop cut its reply off; the producer wrote it again after the restart).
    assert all(e in report.written or _millis(e) <= outage.down_wall_ms for e in report.delivered)

    # Every entry read was detected on exactly once, and acked only once durable.
    assert report.router["events"] == report.delivered_events
    assert report.acked_uncovered == []
    assert report.unverified_acks == []
    assert report.stored == report.expected
    assert report.stored_rows == len(report.expected)
    assert (report.lost, report.duplicates) == (0, 0)

    # Metrics continue in the new Redis: at least everything written after the restart.
    assert report.metrics_events is not None
    assert report.metrics_events >= sum(report.written[e] for e in survivors)

    # /readyz reflects the outage while it lasts, and recovers.
    down = [s for s in outage.health if s.at_s < outage.down_s]
    assert down
    assert {s.ready for s in down} == {503}, down
    assert {s.components["redis"] for s in down} == {"CRITICAL"}, down
    assert outage.ready_s is not None
    # All OK again but `processing` (the p99 of all events so far, which the outage raised).
    after_components = dict(outage.health[-1].components)
    after_components.pop("processing")
    assert set(after_components.values()) == {"OK"}, outage.health[-1]
