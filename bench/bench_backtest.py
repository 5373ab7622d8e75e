"""Backtest benchmark: a 50-point sweep over 1M events, against replaying once per point.

    python bench/bench_backtest.py [--events 1000000] [--rule data_velocity]
        [--thresholds 10..100:10] [--windows 30s,1m,2m,5m,10m]
        [--baseline-events 100000] [--baseline-points 2] [--ray] [--json]

(a) ``run_backtest`` over the whole input: read, decode and screen once, then every point
(vectorised for threshold, distinct and time_of_day rules), with the time the read took.
(b) The baseline, replaying once per point: the real detector with the point's overrides over
the same lines, decode included (only the swept rule, which is the fastest replay;
``rayworker replay`` runs all seven rules).
Replaying 50 times over 1M events would take many minutes, so (b) is measured on the first
``--baseline-events`` events for ``--baseline-points`` points and extrapolated linearly in
events and points; the script says so in its output. Both run in this one process, so the
ratio compares like with like on a noisy machine. The parity of (a) with (b) is checked on the
subset's points. Events come from ``rayworker.sources.synthetic``, cached under ``bench/out/``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_core

from rayworker.alerts import AlertBook
from rayworker.backtest import Runner, line_batches, run_backtest
from rayworker.backtest_points import parse_sweep, point_overrides
from rayworker.clock import FixedClock
from rayworker.detect import Detector
from rayworker.rules import Overrides, RulePack, builtin_pack

OUT = Path(__file__).resolve().parent / "out"
CLOCK = FixedClock(datetime(2030, 1, 1, tzinfo=UTC))
START = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)


def load_events(n: int) -> list[bytes]:
    """The synthetic workload of n events (1M per hour of event time), cached on disk."""
    return bench_core.load_events(n, START)


def replay_point(
    lines: list[bytes], pack: RulePack, rule_id: str, overrides: Overrides
) -> set[str]:
    """One replay of the rule under a point's overrides; the alert ids."""
    detector = Detector(RulePack(rules=(pack.get(rule_id),)), overrides, clock=CLOCK)
    book = AlertBook()
    for start in range(0, len(lines), 10_000):
        book.update(detector.process_lines(lines[start : start + 10_000], start_index=start).alerts)
    book.update(detector.flush().alerts)
    return {a.id for a in book}


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rule", default="data_velocity")
    parser.add_argument("--thresholds", default="10..100:10")
    parser.add_argument("--windows", default="30s,1m,2m,5m,10m")
    parser.add_argument("--baseline-events", type=int, default=100_000)
    parser.add_argument("--baseline-points", type=int, default=2)
    parser.add_argument("--ray", action="store_true", help="run the points as Ray tasks")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    pack = builtin_pack()
    specs = [f"window={args.windows}"]
    if pack.get(args.rule).kind != "sequence":
        specs.append(f"threshold={args.thresholds}")
    sweep = parse_sweep(specs)
    points = sweep.points()
    lines = load_events(args.events)
    runner: Runner | None = None
    if args.ray:
        from rayworker.backtest_ray import RayRunner  # noqa: PLC0415 - Ray only with --ray

        runner = RayRunner()

    read_done: list[float] = []

    def source() -> Iterator[list[bytes]]:
        for start in range(0, len(lines), 100_000):
            yield lines[start : start + 100_000]
        read_done.append(time.perf_counter())

    started = time.perf_counter()
    result = run_backtest(source, pack, args.rule, sweep, clock=CLOCK, runner=runner)
    sweep_s = time.perf_counter() - started
    read_s = read_done[0] - started

    subset = lines[: args.baseline_events]
    sampled = points[:: max(1, len(points) // args.baseline_points)][: args.baseline_points]
    check = run_backtest(line_batches(subset), pack, args.rule, sweep, clock=CLOCK)
    replay_s = 0.0
    for point in sampled:
        overrides = point_overrides(Overrides.empty(), pack, args.rule, point)
        started = time.perf_counter()
        ids = replay_point(subset, pack, args.rule, overrides)
        replay_s += time.perf_counter() - started
        if ids != {a.id for a in check.alerts(point)}:
            sys.exit(f"parity broken at {point.label}")
    per_point_event = replay_s / len(sampled) / len(subset)
    baseline_s = per_point_event * len(lines) * len(points)

    figures: dict[str, Any] = {
        "rule": args.rule,
        "events": len(lines),
        "points": len(points),
        "paths": sorted({p.path for p in result.points}),
        "runner": "ray" if args.ray else "local",
        "backtest_s": round(sweep_s, 2),
        "of_which_reading_s": round(read_s, 2),
        "baseline_replay_s_extrapolated": round(baseline_s, 1),
        "baseline_measured_on": f"{len(subset):,} events x {len(sampled)} points",
        "speedup": round(baseline_s / sweep_s, 1),
        "alerts_per_point": [p.alerts for p in result.points],
    }
    if args.json:
        print(json.dumps(figures))
        return
    how = ", ".join([*figures["paths"], figures["runner"]])
    print(f"rule {args.rule}: {len(lines):,} events x {len(points)} points ({how})")
    print(f"(a) backtest, one pass:            {sweep_s:8.2f} s")
    print(f"    reading, decoding, screening once: {read_s:5.2f} s")
    print(f"    then every point:                  {sweep_s - read_s:5.2f} s")
    print(
        f"(b) replay once per point:         {baseline_s:8.1f} s  (extrapolated from "
        f"{len(subset):,} events x {len(sampled)} points: {replay_s:.1f} s measured)"
    )
    print(f"(b)/(a):                           {baseline_s / sweep_s:8.1f}x")
    print(f"parity with replay checked on the {len(sampled)} measured points of the subset")


if __name__ == "__main__":
    main()
