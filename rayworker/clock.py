"""Injected clocks: the core never reads the wall clock itself.

Detection runs on event time. The only use of a clock in the core is to refuse events dated
implausibly far in the future, which would otherwise push a tenant's watermark ahead and make
all its real events late. Tests and backtests inject a :class:`FixedClock`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "FixedClock", "SystemClock", "now_us"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Clock(Protocol):
    """Something that tells the current time, timezone-aware."""

    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...


class SystemClock:
    """The machine's clock, in UTC."""

    def now(self) -> datetime:
        """The current time in UTC."""
        return datetime.now(UTC)


class FixedClock:
    """A clock that says what it is told; for tests, backtests and replays."""

    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            msg = f"FixedClock needs a timezone-aware time, got {at.isoformat()}; add tzinfo=UTC"
            raise ValueError(msg)
        self._at = at

    def now(self) -> datetime:
        """The time this clock was set to."""
        return self._at

    def set(self, at: datetime) -> None:
        """Move the clock."""
        if at.tzinfo is None:
            msg = f"FixedClock needs a timezone-aware time, got {at.isoformat()}; add tzinfo=UTC"
            raise ValueError(msg)
        self._at = at


def now_us(clock: Clock) -> int:
    """The clock's current time in microseconds since the epoch (the core's time unit)."""
    return (clock.now() - _EPOCH) // timedelta(microseconds=1)
