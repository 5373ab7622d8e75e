"""Routing: (tenant, group values) -> key group -> shard. Pure; no Ray.

State is partitioned into a fixed number of *key groups* (default 256, fixed when a cluster is
created; the idea comes from Flink). An event's key group for a rule is a stable hash of its
tenant and the values of the rule's ``group_by``. Shards own sets of key groups, so:

* a hot tenant spreads over many shards (its principals hash to many key groups) instead of
  pinning one;
* rebalancing moves whole key groups, and only as many as it must;
* the hash is xxh3-64 over a canonical JSON encoding of ``[tenant, *values]``: the same in
  every process and Python version (never ``hash()``), and ``"1"``, ``1`` and ``true`` differ.

An :class:`Assignment` (key group -> shard, with a version) is plain data, so it can be
persisted and found again by a restarted router.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import xxhash

__all__ = ["DEFAULT_KEY_GROUPS", "MAX_KEY_GROUPS", "Assignment", "key_group", "key_groups", "route"]

DEFAULT_KEY_GROUPS = 256
MAX_KEY_GROUPS = 65_536

_encode = msgspec.json.Encoder().encode


def key_group(tenant: str, values: Sequence[object], *, groups: int = DEFAULT_KEY_GROUPS) -> int:
    """The key group of a (tenant, group values) key."""
    return xxhash.xxh3_64_intdigest(_encode([tenant, *values])) % groups


def key_groups(
    tenants: Sequence[str],
    columns: Sequence[Sequence[object]],
    *,
    groups: int = DEFAULT_KEY_GROUPS,
) -> npt.NDArray[np.int32]:
    """The key group of every event, given its tenant and its group-by columns."""
    digest = xxhash.xxh3_64_intdigest
    out = [
        digest(_encode([tenant, *row])) % groups
        for tenant, *row in zip(tenants, *columns, strict=True)
    ]
    return np.array(out, dtype=np.int32)


@dataclass(frozen=True)
class Assignment:
    """Which shard owns each key group, and a version that grows with every change."""

    groups: int
    owner: tuple[int, ...]
    version: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.groups <= MAX_KEY_GROUPS:
            msg = f"groups: got {self.groups}; use 1..{MAX_KEY_GROUPS} (default 256)"
            raise ValueError(msg)
        if len(self.owner) != self.groups:
            msg = (
                f"owner: got {len(self.owner)} entries for {self.groups} key groups; "
                "give one shard per key group"
            )
            raise ValueError(msg)
        if any(shard < 0 for shard in self.owner):
            msg = "owner: shard ids must be >= 0"
            raise ValueError(msg)
        if self.version < 0:
            msg = f"version: got {self.version}; use >= 0"
            raise ValueError(msg)

    @classmethod
    def balanced(cls, shards: int, groups: int = DEFAULT_KEY_GROUPS) -> Assignment:
        """Key groups dealt round-robin over shards 0..shards-1 (sizes differ by at most 1)."""
        if shards < 1:
            msg = f"shards: got {shards}; use at least 1"
            raise ValueError(msg)
        return cls(groups, tuple(g % shards for g in range(groups)))

    @property
    def shards(self) -> tuple[int, ...]:
        """The shards that own at least one key group, in order."""
        return tuple(sorted(set(self.owner)))

    def shard_of(self, group: int) -> int:
        """The shard that owns a key group."""
        return self.owner[group]

    def groups_of(self, shard: int) -> tuple[int, ...]:
        """The key groups a shard owns."""
        return tuple(g for g, s in enumerate(self.owner) if s == shard)

    def rebalance(self, shards: Sequence[int]) -> Assignment:
        """Spread the key groups over ``shards``, moving as few groups as possible.

        Each shard ends with floor or ceil of groups/len(shards). Leaving shards give away all
        their groups; staying shards keep what they have up to their target; joining shards
        take only what they need.
        """
        wanted = sorted(set(shards))
        if not wanted or any(s < 0 for s in wanted):
            msg = f"shards: got {list(shards)}; give at least one shard id >= 0"
            raise ValueError(msg)
        base, extra = divmod(self.groups, len(wanted))
        current = {s: list(self.groups_of(s)) for s in wanted}
        # Shards that already hold more keep the larger targets, to move less.
        by_size = sorted(wanted, key=lambda s: (-len(current[s]), s))
        target = {s: base + (1 if i < extra else 0) for i, s in enumerate(by_size)}
        owner = list(self.owner)
        spare: list[int] = [g for g, s in enumerate(owner) if s not in target]
        for shard in wanted:
            surplus = len(current[shard]) - target[shard]
            if surplus > 0:
                spare.extend(current[shard][-surplus:])
        spare.sort()
        for shard in wanted:
            need = target[shard] - len(current[shard])
            for _ in range(max(0, need)):
                owner[spare.pop()] = shard
        return Assignment(self.groups, tuple(owner), self.version + 1)

    def moves(self, other: Assignment) -> dict[int, tuple[int, int]]:
        """Key groups whose owner differs in ``other``: group -> (from, to)."""
        if other.groups != self.groups:
            msg = f"groups: {self.groups} vs {other.groups}; key groups are fixed per cluster"
            raise ValueError(msg)
        return {
            g: (a, b)
            for g, (a, b) in enumerate(zip(self.owner, other.owner, strict=True))
            if a != b
        }

    def to_json(self) -> dict[str, Any]:
        """Plain data, to persist the assignment."""
        return {"groups": self.groups, "owner": list(self.owner), "version": self.version}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Assignment:
        """An assignment from :meth:`to_json` output."""
        try:
            return cls(
                int(data["groups"]), tuple(int(s) for s in data["owner"]), int(data["version"])
            )
        except (KeyError, TypeError) as exc:
            msg = f"assignment data is incomplete ({exc}); expected groups, owner and version"
            raise ValueError(msg) from exc


def route(
    assignment: Assignment,
    tenants: Sequence[str],
    signatures: Sequence[Sequence[Sequence[object]]],
) -> dict[int, npt.NDArray[np.intp]]:
    """For each shard, the indices of the events it must receive, in arrival order.

    ``signatures`` lists, for each distinct ``group_by`` among the enabled rules, its columns
    (one per-event value list per field; no columns means the tenant alone). An event goes to
    the shard owning its key group under every signature.
    """
    owner = np.asarray(assignment.owner, dtype=np.int32)
    n = len(tenants)
    targets: list[npt.NDArray[np.int32]] = []
    for columns in signatures:
        groups = (
            key_groups(tenants, columns, groups=assignment.groups)
            if n
            else np.zeros(0, dtype=np.int32)
        )
        targets.append(owner[groups])
    out: dict[int, npt.NDArray[np.intp]] = {}
    if not targets:
        return out
    stacked = np.stack(targets)
    for shard in np.unique(stacked).tolist():
        out[int(shard)] = np.flatnonzero((stacked == shard).any(axis=0))
    return out
