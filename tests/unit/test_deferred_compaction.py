"""Deferred store compaction changes no output: the same alerts, the same state at a snapshot."""

from __future__ import annotations

from typing import Any

from rayworker.alerts import AlertBook
from rayworker.detect import Detector, _RuleRuntime
from rayworker.rules import builtin_pack
from rayworker.sources.synthetic import SyntheticConfig, generate
from tests.unit.test_builtin_rules import CLOCK


class EagerDetector(Detector):
    """The detector as it was: every store compacted at the end of every batch."""

    def _compact_store(
        self, runtime: _RuleRuntime, tenant_codes: Any, *, force: bool = False
    ) -> None:
        super()._compact_store(runtime, tenant_codes, force=True)


def run(detector: Detector, lines: list[bytes], batch: int) -> tuple[AlertBook, dict[str, Any]]:
    """Alerts (latest versions) and the snapshot after the stream in batches."""
    book = AlertBook()
    for i in range(0, len(lines), batch):
        book.update(detector.process_lines(lines[i : i + batch]).alerts)
    state = detector.snapshot()
    book.update(detector.flush().alerts)
    return book, state


def test_deferred_compaction_detects_and_holds_what_eager_compaction_does() -> None:
    """Small batches of dense, out-of-order traffic: identical alerts, keys and rows."""
    config = SyntheticConfig(
        events=30_000, tenants=4, principals=60, duration_s=900.0, disorder_ms=20_000, seed=3
    )
    lines = list(generate(config))
    deferred, deferred_state = run(Detector(builtin_pack(), clock=CLOCK), lines, 250)
    eager, eager_state = run(EagerDetector(builtin_pack(), clock=CLOCK), lines, 250)
    assert [a.to_json() for a in deferred.sorted()] == [a.to_json() for a in eager.sorted()]
    assert len(deferred) > 50
    for rule_id, state in deferred_state["rules"].items():
        assert state["keys"] == eager_state["rules"][rule_id]["keys"], rule_id
