"""The live load-balance policy: when it moves key groups, and when it leaves them alone."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from rayworker.balance import BalancePolicy, LoadBalancer
from rayworker.routing import Assignment
from rayworker.shard_plan import imbalance

GROUPS = 64


def _skewed(hot: float = 15.0) -> np.ndarray:
    """Even load per key group except group 0, which carries ``hot`` times a group's share."""
    load = np.full(GROUPS, 1_000.0)
    load[0] = hot * 1_000.0
    return load


def _policy(**changes: object) -> BalancePolicy:
    base: dict[str, object] = {"min_events": 10_000, "check_every_s": 1.0, "cooldown_s": 60.0}
    return BalancePolicy.model_validate({**base, **changes})


def test_an_uneven_load_gets_a_plan_that_evens_it() -> None:
    """Past min_events with the busiest shard over trigger x mean, observe proposes a plan
    from the current assignment (version + 1) that brings the load under the trigger."""
    start = Assignment.balanced(4, groups=GROUPS)
    load = _skewed()
    assert imbalance(start, load) > 1.25
    planned = LoadBalancer(_policy()).observe(0.0, start, load)
    assert planned is not None
    assert planned.version == start.version + 1
    assert set(planned.shards) == set(start.shards)
    assert imbalance(planned, load) <= 1.25


def test_an_even_load_or_a_small_sample_changes_nothing() -> None:
    """No plan for an even load, for a sample under min_events, or for a single shard."""
    even = np.full(GROUPS, 1_000.0)
    assert LoadBalancer(_policy()).observe(0.0, Assignment.balanced(4, groups=GROUPS), even) is None
    small = _skewed() / 100
    assert (
        LoadBalancer(_policy()).observe(0.0, Assignment.balanced(4, groups=GROUPS), small) is None
    )
    assert (
        LoadBalancer(_policy()).observe(0.0, Assignment.balanced(1, groups=GROUPS), _skewed())
        is None
    )


def test_the_cooldown_holds_the_next_move_back_and_the_sample_restarts() -> None:
    """After changed(), nothing moves within cooldown_s, and only load routed since the change
    is judged (the counters are cumulative)."""
    balancer = LoadBalancer(_policy())
    start = Assignment.balanced(4, groups=GROUPS)
    load = _skewed()
    assert balancer.observe(0.0, start, load) is not None
    balancer.changed(1.0, load)
    assert balancer.observe(30.0, start, load * 3) is None
    # Past the cooldown but with less than min_events routed since the change: still nothing.
    assert balancer.observe(100.0, start, load + 1) is None
    assert balancer.observe(100.0, start, load * 3) is not None


def test_a_router_restart_starts_the_sample_again() -> None:
    """Counters that shrink (a restarted router counts from zero) reset the sample instead of
    producing negative loads."""
    balancer = LoadBalancer(_policy())
    start = Assignment.balanced(4, groups=GROUPS)
    balancer.changed(0.0, _skewed() * 10)
    planned = balancer.observe(1_000.0, start, _skewed())
    assert planned is not None
    assert balancer.last["events"] == pytest.approx(_skewed().sum())


def test_a_plan_that_barely_helps_is_not_worth_a_pause() -> None:
    """One key group heavier than a shard's fair share bounds every plan: if the best plan
    does not halve the excess imbalance, nothing moves."""
    load = np.zeros(GROUPS)
    load[0], load[1] = 100_000.0, 1_000.0
    start = Assignment.balanced(2, groups=GROUPS)
    balancer = LoadBalancer(_policy())
    assert balancer.observe(0.0, start, load) is None
    assert balancer.last["imbalance"] > 1.25


def test_a_balanced_sample_past_window_events_starts_again() -> None:
    """Once window_events of balanced traffic are judged, the sample restarts, so a later skew
    is judged on recent traffic rather than diluted by a long even history."""
    balancer = LoadBalancer(_policy(window_events=50_000))
    start = Assignment.balanced(4, groups=GROUPS)
    even = np.full(GROUPS, 1_000.0)
    assert balancer.observe(0.0, start, even) is None
    skew = even + _skewed()
    assert balancer.observe(1.0, start, skew) is not None


def test_bad_policies_fail_naming_the_field() -> None:
    """A tolerance at or above the trigger, or a window under min_events, is refused with the
    fields named."""
    with pytest.raises(ValidationError, match=r"balance\.tolerance"):
        BalancePolicy(trigger=1.2, tolerance=1.3)
    with pytest.raises(ValidationError, match=r"balance\.window_events"):
        BalancePolicy(min_events=10, window_events=5)
    with pytest.raises(ValidationError, match="trigger"):
        BalancePolicy(trigger=0.9)
