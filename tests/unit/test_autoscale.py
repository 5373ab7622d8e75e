"""The lag-driven autoscaler decides predictably: sustained lag, bounds, cooldown."""

from __future__ import annotations

import pytest

from rayworker.autoscale import AutoscalePolicy, Autoscaler
from rayworker.errors import ConfigError
from rayworker.settings import load_settings

POLICY = AutoscalePolicy(
    enabled=True,
    min_shards=2,
    max_shards=4,
    scale_up_lag=1000,
    scale_down_lag=10,
    sustain_s=30,
    cooldown_s=60,
)


def test_sustained_high_lag_adds_a_shard() -> None:
    """Lag at or above the bound for sustain_s scales up by one step, not before."""
    scaler = Autoscaler(POLICY)
    assert scaler.observe(0.0, 5000, 2) is None
    assert scaler.observe(29.0, 5000, 2) is None
    assert scaler.observe(30.0, 5000, 2) == 3


def test_a_dip_restarts_the_sustain_timer() -> None:
    """Lag that drops below the bound in between must be sustained again from scratch."""
    scaler = Autoscaler(POLICY)
    scaler.observe(0.0, 5000, 2)
    scaler.observe(20.0, 500, 2)
    assert scaler.observe(40.0, 5000, 2) is None
    assert scaler.observe(70.0, 5000, 2) == 3


def test_sustained_low_lag_removes_a_shard_down_to_the_minimum() -> None:
    """Low lag scales down one step, never below min_shards."""
    scaler = Autoscaler(POLICY)
    scaler.observe(0.0, 0, 4)
    assert scaler.observe(30.0, 0, 4) == 3
    scaler = Autoscaler(POLICY)
    scaler.observe(0.0, 0, 2)
    assert scaler.observe(30.0, 0, 2) is None


def test_never_above_the_maximum() -> None:
    """At max_shards, high lag changes nothing."""
    scaler = Autoscaler(POLICY)
    scaler.observe(0.0, 10**6, 4)
    assert scaler.observe(100.0, 10**6, 4) is None


def test_cooldown_holds_back_the_next_change() -> None:
    """After a change, nothing happens for cooldown_s, and the lag is watched anew."""
    scaler = Autoscaler(POLICY)
    scaler.observe(0.0, 5000, 2)
    assert scaler.observe(30.0, 5000, 2) == 3
    scaler.changed(31.0)
    assert scaler.observe(60.0, 5000, 3) is None
    assert scaler.observe(91.0, 5000, 3) is None
    assert scaler.observe(121.0, 5000, 3) == 4


def test_unknown_lag_is_not_taken_for_zero() -> None:
    """A None lag (Redis cannot tell) resets the timers instead of scaling down."""
    scaler = Autoscaler(POLICY)
    scaler.observe(0.0, 0, 3)
    assert scaler.observe(20.0, None, 3) is None
    assert scaler.observe(40.0, 0, 3) is None
    assert scaler.observe(70.0, 0, 3) == 2


def test_out_of_bounds_shard_count_is_brought_into_bounds() -> None:
    """A pipeline started outside min..max is moved inside at the first sample."""
    scaler = Autoscaler(POLICY)
    assert scaler.observe(0.0, 100, 1) == 2
    assert Autoscaler(POLICY).observe(0.0, 100, 6) == 4


def test_bad_policies_fail_at_start_up_naming_the_setting() -> None:
    """min above max, or bounds that would flap, are rejected with the setting and a fix."""
    with pytest.raises(ConfigError, match=r"autoscale.*raise max_shards"):
        load_settings(autoscale={"min_shards": 5, "max_shards": 3})
    with pytest.raises(ConfigError, match="scale_down_lag"):
        load_settings(autoscale={"scale_up_lag": 10, "scale_down_lag": 10})
    with pytest.raises(ConfigError, match=r"autoscale\.enabeld"):
        load_settings(autoscale={"enabeld": True})


def test_autoscaling_is_off_by_default() -> None:
    """Default settings never scale by themselves."""
    assert load_settings().autoscale.enabled is False
