"""A per-receiver circuit breaker with an injected clock.

CLOSED counts consecutive failed attempts; at ``failures`` it opens. OPEN refuses every
attempt for ``reset_s``; then exactly one attempt (the probe) is let through: HALF_OPEN.
While the probe is out every other attempt is refused (the original let unlimited probes
through, reference defect 14). The probe's success closes the breaker; its failure opens it
again for another ``reset_s``. A probe that never reports back (its task was cancelled)
is given up after ``reset_s`` so the breaker cannot stay half-open forever.

Hand-written rather than a library: pybreaker 1.4.1 is synchronous (asyncio only through
Tornado) and reads the wall clock; purgatory 3.0.1 reads ``time.time()`` and lets every
half-open call through; aiobreaker 1.2.0 is unmaintained since 2021; circuitbreaker 2.1.3
is a per-function decorator with a module clock. None takes an injected clock (which the
tests and the notifier's snapshots need) or limits half-open to one probe. The state machine
is forty lines.

Pure: standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["BreakerState", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(slots=True)
class CircuitBreaker:
    """See the module docstring. Times are seconds from an injected clock."""

    failures: int
    reset_s: float
    state: BreakerState = "closed"
    consecutive: int = 0
    opened_at: float = 0.0
    probe_at: float | None = None
    trips: int = 0

    def allow(self, now: float) -> bool:
        """May an attempt start now? (A True in OPEN after ``reset_s`` starts the probe.)"""
        if self.state == "closed":
            return True
        if self.state == "half_open":
            if self.probe_at is not None and now - self.probe_at < self.reset_s:
                return False
            self.probe_at = now  # the previous probe never reported: try another
            return True
        if now - self.opened_at >= self.reset_s:
            self.state = "half_open"
            self.probe_at = now
            return True
        return False

    def success(self) -> None:
        """An attempt succeeded: close."""
        self.state = "closed"
        self.consecutive = 0
        self.probe_at = None

    def failure(self, now: float) -> None:
        """An attempt failed: count it, and open at the threshold (or after a failed probe)."""
        self.consecutive += 1
        if self.state == "half_open" or self.consecutive >= self.failures:
            if self.state != "open":
                self.trips += 1
            self.state = "open"
            self.opened_at = now
            self.probe_at = None

    def retry_in(self, now: float) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        if self.state != "open":
            return 0.0
        return max(0.0, self.opened_at + self.reset_s - now)

    def to_state(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "state": self.state,
            "consecutive": self.consecutive,
            "opened_at": self.opened_at,
            "trips": self.trips,
        }
