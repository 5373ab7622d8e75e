"""When to move key groups between the shards a pipeline has, from the load it routes. Pure.

Round-robin key groups give every shard the same number of groups, not the same work: a rule
grouped by the tenant alone keeps a Zipf-hot tenant's events on one key group. A plan made
from history (``rayworker shards plan``) fixes that before start-up; :class:`LoadBalancer`
does it while running, for fleets without a plan or whose traffic moved since. It watches
the event copies the router has routed to each key group since the last change and, once
that sample is large enough and the busiest shard carries more than ``trigger`` times the
mean, proposes :meth:`~rayworker.routing.Assignment.balance_load`'s plan, which moves as few
groups as it can. The pump hands the groups over with their state, as a rescale does (a
pause of a fraction of a second), so it never acts twice within ``cooldown_s``, and only for
a plan that clearly helps. On by default: an unbalanced pipeline runs at the speed of its
busiest shard.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rayworker.routing import Assignment
from rayworker.shard_plan import imbalance

__all__ = ["BalancePolicy", "LoadBalancer"]


class BalancePolicy(BaseModel):
    """Live load balancing over the shards a pipeline has (settings ``balance.*``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    trigger: float = Field(
        1.25, gt=1.0, description="move key groups once the busiest shard's load is this x mean"
    )
    tolerance: float = Field(
        1.05, ge=1.0, description="the max/mean a move aims for (below trigger)"
    )
    min_events: int = Field(
        100_000, ge=1, description="event copies routed since the last change before judging"
    )
    window_events: int = Field(
        1_000_000,
        ge=1,
        description="a balanced sample this large starts again, so the judgement follows traffic",
    )
    check_every_s: float = Field(10.0, gt=0, description="how often the load is looked at")
    cooldown_s: float = Field(600.0, ge=0, description="seconds between two moves")

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.tolerance >= self.trigger:
            msg = (
                f"balance.tolerance ({self.tolerance}) must be below balance.trigger "
                f"({self.trigger}): a move aims below the imbalance that starts it"
            )
            raise ValueError(msg)
        if self.window_events < self.min_events:
            msg = (
                f"balance.window_events ({self.window_events}) must be at least "
                f"balance.min_events ({self.min_events})"
            )
            raise ValueError(msg)
        return self


class LoadBalancer:
    """Decides, from the router's cumulative load per key group, when to move which groups.

    Call :meth:`observe` every ``check_every_s`` with the router's load counters and its
    assignment; it returns a new assignment to hand over to, or None. Call :meth:`changed`
    once a hand-off is done. The counters only ever grow within one router; a smaller value
    means the router restarted, and the sample starts again.
    """

    def __init__(self, policy: BalancePolicy | None = None) -> None:
        self.policy = policy if policy is not None else BalancePolicy()
        self._base: npt.NDArray[np.float64] | None = None
        self._changed_at: float | None = None
        self.last: dict[str, float] = {}
        """The latest judgement: events sampled, imbalance now and under the plan."""

    def observe(
        self, now: float, assignment: Assignment, load: npt.NDArray[Any] | list[int]
    ) -> Assignment | None:
        """A better assignment for the load since the last change, or None to keep this one."""
        counts = np.asarray(load, dtype=np.float64)
        if self._base is None or self._base.shape != counts.shape or np.any(counts < self._base):
            self._base = np.zeros_like(counts)
        recent = counts - self._base
        sampled = float(recent.sum())
        policy = self.policy
        if len(assignment.shards) < 2 or sampled < policy.min_events:
            return None
        if self._changed_at is not None and now - self._changed_at < policy.cooldown_s:
            return None
        current = imbalance(assignment, recent)
        self.last = {"events": sampled, "imbalance": current, "planned": current}
        planned: Assignment | None = None
        if current > policy.trigger:
            plan = assignment.balance_load(recent, tolerance=policy.tolerance)
            after = imbalance(plan, recent)
            self.last["planned"] = after
            # A plan that only shaves a little off is not worth a pause: one heavy key group
            # (a single hot tenant) can bound what any assignment achieves.
            if plan is not assignment and after <= current - (current - 1.0) / 2:
                planned = plan
        if planned is None and sampled >= policy.window_events:
            self._base = counts.copy()
        return planned

    def changed(self, now: float, load: npt.NDArray[Any] | list[int]) -> None:
        """A hand-off finished at ``now``: judge the next one on traffic from here on."""
        self._changed_at = now
        self._base = np.asarray(load, dtype=np.float64).copy()
