"""When to add or remove detector shards, from the consumer lag. Pure; no Ray.

The pipeline keeps up when its consumer group's lag (entries not yet acknowledged) stays
small. :class:`Autoscaler` turns lag samples into scale decisions that an operator can
predict: scale up by ``step`` once the lag has stayed at or above ``scale_up_lag`` for
``sustain_s``, scale down by ``step`` once it has stayed at or below ``scale_down_lag`` for
``sustain_s``, never beyond ``min_shards``..``max_shards``, and never twice within
``cooldown_s`` (a hand-off briefly raises the lag itself, which must not trigger the next
one). An unknown lag resets both timers rather than being taken for zero. It is off by
default: moving state costs a pause, and a fleet's owners should opt in.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["AutoscalePolicy", "Autoscaler"]


class AutoscalePolicy(BaseModel):
    """The automatic scaling policy (settings ``autoscale.*``); off by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    min_shards: int = Field(1, ge=1, description="never fewer shards than this")
    max_shards: int = Field(8, ge=1, description="never more shards than this")
    scale_up_lag: int = Field(
        50_000, ge=1, description="entries behind that, sustained, add shards"
    )
    scale_down_lag: int = Field(
        1_000, ge=0, description="entries behind that, sustained, remove shards"
    )
    sustain_s: float = Field(30.0, ge=0, description="how long the lag must stay past a bound")
    cooldown_s: float = Field(120.0, ge=0, description="seconds between two scale changes")
    step: int = Field(1, ge=1, description="shards added or removed per decision")
    check_every_s: float = Field(5.0, gt=0, description="how often the lag is sampled")

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_shards > self.max_shards:
            msg = (
                f"min_shards ({self.min_shards}) is above max_shards ({self.max_shards}); "
                "raise max_shards or lower min_shards"
            )
            raise ValueError(msg)
        if self.scale_down_lag >= self.scale_up_lag:
            msg = (
                f"scale_down_lag ({self.scale_down_lag}) must be below scale_up_lag "
                f"({self.scale_up_lag}), or the pipeline would scale up and down in turn"
            )
            raise ValueError(msg)
        return self


class Autoscaler:
    """Feeds on lag samples (:meth:`observe`); says when to change the number of shards."""

    def __init__(self, policy: AutoscalePolicy) -> None:
        self.policy = policy
        self._high_since: float | None = None
        self._low_since: float | None = None
        self._changed_at: float | None = None

    def observe(self, now: float, lag: int | None, shards: int) -> int | None:
        """The number of shards to scale to at time ``now`` (seconds, monotonic), given the
        lag then and the current number of shards; None: leave it."""
        policy = self.policy
        cooling = self._changed_at is not None and now - self._changed_at < policy.cooldown_s
        if lag is None or cooling:
            # Lag seen while a hand-off settles says little about the new layout.
            self._high_since = self._low_since = None
            return None
        if lag < policy.scale_up_lag:
            self._high_since = None
        elif self._high_since is None:
            self._high_since = now
        if lag > policy.scale_down_lag:
            self._low_since = None
        elif self._low_since is None:
            self._low_since = now
        target: int | None = None
        if self._high_since is not None and now - self._high_since >= policy.sustain_s:
            target = min(shards + policy.step, policy.max_shards)
        elif self._low_since is not None and now - self._low_since >= policy.sustain_s:
            target = max(shards - policy.step, policy.min_shards)
        if target is None and not policy.min_shards <= shards <= policy.max_shards:
            target = min(max(shards, policy.min_shards), policy.max_shards)
        if target is None or target == shards:
            return None
        return target

    def changed(self, now: float) -> None:
        """A rescale finished at ``now``: the cooldown starts and the lag is watched anew."""
        self._changed_at = now
        self._high_since = self._low_since = None
