"""Deferred store compaction changes no output: the same alerts, the same state at a snapshot."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from rayworker import detect as detect_module
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


def same_alerts_as_eager(
    config: SyntheticConfig, batch: int
) -> tuple[AlertBook, dict[str, Any], dict[str, Any]]:
    """Run both detectors over the traffic; assert identical alerts; return the deferred
    one's alerts and both snapshots."""
    lines = list(generate(config))
    deferred, deferred_state = run(Detector(builtin_pack(), clock=CLOCK), lines, batch)
    eager, eager_state = run(EagerDetector(builtin_pack(), clock=CLOCK), lines, batch)
    assert [a.to_json() for a in deferred.sorted()] == [a.to_json() for a in eager.sorted()]
    return deferred, deferred_state, eager_state


def test_deferred_compaction_detects_and_holds_what_eager_compaction_does() -> None:
    """Small batches of dense, out-of-order traffic: identical alerts, keys and rows."""
    config = SyntheticConfig(
        events=30_000, tenants=4, principals=60, duration_s=900.0, disorder_ms=20_000, seed=3
    )
    deferred, deferred_state, eager_state = same_alerts_as_eager(config, 250)
    assert len(deferred) > 50
    for rule_id, state in deferred_state["rules"].items():
        assert state["keys"] == eager_state["rules"][rule_id]["keys"], rule_id


def test_deferred_compaction_with_codes_forgotten_after_every_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With tenant codes freed (and reused) after every batch, alerts still match eager."""
    monkeypatch.setattr(detect_module, "_VOCAB_GC_MIN", 0)
    config = SyntheticConfig(
        events=12_000, tenants=6, principals=40, duration_s=600.0, disorder_ms=10_000, seed=4
    )
    same_alerts_as_eager(config, 200)


def test_a_freed_tenant_code_has_no_deferred_watermark(monkeypatch: pytest.MonkeyPatch) -> None:
    """Freeing a tenant code clears its deferred watermark, which its next owner must not get."""
    monkeypatch.setattr(detect_module, "_VOCAB_GC_MIN", 0)
    detector = Detector(builtin_pack(), clock=CLOCK)
    detector.process_lines(list(generate(SyntheticConfig(events=2_000, tenants=3, seed=5))))
    runtime = next(r for r in detector._rules if r.rule.id == "data_velocity")
    assert runtime.store is not None
    live = set((runtime.store.key_codes() >> detect_module.GROUP_BITS).tolist())
    gone = detector._tenants.code("a-tenant-with-no-state")
    size = len(detector._tenants.values)
    wm = np.full(size, 10**15, dtype=np.int64)
    runtime.pending = (wm, np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int64))
    detector._maybe_forget_codes()
    assert gone in detector._tenants._free
    assert wm[gone] == detect_module._NEVER
    assert all(wm[c] == 10**15 for c in live)
