"""The floor under (b): what the built-in pack costs before any rule logic runs.

    python bench/bench_floor.py [--events 1000000] [--batch 10000] [--repeat 3]

Any detector of the built-in pack, however its rules are evaluated, has to make a few passes
over each batch's Python objects after decoding them: factorise the tenant and every column a
filter reads (to evaluate predicates), turn each group-by and distinct value into an integer
(to keep per-key state), and compute each event's id (for evidence and duplicate detection).
This script times (a) decoding alone and (f) decoding plus those passes, done the cheapest way
this codebase knows (one combined factorisation, a plain dict vocabulary, one digest per
event), alternating them so that drift hits all alike. (f) takes every column the pack's rules
read for every event (the core itself codes the address only for the candidates of the rules
that group by it). (m) is a stricter minimum that a cleverer core could
not go below: only the tenant, action and status (every built-in rule's filter reads them),
the principal's code (``data_velocity`` keys 77 % of events by it) and the ids; other columns
could be taken for the few events the first filters pass. (m)/(a) bounds (b)/(a) from above
for a core in Python and numpy with this decoder: rules that cost nothing at all could not do
better. It also runs (b), the real detector, for comparison.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from xxhash import xxh3_128_digest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import CLOCK, batches, load_events

from rayworker.columnar import ValueVocab
from rayworker.detect import Detector
from rayworker.events import EventDecoder
from rayworker.rules import DistinctRule, builtin_pack


def _paths() -> tuple[tuple[str, ...], list[str]]:
    """The detector's filter columns (as it factorises them) and the pack's value columns."""
    detector = Detector(builtin_pack(), clock=CLOCK)
    values: dict[str, None] = {}
    for rule in builtin_pack().rules:
        for key in rule.group_by:
            values.update(dict.fromkeys(key.coalesce))
        if isinstance(rule, DistinctRule):
            values[rule.field] = None
    return detector._filter_paths, list(values)


def decode_only(decoder: EventDecoder, parts: list[list[bytes]]) -> float:
    """(a): seconds to decode every batch."""
    start = time.perf_counter()
    for part in parts:
        decoder.decode(part)
    return time.perf_counter() - start


def decode_and_passes(
    decoder: EventDecoder, parts: list[list[bytes]], filters: tuple[str, ...], values: list[str]
) -> float:
    """(f): seconds to decode every batch and make the passes no detector can skip."""
    vocab = ValueVocab()
    start = time.perf_counter()
    for part in parts:
        batch = decoder.decode(part).batch
        batch.factorise(filters)
        for path in values:
            vocab.codes_from(lambda b=batch, p=path: b.iter_values(p))
        b"".join([xxh3_128_digest(r) for r in batch.raw])
    return time.perf_counter() - start


_MINIMUM_FILTERS = ("organizationId", "action", "status")
_MINIMUM_VALUES = ["principalId"]


def detect(parts: list[list[bytes]]) -> float:
    """(b): seconds for the real core over every batch, then flush."""
    detector = Detector(builtin_pack(), clock=CLOCK)
    start = time.perf_counter()
    for part in parts:
        detector.process_lines(part)
    detector.flush()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    lines = load_events(args.events, datetime(2026, 1, 5, 9, 30, tzinfo=UTC))
    parts = batches(lines, args.batch)
    filters, values = _paths()
    decoder = EventDecoder(builtin_pack().fields())
    decode_only(decoder, parts[:10])  # warm the decoder's known values
    a_s: list[float] = []
    m_s: list[float] = []
    f_s: list[float] = []
    b_s: list[float] = []
    for _ in range(args.repeat):
        a_s.append(decode_only(decoder, parts))
        m_s.append(decode_and_passes(decoder, parts, _MINIMUM_FILTERS, _MINIMUM_VALUES))
        f_s.append(decode_and_passes(decoder, parts, filters, values))
        b_s.append(detect(parts))
    n = len(lines)
    a, m, f, b = n / min(a_s), n / min(m_s), n / min(f_s), n / min(b_s)
    print(f"{n:,} events in batches of {args.batch:,}; best of {args.repeat}")
    print(f"  (f): filter columns factorised together: {', '.join(filters)}")
    print(f"       value columns coded: {', '.join(values)}; one xxh3-128 digest per event")
    print(f"  (m): only {', '.join(_MINIMUM_FILTERS)}; {', '.join(_MINIMUM_VALUES)}; digests")
    print(f"  (a) decode only               {a:>12,.0f} events/s")
    print(f"  (m) decode + minimum passes   {m:>12,.0f} events/s   (m)/(a) = {m / a:.3f}")
    print(f"  (f) decode + the pack's passes {f:>11,.0f} events/s   (f)/(a) = {f / a:.3f}")
    print(f"  (b) the core                  {b:>12,.0f} events/s   (b)/(a) = {b / a:.3f}")
    print(f"  per event: decode {1e6 / a:.2f} us, passes {1e6 / f - 1e6 / a:.2f} us, ", end="")
    print(f"rules beyond the passes {1e6 / b - 1e6 / f:.2f} us")
    print(f"  (b)/(a) >= 0.6 needs everything after decoding <= {1e6 / a / 0.6 - 1e6 / a:.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
