"""Which JSON decoder for the hot path: stdlib json, orjson and msgspec, measured in one run.

    python bench/bench_decoders.py [--events 200000]

Each decoder turns the same synthetic JSON lines into usable events. The stdlib and orjson
produce dicts with no validation; "msgspec dicts" is msgspec without a schema; "rayworker"
is the hot path itself (msgspec typed structs with validation, bounds and timestamp parsing,
as ``EventDecoder.decode`` does). orjson is measured only if it is installed (it is not a
dependency of rayworker).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import importlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec

from rayworker.events import EventDecoder
from rayworker.rules import builtin_pack
from rayworker.sources.synthetic import SyntheticConfig, generate


def rate(lines: list[bytes], decode_batch: Callable[[list[bytes]], object]) -> float:
    """Events per second over batches of 10,000 lines (best of three runs)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for i in range(0, len(lines), 10_000):
            decode_batch(lines[i : i + 10_000])
        best = min(best, time.perf_counter() - start)
    return len(lines) / best


def main() -> None:
    """Measure and print each decoder's rate and its ratio to the stdlib."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    config = SyntheticConfig(
        events=args.events,
        duration_s=3600.0 * args.events / 1_000_000,
        start=datetime(2026, 1, 5, 9, 30, tzinfo=UTC),
    )
    lines = list(generate(config))
    untyped = msgspec.json.Decoder().decode
    decoder = EventDecoder(builtin_pack().fields())
    candidates: dict[str, Callable[[list[bytes]], object]] = {
        "stdlib json (dicts)": lambda batch: [json.loads(line) for line in batch],
        "msgspec (dicts)": lambda batch: [untyped(line) for line in batch],
        "rayworker (msgspec typed + validated)": decoder.decode,
    }
    try:
        orjson = importlib.import_module("orjson")
        candidates["orjson (dicts)"] = lambda batch: [orjson.loads(line) for line in batch]
    except ImportError:
        pass
    results = {name: rate(lines, fn) for name, fn in candidates.items()}
    base = results["stdlib json (dicts)"]
    print(f"decoders over {len(lines):,} synthetic events, one core, best of 3")
    for name, value in sorted(results.items(), key=lambda kv: kv[1]):
        print(f"  {name:<40} {value:>10,.0f} events/s   {value / base:5.2f} x stdlib")


if __name__ == "__main__":
    main()
