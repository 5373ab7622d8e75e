"""Rebuild rayworker/data/sample_events.jsonl: synthetic traffic plus a handful of bad lines.

Run from the repository root: ``python bench/make_sample.py``. The output is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from rayworker.sources.synthetic import SyntheticConfig, generate

CONFIG = SyntheticConfig(
    events=13_000,
    tenants=10,
    principals=300,
    duration_s=1800,
    start=datetime(2026, 1, 5, 21, 45, tzinfo=UTC),
    attacks_per_tenant_hour=6.0,
    disorder_ms=2000,
    seed=7,
)


def main() -> None:
    """Write the sample and print its size."""
    lines = list(generate(CONFIG))

    def edit(i: int, change: Callable[[dict[str, Any]], object]) -> bytes:
        event = msgspec.json.decode(lines[i])
        change(event)
        return msgspec.json.encode(event)

    bad = {
        1000: lines[1000][:-25],  # truncated: malformed JSON
        3000: b'{"timestamp": "2026-01-05T22:10:00Z", "action": "data.read",',  # malformed JSON
        5000: edit(5000, lambda e: e.pop("organizationId")),  # missing organizationId
        7000: edit(7000, lambda e: e.pop("organizationId")),
        9000: edit(9000, lambda e: e.update(timestamp="05/01/2026 22:30")),  # bad timestamp
        11000: edit(11000, lambda e: e.update(timestamp="2026-01-05T25:61:00Z")),
        # naive timestamp: accepted, read as UTC and counted
        12000: edit(12000, lambda e: e.update(timestamp=e["timestamp"].rstrip("Z"))),
    }
    out = []
    for i, line in enumerate(lines):
        out.append(line)
        if i in bad:
            out.append(bad[i])
    path = Path("rayworker/data/sample_events.jsonl")
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"".join(line + b"\n" for line in out))
    print(len(out), path.stat().st_size)


if __name__ == "__main__":
    main()
