"""Core benchmark: decode-only, the core end to end, the original's algorithm, state per key.

    python bench/bench_core.py [--events 1000000] [--batch 10000] [--json]

All figures come from one run on one core, so the ratios compare like with like on a noisy
machine. The events come from ``rayworker.sources.synthetic`` (100 Zipf-skewed tenants, about
10k principals, labelled attack bursts; 1M events span one hour) and are cached under
``bench/out/``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import gc
import json
import sys
import time
import tracemalloc
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))

from original import RETENTION_MS, OriginalMonitor, _ms

from rayworker.alerts import AlertBook
from rayworker.clock import FixedClock
from rayworker.detect import Detector
from rayworker.events import EventDecoder
from rayworker.rules import builtin_pack
from rayworker.sources.synthetic import SyntheticConfig, generate

OUT = Path(__file__).resolve().parent / "out"
CLOCK = FixedClock(datetime(2030, 1, 1, tzinfo=UTC))


def load_events(n: int, start: datetime) -> list[bytes]:
    """The synthetic workload of n events (1M per hour of event time) from ``start``, cached
    on disk under a name that holds both."""
    OUT.mkdir(exist_ok=True)
    path = OUT / f"events-{n}-{start:%Y%m%dT%H%M}.jsonl"
    if not path.exists():
        config = SyntheticConfig(events=n, duration_s=3600.0 * n / 1_000_000, start=start)
        path.write_bytes(b"".join(line + b"\n" for line in generate(config)))
    return path.read_bytes().splitlines()


def batches(lines: list[bytes], size: int) -> list[list[bytes]]:
    """The input cut into batches."""
    return [lines[i : i + size] for i in range(0, len(lines), size)]


def bench_decode(parts: list[list[bytes]]) -> float:
    """(a) Seconds to decode every batch (what the hot path decodes for the built-in pack)."""
    decoder = EventDecoder(builtin_pack().fields())
    start = time.perf_counter()
    for part in parts:
        decoder.decode(part)
    return time.perf_counter() - start


def bench_core(parts: list[list[bytes]]) -> tuple[float, AlertBook, Counter[str]]:
    """(b) Seconds for decode plus all built-in rules, and the alerts."""
    detector = Detector(builtin_pack(), clock=CLOCK)
    book = AlertBook()
    late: Counter[str] = Counter()
    start = time.perf_counter()
    for part in parts:
        result = detector.process_lines(part)
        book.update(result.alerts)
        late.update(result.metrics.late)
    book.update(detector.flush().alerts)
    return time.perf_counter() - start, book, late


def bench_original(lines: list[bytes], min_seconds: float) -> tuple[int, float, int]:
    """(c) The original's algorithm in steady state: events processed, seconds, retained."""
    middle = len(lines) // 2
    events = [
        msgspec.json.decode(line) for line in lines[max(0, middle - 200_000) : middle + 5_000]
    ]
    events = [e for e in events if isinstance(e, dict)]
    pivot = len(events) - 5_000
    now = _ms(events[pivot]["timestamp"])
    monitor = OriginalMonitor()
    monitor.prefill([e for e in events[:pivot] if _ms(e["timestamp"]) > now - RETENTION_MS])
    retained = len(monitor.events)
    done = 0
    start = time.perf_counter()
    for event in events[pivot:]:
        monitor.process(event, _ms(event["timestamp"]))
        done += 1
        if done >= 5 and time.perf_counter() - start >= min_seconds:
            break
    return done, time.perf_counter() - start, retained


def state_bytes(parts: list[list[bytes]]) -> tuple[float, int]:
    """Bytes held by a detector after the whole input, per active key (tracemalloc).

    A throwaway detector first runs the same input, so that modules imported lazily on the
    way (numpy imports ``numpy.ma`` on a first ``np.unique``) and process-wide caches
    (compiled regexes, time zones) are not counted as the measured detector's state.
    """
    warm = Detector(builtin_pack(), clock=CLOCK)
    for part in parts:
        warm.process_lines(part)
    del warm
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    detector = Detector(builtin_pack(), clock=CLOCK)
    for part in parts:
        detector.process_lines(part)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    keys = detector.active_keys()
    return held / max(keys, 1), keys


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument(
        "--start", default="09:30", help="UTC time of day the hour of traffic starts (HH:MM)"
    )
    parser.add_argument("--original-seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    hour, minute = (int(x) for x in args.start.split(":"))
    start = datetime(2026, 1, 5, hour, minute, tzinfo=UTC)

    lines = load_events(args.events, start)
    parts = batches(lines, args.batch)
    n = len(lines)
    decode_s = bench_decode(parts)
    core_s, book, late = bench_core(parts)
    orig_n, orig_s, retained = bench_original(lines, args.original_seconds)
    per_key, keys = state_bytes(parts)

    a = n / decode_s
    b = n / core_s
    c = orig_n / orig_s
    by_rule = Counter(alert.rule_id for alert in book)
    figures: dict[str, Any] = {
        "events": n,
        "batch": args.batch,
        "decode_events_per_s": round(a),
        "core_events_per_s": round(b),
        "original_events_per_s": round(c, 2),
        "original_retained_events": retained,
        "core_over_decode": round(b / a, 3),
        "core_over_original": round(b / c),
        "state_bytes_per_active_key": round(per_key),
        "active_keys": keys,
        "alerts": len(book),
        "alerts_by_rule": dict(sorted(by_rule.items())),
        "late_events": sum(late.values()),
        "gc_enabled_during_timing": gc.isenabled(),
        "targets": {
            "core_over_decode>=0.6": b / a >= 0.6,
            "core_over_original>=3000": b / c >= 3000,
            "state_bytes_per_key<=200": per_key <= 200,
        },
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    gc_state = "on" if gc.isenabled() else "off"
    print(
        f"rayworker core benchmark: {n:,} events, batches of {args.batch:,}, one core,"
        f" gc {gc_state} during timing"
    )
    print(f"  (a) decode only            {a:>12,.0f} events/s")
    print(f"  (b) core end to end        {b:>12,.0f} events/s   (b)/(a) = {b / a:.3f}")
    print(
        f"  (c) original algorithm     {c:>12,.2f} events/s   (b)/(c) = {b / c:,.0f}"
        f"   ({orig_n} events on a retained list of {retained:,})"
    )
    print(f"  state                      {per_key:>12,.0f} bytes per active key ({keys:,} keys)")
    print(f"  alerts                     {len(book):>12,}   late {sum(late.values()):,}")
    for rule, count in sorted(by_rule.items()):
        print(f"      {rule:<24} {count:>6,}")
    for name, ok in figures["targets"].items():
        print(f"  target {name:<28} {'PASS' if ok else 'FAIL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
