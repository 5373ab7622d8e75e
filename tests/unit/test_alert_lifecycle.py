"""The alert lifecycle state machine is a pure function with actionable errors."""

from __future__ import annotations

import pytest

from rayworker.errors import SinkError
from rayworker.sinks import LifecycleError, transition

ALLOWED = [
    ("active", "acknowledge", "acknowledged"),
    ("active", "resolve", "resolved"),
    ("acknowledged", "resolve", "resolved"),
    ("active", "dismiss", "dismissed"),
    ("acknowledged", "dismiss", "dismissed"),
    ("acknowledged", "reopen", "active"),
    ("resolved", "reopen", "active"),
    ("dismissed", "reopen", "active"),
]
STATUSES = ("active", "acknowledged", "resolved", "dismissed")
ACTIONS = ("acknowledge", "resolve", "dismiss", "reopen")


@pytest.mark.parametrize(("current", "action", "expected"), ALLOWED)
def test_allowed_transitions(current: str, action: str, expected: str) -> None:
    """Every allowed (status, action) pair leads to the documented status."""
    assert transition(current, action) == expected


@pytest.mark.parametrize(
    ("current", "action"),
    [
        (s, a)
        for s in STATUSES
        for a in ACTIONS
        if (s, a) not in {(c, act) for c, act, _ in ALLOWED}
    ],
)
def test_every_other_pair_is_refused(current: str, action: str) -> None:
    """Every pair not in the allowed table raises LifecycleError (a SinkError)."""
    with pytest.raises(LifecycleError) as info:
        transition(current, action, alert_id="al-1")
    assert isinstance(info.value, SinkError)
    assert "al-1" in str(info.value)


def test_acknowledging_a_resolved_alert_says_reopen_first() -> None:
    """The message names the alert, its status and the way out."""
    with pytest.raises(LifecycleError, match=r"alert al-9 is resolved; it cannot be acknowledged"):
        transition("resolved", "acknowledge", alert_id="al-9")
    with pytest.raises(LifecycleError, match="reopen it first"):
        transition("dismissed", "resolve", alert_id="al-9")


def test_repeating_an_action_says_already() -> None:
    """Acknowledging twice or reopening an active alert is refused with a clear reason."""
    with pytest.raises(LifecycleError, match="already acknowledged"):
        transition("acknowledged", "acknowledge", alert_id="al-2")
    with pytest.raises(LifecycleError, match="already active"):
        transition("active", "reopen", alert_id="al-2")


def test_unknown_action_and_status_are_refused() -> None:
    """Unknown actions and statuses raise LifecycleError listing the valid ones."""
    with pytest.raises(LifecycleError, match="unknown alert action 'suppress'"):
        transition("active", "suppress")
    with pytest.raises(LifecycleError, match="unknown status 'suppressed'"):
        transition("suppressed", "reopen")
