"""Load-aware key-group plans: spread measured work, not key-group counts, over shards. Pure.

Round-robin key groups give every shard the same number of groups, but not the same work:
a rule grouped by the tenant alone keeps each tenant's events on one key group, so with
skewed (Zipf) tenants one group can carry a fifth of all traffic. A plan routes a sample of
the user's own history through a :class:`~rayworker.partition.Partitioner`, reads the load
of every key group, and moves as few groups as it must so that no shard carries much more
than the mean (:meth:`~rayworker.routing.Assignment.balance_load`). A pipeline started with
``assignment_path`` uses the plan instead of round-robin.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rayworker.detect import DetectorConfig
from rayworker.errors import ConfigError
from rayworker.partition import Partitioner
from rayworker.routing import Assignment
from rayworker.rules import Overrides, RulePack

__all__ = ["ShardPlan", "imbalance", "plan_shards", "read_assignment", "write_assignment"]


@dataclass(frozen=True, slots=True)
class ShardPlan:
    """A planned assignment with the load it was planned from."""

    assignment: Assignment
    load: npt.NDArray[np.int64]
    """Event copies per key group in the sample."""
    before: float
    """max/mean load per shard under round-robin key groups."""
    after: float
    """max/mean load per shard under the plan."""
    moved: int
    """Key groups that moved away from round-robin."""


def imbalance(assignment: Assignment, load: npt.NDArray[np.number[Any]]) -> float:
    """max/mean load per shard (1.0 is perfect) under ``assignment``."""
    owner = np.asarray(assignment.owner, dtype=np.int64)
    shards = np.asarray(assignment.shards, dtype=np.int64)
    per_shard = np.array([load[owner == s].sum() for s in shards], dtype=np.float64)
    mean = per_shard.mean()
    return float(per_shard.max() / mean) if mean > 0 else 1.0


def plan_shards(
    batches: Iterable[list[bytes]],
    pack: RulePack,
    *,
    shards: int,
    groups: int,
    overrides: Overrides | None = None,
    config: DetectorConfig | None = None,
    tolerance: float = 1.05,
) -> ShardPlan:
    """Route ``batches`` of sample events and plan key groups so shard loads even out."""
    base = Assignment.balanced(shards, groups=groups)
    # The sample is history: timestamps far in the past must not count as late or future.
    screen = config if config is not None else DetectorConfig()
    screen = DetectorConfig(
        allowed_lateness_s=screen.allowed_lateness_s,
        suppression_s=screen.suppression_s,
        max_future_s=None,
        evidence_cap=screen.evidence_cap,
        naive_timestamps=screen.naive_timestamps,
    )
    partitioner = Partitioner(pack, base, screen, overrides=overrides)
    start = 0
    for lines in batches:
        partitioner.split_lines(lines, start_index=start)
        start += len(lines)
    load = partitioner.load.copy()
    planned = base.balance_load(load, tolerance=tolerance)
    return ShardPlan(
        planned, load, imbalance(base, load), imbalance(planned, load), len(base.moves(planned))
    )


def write_assignment(plan: ShardPlan, path: Path) -> None:
    """Save a plan as JSON that :func:`read_assignment` (and ``assignment_path``) reads."""
    data = {**plan.assignment.to_json(), "planned_from_events": int(plan.load.sum())}
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def read_assignment(path: Path, *, shards: int, groups: int) -> Assignment:
    """The assignment saved at ``path``, checked against the cluster's shards and key groups."""
    where = f"assignment_path ({path}, RAYWORKER_ASSIGNMENT_PATH)"
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        msg = f"{where}: cannot read it: {exc.strerror}; fix the path or unset it"
        raise ConfigError(msg) from None
    except ValueError as exc:
        msg = f"{where}: not JSON ({exc}); write it with `rayworker shards plan`"
        raise ConfigError(msg) from None
    if isinstance(data, dict):
        data.pop("planned_from_events", None)
    try:
        assignment = Assignment.from_json(data)
    except ValueError as exc:
        msg = f"{where}: {exc}; write it with `rayworker shards plan`"
        raise ConfigError(msg) from None
    if assignment.groups != groups:
        msg = (
            f"{where}: planned for {assignment.groups} key groups, but key_groups is {groups}; "
            "plan again with the cluster's key_groups (they are fixed at cluster creation)"
        )
        raise ConfigError(msg)
    outside = sorted(s for s in assignment.shards if not 0 <= s < shards)
    if outside:
        msg = (
            f"{where}: names shards {outside} but shards is {shards}; plan again with "
            f"--shards {shards} or raise shards"
        )
        raise ConfigError(msg)
    return assignment
