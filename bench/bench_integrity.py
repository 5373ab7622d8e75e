"""What event integrity verification costs: the core and the router, off versus on, one run.

    python bench/bench_integrity.py [--events 200000] [--batch 10000] [--repeat 3] [--json]

The synthetic workload of ``bench_core.py``, every event signed as the original's producers
sign it (a per-tenant HMAC key; 0.1 % of the events tampered afterwards, so the violation path
runs too). Off and on read the same signed lines, so the difference is verification alone:

* (a) the core end to end (``Detector.process_lines``, all built-in rules), integrity off;
* (b) the same with ``verify-if-present`` for every tenant, (c) with ``require``;
* (d) the router's screening (``Partitioner.split_lines``: decode, screen, route to 2 shards),
  off, and (e) on (``verify-if-present``), since only the router verifies in the pipeline;
* (f) verification alone (``IntegrityMonitor.check``) over pre-decoded batches.

Each figure is the best of ``--repeat`` passes. Within a pass every batch goes through each
variant in turn (alternating the order), so the machine's drift hits them alike; times are CPU
seconds of this single-threaded process, so other processes on the shared machine weigh less.
Ratios are taken within the run.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import gc
import json
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import CLOCK, OUT, batches, load_events

from rayworker.detect import Detector, DetectorConfig, MetricDeltas
from rayworker.events import EventDecoder
from rayworker.integrity import IntegrityConfig, IntegrityMonitor, Policy, event_hash, sign
from rayworker.partition import Partitioner
from rayworker.routing import Assignment
from rayworker.rules import builtin_pack


def signed_events(n: int, start: datetime, tamper: float) -> tuple[list[bytes], dict[str, bytes]]:
    """The workload with every event signed under its tenant's key (cached on disk)."""
    path = OUT / f"signed-{n}-{start:%H%M}-{tamper:g}.jsonl"
    lines = load_events(n, start)
    tenants = sorted({msgspec.json.decode(line)["organizationId"] for line in lines[:50_000]})
    keys = {t: f"key-of-{t}".encode() for t in tenants}
    if not path.exists():
        rng = random.Random(7)
        out = []
        for line in lines:
            event = msgspec.json.decode(line)
            tenant = event["organizationId"]
            key = keys.setdefault(tenant, f"key-of-{tenant}".encode())
            digest = event_hash(event)
            event.update(hash=digest, signature=sign(digest, key), algorithm="HMAC-SHA256")
            if rng.random() < tamper:
                event["outcomeDescription"] = "tampered"
            out.append(msgspec.json.encode(event))
        path.write_bytes(b"".join(line + b"\n" for line in out))
    signed = path.read_bytes().splitlines()
    for line in signed:
        tenant = msgspec.json.decode(line)["organizationId"]
        keys.setdefault(tenant, f"key-of-{tenant}".encode())
    return signed, keys


Step = Callable[[int], object]
"""Process batch ``i`` (and, for ``i == len(parts)``, finish)."""


def core(parts: list[list[bytes]], integrity: IntegrityConfig | None) -> Step:
    """The core end to end: decode plus all built-in rules, then flush."""
    detector = Detector(builtin_pack(), clock=CLOCK, integrity=integrity)

    def step(i: int) -> object:
        return detector.process_lines(parts[i]) if i < len(parts) else detector.flush()

    return step


def router(parts: list[list[bytes]], integrity: IntegrityConfig | None) -> Step:
    """The router's half: decode, screen (and verify), route to 2 shards."""
    partitioner = Partitioner(
        builtin_pack(), Assignment.balanced(2), DetectorConfig(), CLOCK, integrity=integrity
    )
    return lambda i: partitioner.split_lines(parts[i]) if i < len(parts) else None


def check_only(parts: list[list[bytes]], integrity: IntegrityConfig) -> Step:
    """``IntegrityMonitor.check`` alone, over batches decoded beforehand (not timed)."""
    decoder = EventDecoder(builtin_pack().fields())
    decoded = [decoder.decode(part).batch for part in parts]
    for batch in decoded:
        batch.codes("organizationId")  # the rules factorise tenants anyway
    monitor = IntegrityMonitor(integrity, suppression_s=300.0, evidence_cap=100)

    def step(i: int) -> object:
        if i == len(parts):
            return None
        batch = decoded[i]
        return monitor.check(batch, np.ones(len(batch), dtype=np.bool_), 0)

    return step


def interleaved(
    n_parts: int, variants: dict[str, Callable[[], Step]], repeat: int
) -> dict[str, float]:
    """Best total CPU seconds per variant; every batch runs through every variant in turn
    (the order alternating), so the machine's drift hits all of them alike."""
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeat):
        steps = {name: build() for name, build in variants.items()}
        totals = dict.fromkeys(variants, 0.0)
        names = list(variants)
        gc.collect()
        for i in range(n_parts + 1):
            for name in names if i % 2 else reversed(names):
                started = time.process_time()
                steps[name](i)
                totals[name] += time.process_time() - started
        for name, total in totals.items():
            best[name] = min(best[name], total)
    return best


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tamper", type=float, default=0.001)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    start = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
    lines, keys = signed_events(args.events, start, args.tamper)
    parts = batches(lines, args.batch)
    n = len(lines)
    verify = IntegrityConfig(Policy.VERIFY_IF_PRESENT, {}, keys)
    require = IntegrityConfig(Policy.REQUIRE, {}, keys)

    best = {
        **interleaved(
            len(parts),
            {
                "a_core_off": lambda: core(parts, None),
                "b_core_verify": lambda: core(parts, verify),
                "c_core_require": lambda: core(parts, require),
            },
            args.repeat,
        ),
        **interleaved(
            len(parts),
            {
                "d_router_off": lambda: router(parts, None),
                "e_router_verify": lambda: router(parts, verify),
                "f_check_only": lambda: check_only(parts, verify),
            },
            args.repeat,
        ),
    }
    counts = MetricDeltas()
    detector = Detector(builtin_pack(), clock=CLOCK, integrity=verify)
    for part in parts:
        counts.merge(detector.process_lines(part).metrics)
    rate = {name: n / seconds for name, seconds in best.items()}
    figures = {
        "events": n,
        "batch": args.batch,
        "tenants": len(keys),
        "violations": sum(counts.integrity_violations.values()),
        "events_per_s": {k: round(v) for k, v in rate.items()},
        "core_verify_over_off": rate["b_core_verify"] / rate["a_core_off"],
        "core_require_over_off": rate["c_core_require"] / rate["a_core_off"],
        "router_verify_over_off": rate["e_router_verify"] / rate["d_router_off"],
        "check_only_over_core_off": rate["f_check_only"] / rate["a_core_off"],
        "us_per_event_verification": 1e6 / rate["f_check_only"],
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    labels = {
        "a_core_off": "(a) core end to end, integrity off",
        "b_core_verify": "(b) core end to end, verify-if-present",
        "c_core_require": "(c) core end to end, require",
        "d_router_off": "(d) router screening + routing, off",
        "e_router_verify": "(e) router screening + routing, verify-if-present",
        "f_check_only": "(f) verification alone",
    }
    print(
        f"{n:,} signed events, {len(keys)} tenants, batches of {args.batch:,}, "
        f"{figures['violations']} violations; best of {args.repeat}"
    )
    for name, label in labels.items():
        print(f"  {label:<52} {rate[name]:>12,.0f} events/s")
    print(
        f"  (b)/(a) {figures['core_verify_over_off']:.3f}   (c)/(a) "
        f"{figures['core_require_over_off']:.3f}   (e)/(d) "
        f"{figures['router_verify_over_off']:.3f}   (f)/(a) "
        f"{figures['check_only_over_core_off']:.2f}   "
        f"verification {figures['us_per_event_verification']:.2f} us/event"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
