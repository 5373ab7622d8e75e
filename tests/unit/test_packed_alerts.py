"""Alerts packed for passing between processes come back equal, field for field."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

from rayworker.alerts import Alert, PackedAlerts
from rayworker.clock import FixedClock
from rayworker.detect import Detector, DetectorConfig
from rayworker.rules import builtin_pack
from rayworker.sources.synthetic import SyntheticConfig, generate


def _alerts() -> list[Alert]:
    lines = list(generate(SyntheticConfig(events=20_000, tenants=5, seed=4)))
    clock = FixedClock(datetime(2030, 1, 1, tzinfo=UTC))
    detector = Detector(builtin_pack(), config=DetectorConfig(), clock=clock)
    alerts = detector.process_lines(lines).alerts + detector.flush().alerts
    assert alerts, "the synthetic attacks raise alerts"
    return alerts


def test_packed_alerts_unpack_to_equal_alerts_and_survive_pickling() -> None:
    """Pack, pickle (as Ray does), unpack: the same alerts, trace ids and metadata included."""
    alerts = _alerts()
    alerts[0].trace_id = "0af7651916cd43dd8448eb211c80319c"
    alerts[0].metadata = {"note": ["a", 1, {"b": None}]}
    packed = pickle.loads(pickle.dumps(PackedAlerts.pack(alerts)))
    assert len(packed) == len(alerts)
    assert packed.unpack() == alerts


def test_an_empty_pack_unpacks_to_no_alerts() -> None:
    """Packing nothing gives nothing back."""
    assert PackedAlerts.pack([]).unpack() == []
