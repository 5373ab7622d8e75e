"""Crash recovery on real Ray, Redis and PostgreSQL: kills never lose or duplicate an alert.

The attack-laden synthetic workload flows through a Redis Stream into PostgreSQL while shards
(and once the router) are killed (a fault drill, :mod:`rayworker.chaos`); every run must end
with exactly the alerts `replay` gives for the same events, with every entry acknowledged only
once a checkpoint covered it.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest

from rayworker.chaos import drill_settings, drill_workload, kill_actors, run_drill
from rayworker.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def _settings(redis_url: str, pg_dsn: str, **extra: Any) -> Settings:
    return drill_settings(redis_url, pg_dsn, secrets.token_hex(5), **extra)


def test_twenty_shard_kills_and_a_router_kill_converge_on_replay(
    ray_cluster: str, live_redis_url: str, pg_dsn: str
) -> None:
    """200k events produced at 4k/s; 20 random shard kills and one router kill mid-stream:
    the stored alerts equal one detector's over the stream, id for id, with no duplicate row,
    every entry acked once a checkpoint covered it, and each kill recovered from."""
    settings = _settings(live_redis_url, pg_dsn)
    lines = drill_workload(200_000, seed=3)
    report = asyncio.run(
        run_drill(settings, lines, lambda r: kill_actors(r, kills=21, router_at=10, seed=11))
    )
    print(f"recovered / progressing again after each kill (s): {report.recoveries}")
    assert report.acked_uncovered == []
    assert report.stored == report.expected
    assert report.stored_rows == len(report.expected)
    assert (report.lost, report.duplicates) == (0, 0)
    assert report.router["events"] == len(lines)
    targets = [r.target for r in report.recoveries]
    assert (targets.count("router"), len(targets)) == (1, 21)
    assert report.pump is not None
    # The start, then at least once per kill (a kill landing during a replay adds one).
    assert report.pump.recoveries >= 22
    assert max(r.recovered_s for r in report.recoveries) <= 15
