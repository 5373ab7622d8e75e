"""Chaos benchmark (issue 4, section 5): fault drills on a live stream, with a no-fault baseline.

Runs :func:`rayworker.chaos.run_drill` once per scenario in one run, on the same synthetic
workload:

* ``baseline``: no faults (its elapsed time is the reference, and twice its 95th percentile
  consumer lag is the threshold each fault's "lag back under" waits for);
* ``kills``: random shard kills and one router kill;
* ``postgres``: a private PostgreSQL (alerts and checkpoints) stopped for ``--pg-down`` s;
* ``redis``: a private Redis (stream, consumer group and metrics) restarted empty.

Prints, per scenario: events in, entries written / read / acknowledged, entries lost (written
and never read: only a Redis restart can lose them), alerts expected (one detector over the
events read) vs persisted, duplicates, lost alerts, acknowledgements not covered by a
checkpoint, and per fault the recovery times: to answering again (router restored; alert
store OK; first entry after a Redis restart read), to the next checkpoint, and to the consumer
lag back under the threshold; with the elapsed time against the baseline's.

Needs Redis (``--redis``) and PostgreSQL (``--postgres``; a throw-away schema is created and
dropped) for the baseline and the kills, the ``redis-server`` and PostgreSQL server binaries
for the outages (:mod:`rayworker.chaos_services`), and starts a local Ray.

    python bench/bench_chaos.py --events 200000 --rate 8000 --kills 6
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
from collections.abc import Callable
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


from rayworker.chaos import (
    DrillReport,
    FaultPlan,
    drill_settings,
    drill_workload,
    kill_actors,
    restart_redis,
    run_drill,
    scratch_schema,
    stop_postgres,
)
from rayworker.chaos_services import PrivatePostgres, PrivateRedis
from rayworker.pipeline.runtime import connect_ray
from rayworker.settings import Settings

Plan = Callable[[DrillReport], FaultPlan]


def _no_faults(_: DrillReport) -> FaultPlan:
    async def plan(*_: Any) -> None:
        return None

    return plan


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def _print(label: str, report: DrillReport, baseline: DrillReport | None) -> None:
    print(f"{label}:")
    print(f"  events in                       {report.events:,}")
    # A finished drill saw nothing pending with every entry read: all were acknowledged
    # (by the pump, or by a replay for what a checkpoint already covered).
    acked = len(report.delivered) if report.finished else report.acked_entries
    print(
        f"  entries written / read / acked  {len(report.written):,} / "
        f"{len(report.delivered):,} / {acked:,}"
        + ("" if report.finished else "  (NOT all acknowledged in time)")
    )
    print(
        f"  entries lost (never read)       {len(report.lost_entries):,}"
        f" ({report.lost_events:,} events)"
    )
    print(
        f"  acked before a checkpoint       {len(report.acked_uncovered)}"
        f" (+{len(report.unverified_acks)} unverifiable)"
    )
    print(f"  alerts expected / persisted     {len(report.expected)} / {len(report.stored)}")
    print(f"  duplicates / lost alerts        {report.duplicates} / {report.lost}")
    if report.consumer is not None and report.consumer.resets:
        print(
            f"  consumer group resets           {report.consumer.resets}: read and not acked"
            f" when the group vanished {report.consumer.lost_pending} (+"
            f"{report.consumer.acks_missed} whose ack reached the new group)"
        )
    if report.metrics_events is not None:
        print(f"  events in the metrics store     {report.metrics_events:,}")
    ratio = f" ({report.elapsed_s / baseline.elapsed_s:.2f}x baseline)" if baseline else ""
    print(f"  elapsed                         {report.elapsed_s:.1f} s{ratio}")
    for outage in report.outages:
        down = [s for s in outage.health if s.at_s < outage.down_s]
        critical = [s.at_s for s in down if s.store == "CRITICAL"]
        print(
            f"  {outage.service} down {outage.down_s:.1f} s: /readyz 503 in "
            f"{sum(s.ready == 503 for s in down)}/{len(down)} samples"
            + (f", alert store CRITICAL from {min(critical):.1f} s" if critical else "")
            + f"; acked meanwhile {outage.acked_during} (beyond the checkpoint:"
            f" {len(outage.acked_beyond)}); /readyz service OK again {_s(outage.ready_s)} after"
        )
    if report.recoveries:
        recovered = [r.recovered_s for r in report.recoveries]
        print(
            f"  recovery: answering again       median {statistics.median(recovered):.2f} s,"
            f" max {max(recovered):.2f} s (target <= 5 s)"
        )
        print(f"  lag threshold                   {report.lag_threshold} entries")
        print("    fault              answering  checkpoint  lag under")
        for r in report.recoveries:
            print(
                f"    {r.target:<18} {r.recovered_s:7.2f} s  {r.progress_s:8.2f} s  "
                f"{_s(r.lag_s):>9}"
            )


def _show(label: str, report: DrillReport | None, baseline: DrillReport) -> None:
    if report is None:
        print(f"{label}: the drill failed (see above)")
    else:
        _print(label, report, baseline)


def _ok(report: DrillReport) -> bool:
    return (
        report.finished
        and report.lost == 0
        and report.duplicates == 0
        and not report.acked_uncovered
        and not report.unverified_acks
    )


def main() -> int:
    """Run the baseline and each fault scenario, print them all."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=8_000.0, help="events/s produced")
    parser.add_argument("--kills", type=int, default=6, help="faults, one of them the router")
    parser.add_argument("--pg-down", type=float, default=30.0, help="PostgreSQL outage, s")
    parser.add_argument("--redis-down", type=float, default=2.0, help="Redis outage, s")
    parser.add_argument(
        "--scenarios",
        default="baseline,kills,postgres,redis",
        help="comma-separated subset of baseline,kills,postgres,redis (baseline always runs)",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    wanted = {s.strip() for s in args.scenarios.split(",")}
    connect_ray(num_cpus=4)
    lines = drill_workload(args.events, seed=5)
    strike_at = len(lines) // 3
    print(
        f"{len(lines):,} synthetic events at {args.rate:,.0f}/s, 2 shards, {os.cpu_count()} cores"
    )

    def drill(settings: Settings, plan: Plan, threshold: int) -> DrillReport | None:
        try:
            return asyncio.run(
                run_drill(settings, lines, plan, rate=args.rate, lag_threshold=threshold)
            )
        except Exception as exc:  # noqa: BLE001 - reported, and the other scenarios still run
            notes = "; ".join(getattr(exc, "__notes__", []))
            print(f"  DRILL FAILED: {type(exc).__name__}: {str(exc)[:1500]} {notes}")
            return None

    reports: dict[str, DrillReport | None] = {}
    name = secrets.token_hex(4)
    with scratch_schema(args.postgres, name) as dsn:
        base = drill(drill_settings(args.redis, dsn, name), _no_faults, 100)
    if base is None:
        return 1
    reports["baseline (no faults)"] = base
    threshold = max(20, int(2 * _percentile([float(n) for _, n in base.lag], 0.95)))
    _print("baseline (no faults)", base, None)

    if "kills" in wanted:
        name = secrets.token_hex(4)
        label = f"{args.kills} kills"
        with scratch_schema(args.postgres, name) as dsn:
            reports[label] = drill(
                drill_settings(args.redis, dsn, name),
                lambda r: kill_actors(r, kills=args.kills, router_at=args.kills // 2, seed=7),
                threshold,
            )
        _show(label, reports[label], base)
    if "postgres" in wanted:
        name = secrets.token_hex(4)
        label = f"PostgreSQL stopped {args.pg_down:.0f} s"
        with PrivatePostgres() as server:
            settings = drill_settings(args.redis, server.dsn, name)
            reports[label] = drill(
                settings,
                lambda r: stop_postgres(
                    r, server, settings, down_s=args.pg_down, after_events=strike_at
                ),
                threshold,
            )
        _show(label, reports[label], base)
    if "redis" in wanted:
        name = secrets.token_hex(4)
        label = "Redis restarted (empty)"
        with PrivateRedis() as redis_server, scratch_schema(args.postgres, name) as dsn:
            settings = drill_settings(redis_server.url, dsn, name)
            reports[label] = drill(
                settings,
                lambda r: restart_redis(
                    r, redis_server, settings, down_s=args.redis_down, after_events=strike_at
                ),
                threshold,
            )
        _show(label, reports[label], base)

    ok = all(r is not None and _ok(r) for r in reports.values())
    print("targets: 0 lost, 0 duplicates, nothing acked early:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
