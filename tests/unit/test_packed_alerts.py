"""Alerts packed for passing between processes, or parked in the detector between batches,
come back equal, field for field."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

from rayworker.alerts import Alert, PackedAlerts
from rayworker.clock import FixedClock
from rayworker.detect import Detector, DetectorConfig, _park_alert, _unpark_alert
from rayworker.rules import builtin_pack
from rayworker.sources.synthetic import SyntheticConfig, generate
from tests.unit.test_builtin_rules import CLOCK, fails, only


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


def test_a_parked_alert_comes_back_equal_whatever_its_evidence_ids() -> None:
    """A parked alert unparks equal, derived, named and upper-case evidence ids alike."""
    alert = _alerts()[0]
    derived = list(alert.evidence_ids)
    for evidence in (
        derived,
        [*derived, "login-42"],
        ["ev-" + "AB" * 16],
        ["ev-" + "zz" * 16],
        [],
    ):
        alert.evidence_ids = evidence
        assert _unpark_alert(_park_alert(alert)) == alert
    alert.evidence_ids = derived
    assert len(_park_alert(alert)) < len(PackedAlerts.pack([alert]).data) - 16 * len(derived)


def test_what_the_caller_sets_on_an_alert_stays_in_its_later_versions() -> None:
    """A trace id set on a returned alert is in its next version, after a park and unpark."""
    detector = Detector(builtin_pack(), clock=CLOCK)
    first = only(detector.process_lines(fails(5)).alerts, "failed_auth")
    assert len(first) == 1
    first[0].trace_id = "0af7651916cd43dd8448eb211c80319c"
    detector.process_lines([])  # a call that does not touch it: parked when the next starts
    later = only(detector.process_lines(fails(1, start=45.0)).alerts, "failed_auth")
    assert len(later) == 1
    assert later[0] is not first[0]
    assert later[0].occurrences == 2
    assert later[0].trace_id == "0af7651916cd43dd8448eb211c80319c"


def test_an_alert_hit_call_after_call_stays_unpacked() -> None:
    """An alert touched by every call is one object throughout; an idle call parks it."""
    detector = Detector(builtin_pack(), clock=CLOCK)
    first = only(detector.process_lines(fails(5)).alerts, "failed_auth")
    second = only(detector.process_lines(fails(1, start=45.0)).alerts, "failed_auth")
    assert second[0] is first[0]
    assert second[0].occurrences == 2
    detector.process_lines([])
    detector.process_lines([])
    ((periods,),) = [r.open.values() for r in detector._rules if r.rule.id == "failed_auth"]
    assert not any(current.is_awake for current in periods.values())
