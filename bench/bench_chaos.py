"""Chaos benchmark (issue 4, section 5): fault drills on a live stream, with a no-fault baseline.

Runs :func:`rayworker.chaos.run_drill` twice in one run on the same synthetic workload: once
without faults (the baseline), once with random shard kills and one router kill. Prints events
in, entries acknowledged, alerts expected vs persisted, duplicates, lost, and the recovery time
of every fault (from the kill to the router running restored, and to the next checkpoint),
plus the drill's elapsed time against the baseline's.

Needs Redis (``--redis``) and PostgreSQL (``--postgres``; a throw-away schema is created and
dropped) and starts a local Ray.

    python bench/bench_chaos.py --events 400000 --kills 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import asyncpg

from rayworker.chaos import (
    DrillReport,
    FaultPlan,
    drill_settings,
    drill_workload,
    kill_actors,
    run_drill,
)
from rayworker.pipeline.runtime import connect_ray


async def _schema(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _no_faults(_: DrillReport) -> FaultPlan:
    async def plan(*_: Any) -> None:
        return None

    return plan


def _print(label: str, report: DrillReport) -> None:
    print(f"{label}:")
    print(f"  events in                     {report.events:,}")
    print(f"  stream entries (all acked)    {report.entries:,}")
    print(f"  acked before a checkpoint     {len(report.acked_uncovered)}")
    print(f"  alerts expected / persisted   {len(report.expected)} / {len(report.stored)}")
    print(f"  duplicates / lost             {report.duplicates} / {report.lost}")
    print(f"  elapsed                       {report.elapsed_s:.1f} s")
    if report.recoveries:
        recovered = [r.recovered_s for r in report.recoveries]
        progress = [r.progress_s for r in report.recoveries]
        print(
            f"  recovery, kill -> restored    median {statistics.median(recovered):.2f} s, "
            f"max {max(recovered):.2f} s (target <= 5 s)"
        )
        print(
            f"  kill -> next checkpoint       median {statistics.median(progress):.2f} s, "
            f"max {max(progress):.2f} s"
        )
        for r in report.recoveries:
            print(f"    {r.target:<8} {r.recovered_s:6.2f} s  {r.progress_s:6.2f} s")


def main() -> int:
    """Run the baseline and the drill, print both."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--rate", type=float, default=8_000.0, help="events/s produced")
    parser.add_argument("--kills", type=int, default=10, help="faults, one of them the router")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    connect_ray(num_cpus=4)
    lines = drill_workload(args.events, seed=5)
    print(
        f"{len(lines):,} synthetic events at {args.rate:,.0f}/s, 2 shards, {os.cpu_count()} cores"
    )
    reports: dict[str, DrillReport] = {}
    for label, plan in (
        ("baseline (no faults)", _no_faults),
        (
            f"{args.kills} kills",
            lambda r: kill_actors(r, kills=args.kills, router_at=args.kills // 2, seed=7),
        ),
    ):
        name = secrets.token_hex(4)
        schema = f"rwbench_{name}"
        asyncio.run(_schema(args.postgres, f"CREATE SCHEMA {schema}"))
        try:
            settings = drill_settings(args.redis, f"{args.postgres}?search_path={schema}", name)
            reports[label] = asyncio.run(run_drill(settings, lines, plan, rate=args.rate))
        finally:
            asyncio.run(_schema(args.postgres, f"DROP SCHEMA {schema} CASCADE"))
        _print(label, reports[label])
    base, drill = reports.values()
    print(f"elapsed with faults / baseline: {drill.elapsed_s / base.elapsed_s:.2f}")
    ok = all(r.lost == 0 and r.duplicates == 0 and not r.acked_uncovered for r in reports.values())
    print("targets: 0 lost, 0 duplicates:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
