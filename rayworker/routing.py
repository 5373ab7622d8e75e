"""Routing: (tenant, group values) -> key group -> shard. Pure; no Ray.

State is partitioned into a fixed number of *key groups* (default 256, chosen when a cluster
is created and never changed afterwards; the idea comes from Flink). Three steps:

1. **Key -> key group.** A rule keeps state per (tenant, values of its ``group_by``). That key
   hashes to ``xxh3_64(canonical JSON of [tenant, *values]) % groups``. The hash is stable
   across processes, machines and Python versions (``hash()`` is salted per process, so it is
   never used), and the JSON encoding keeps types apart: ``"1"``, ``1``, ``1.0``, ``true`` and
   ``null`` are five different keys, and the tenant is part of every key.
2. **Key group -> shard.** An :class:`Assignment` maps every key group to exactly one shard.
   It is versioned plain data, so a router can persist it and a restarted router can load it.
3. **Event -> shards.** Rules with the same ``group_by`` share a *signature*. An event goes to
   the shard that owns its key group under each distinct signature among the enabled rules
   (:func:`route`). The empty signature means "the tenant alone".

Why this shape:

* **Hot tenants spread.** A tenant's keys include its principals, addresses and so on, so one
  busy tenant hashes to many key groups and lands on many shards, instead of pinning one.
  Only rules grouped by the tenant alone keep a tenant on one shard.
* **Rebalancing moves whole key groups, and as few as possible.** Shards own key groups, not
  keys, so moving state is moving a few whole groups. :meth:`Assignment.rebalance` keeps
  every shard at floor or ceil of ``groups / shards`` and moves the minimum number of groups:
  leaving shards give all of theirs away, joining shards take only what they need, and only
  from shards above their new share.
* **The hash never changes.** A different hash would put state on the wrong shard after an
  upgrade; the unit tests pin a few hash values so such a change cannot go unnoticed.

Group values are JSON values as the event decoder produces them: ``str``, ``int``, finite
``float``, ``bool``, ``None``, and ``list`` or ``dict`` (dict keys are sorted before
hashing). Anything else (``bytes``, NumPy scalars, NaN) raises :class:`ValueError`, because
its JSON form would be ambiguous or missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import xxhash

__all__ = [
    "DEFAULT_KEY_GROUPS",
    "MAX_KEY_GROUPS",
    "MAX_SHARD_ID",
    "Assignment",
    "key_group",
    "key_groups",
    "route",
]

DEFAULT_KEY_GROUPS = 256
MAX_KEY_GROUPS = 65_536
MAX_SHARD_ID = 2**31 - 1

_encode = msgspec.json.Encoder(order="sorted").encode
_digest = xxhash.xxh3_64_intdigest
# Exact types only: msgspec would encode bytes, datetimes and UUIDs as JSON strings (colliding
# with real strings), and refuses NumPy scalars.
_VALUE_TYPES = frozenset({str, int, float, bool, type(None), list, dict})
_JSON_FIELDS = ("groups", "owner", "version")


def key_group(tenant: str, values: Sequence[object], *, groups: int = DEFAULT_KEY_GROUPS) -> int:
    """The key group, in ``[0, groups)``, of the key (``tenant``, ``values``)."""
    _check_groups(groups, "groups")
    _check_tenants([tenant], "tenant")
    for i, value in enumerate(values):
        _check_values([value], f"values[{i}]")
    return int(_digest(_encode([tenant, *values])) % groups)


def key_groups(
    tenants: Sequence[str],
    columns: Sequence[Sequence[object]],
    *,
    groups: int = DEFAULT_KEY_GROUPS,
) -> npt.NDArray[np.int32]:
    """Each event's key group, given its tenant and its group-by columns.

    ``columns[j][i]`` is event ``i``'s value for the ``j``-th group-by field; element ``i`` of
    the result equals ``key_group(tenants[i], [c[i] for c in columns], groups=groups)``.
    """
    _check_groups(groups, "groups")
    n = len(tenants)
    _check_tenants(tenants, "tenants")
    for j, column in enumerate(columns):
        if len(column) != n:
            msg = f"columns[{j}]: got {len(column)} values for {n} tenants; give one per event"
            raise ValueError(msg)
        _check_values(column, f"columns[{j}]")
    # zip yields (tenant, v1, v2, ...) tuples, which encode exactly like [tenant, *values].
    digests = np.fromiter(
        map(_digest, map(_encode, zip(tenants, *columns, strict=True))), np.uint64, count=n
    )
    return (digests % np.uint64(groups)).astype(np.int32)


@dataclass(frozen=True, repr=False)
class Assignment:
    """Which shard owns each key group (``owner[group]``), and a version that grows on change.

    Shards are non-negative integer ids; they need not be contiguous. Build one with
    :meth:`balanced`, change it with :meth:`rebalance`, persist it with :meth:`to_json`.
    """

    groups: int
    owner: tuple[int, ...]
    version: int = 0

    def __post_init__(self) -> None:
        _check_groups(self.groups, "groups")
        if not isinstance(self.owner, tuple):
            msg = (
                f"owner: got a {type(self.owner).__name__}; pass a tuple of shard ids "
                "(Assignment.from_json accepts a list)"
            )
            raise ValueError(msg)
        if len(self.owner) != self.groups:
            msg = (
                f"owner: got {len(self.owner)} entries for {self.groups} key groups; "
                "give exactly one shard id per key group"
            )
            raise ValueError(msg)
        if not set(map(type, self.owner)) <= {int}:
            bad = next(s for s in self.owner if type(s) is not int)
            msg = f"owner: got a {type(bad).__name__} ({bad!r}); shard ids are ints"
            raise ValueError(msg)
        if not 0 <= min(self.owner) <= max(self.owner) <= MAX_SHARD_ID:
            msg = (
                f"owner: shard ids range over {min(self.owner)}..{max(self.owner)}; "
                f"use ids in 0..{MAX_SHARD_ID}"
            )
            raise ValueError(msg)
        if type(self.version) is not int or self.version < 0:
            msg = f"version: got {self.version!r}; use an int >= 0"
            raise ValueError(msg)

    def __repr__(self) -> str:
        # The owner tuple can hold 65,536 entries: summarise it.
        shards = self.shards
        return (
            f"Assignment(groups={self.groups}, shards={len(shards)} "
            f"[{shards[0]}..{shards[-1]}], version={self.version})"
        )

    @classmethod
    def balanced(cls, shards: int, *, groups: int = DEFAULT_KEY_GROUPS) -> Assignment:
        """Key groups dealt round-robin over shards ``0..shards-1``; sizes differ by at most 1.

        With more shards than key groups, the shards beyond ``groups`` own nothing.
        """
        if type(shards) is not int or not 1 <= shards <= MAX_SHARD_ID + 1:
            msg = f"shards: got {shards!r}; use an int >= 1 (the number of shards)"
            raise ValueError(msg)
        _check_groups(groups, "groups")
        return cls(groups, tuple(g % shards for g in range(groups)))

    @property
    def shards(self) -> tuple[int, ...]:
        """The shards that own at least one key group, ascending."""
        return tuple(sorted(set(self.owner)))

    def shard_of(self, group: int) -> int:
        """The shard that owns key group ``group``."""
        if type(group) is not int or not 0 <= group < self.groups:
            msg = f"group: got {group!r}; key groups are ints in 0..{self.groups - 1}"
            raise ValueError(msg)
        return self.owner[group]

    def groups_of(self, shard: int) -> tuple[int, ...]:
        """The key groups ``shard`` owns, ascending (empty if it owns none)."""
        return tuple(g for g, s in enumerate(self.owner) if s == shard)

    def rebalance(self, shards: Sequence[int]) -> Assignment:
        """Spread all key groups over ``shards``, moving as few groups as possible.

        Every shard in ``shards`` ends with floor or ceil of ``groups / len(set(shards))``
        groups; the larger shares go to the shards that already hold the most. Shards not in
        ``shards`` give away all their groups; the others keep what they hold up to their
        share and give away only the rest; shards below their share take only what they
        need. The version grows by one.
        """
        wanted = sorted(set(shards))
        if not wanted or not all(type(s) is int and 0 <= s <= MAX_SHARD_ID for s in wanted):
            msg = f"shards: got {list(shards)!r}; give at least one shard id in 0..{MAX_SHARD_ID}"
            raise ValueError(msg)
        held: dict[int, list[int]] = {}
        for group, shard in enumerate(self.owner):
            held.setdefault(shard, []).append(group)
        base, extra = divmod(self.groups, len(wanted))
        by_size = sorted(wanted, key=lambda s: (-len(held.get(s, ())), s))
        share = {s: base + (1 if rank < extra else 0) for rank, s in enumerate(by_size)}
        spare: list[int] = []
        for shard, owned in held.items():
            spare.extend(owned[share.get(shard, 0) :])
        spare.sort(reverse=True)
        owner = list(self.owner)
        for shard in wanted:
            for _ in range(share[shard] - len(held.get(shard, ()))):
                owner[spare.pop()] = shard
        return Assignment(self.groups, tuple(owner), self.version + 1)

    def balance_load(
        self, loads: Sequence[float] | npt.NDArray[np.number[Any]], *, tolerance: float = 1.05
    ) -> Assignment:
        """Move key groups off the busiest shards until none carries more than ``tolerance``
        times the mean load, moving one group at a time and as few as it can.

        ``loads[g]`` is key group ``g``'s measured load (e.g. events routed to it per
        signature, from :attr:`~rayworker.partition.Partitioner.load`). Each step moves, from
        the busiest shard to the idlest, the group that brings the two closest to even; it
        stops when the target is met or no single move lowers the busiest shard. Count-based
        :meth:`rebalance` spreads groups evenly; this spreads work evenly when tenants are
        skewed (a Zipf-hot tenant's tenant-only key is one heavy group). The shards stay the
        ones that own groups now; the version grows by one if anything moved.
        """
        weights = np.asarray(loads, dtype=np.float64)
        if (
            weights.shape != (self.groups,)
            or not np.all(np.isfinite(weights))
            or (weights.size and weights.min() < 0)
        ):
            msg = (
                f"loads: got {weights.shape[0] if weights.ndim == 1 else weights.shape} "
                f"values; give one finite load >= 0 per key group ({self.groups})"
            )
            raise ValueError(msg)
        if not tolerance >= 1.0:
            msg = f"tolerance: got {tolerance!r}; use a max/mean ratio >= 1.0, e.g. 1.05"
            raise ValueError(msg)
        shards = list(self.shards)
        owner = np.asarray(self.owner, dtype=np.int64)
        per_shard = {s: float(weights[owner == s].sum()) for s in shards}
        mean = sum(per_shard.values()) / len(shards)
        moved = False
        for _ in range(self.groups):
            hot = max(shards, key=lambda s: (per_shard[s], -s))
            cold = min(shards, key=lambda s: (per_shard[s], s))
            gap = per_shard[hot] - per_shard[cold]
            if per_shard[hot] <= tolerance * mean or gap <= 0:
                break
            # A group of weight w moved hot -> cold helps iff 0 < w < gap, and evens the two
            # best at w = gap / 2. Ties go to the lowest group id, so plans are reproducible.
            movable = np.flatnonzero((owner == hot) & (weights > 0) & (weights < gap))
            if len(movable) == 0:
                break
            best = int(movable[np.argmin(np.abs(weights[movable] - gap / 2))])
            owner[best] = cold
            per_shard[hot] -= float(weights[best])
            per_shard[cold] += float(weights[best])
            moved = True
        if not moved:
            return self
        return Assignment(self.groups, tuple(owner.tolist()), self.version + 1)

    def moves(self, other: Assignment) -> dict[int, tuple[int, int]]:
        """The key groups whose owner differs in ``other``: ``group -> (from, to)``."""
        if other.groups != self.groups:
            msg = (
                f"groups: {self.groups} here, {other.groups} in other; key groups are fixed "
                "when a cluster is created, so compare assignments of the same cluster"
            )
            raise ValueError(msg)
        return {
            g: (a, b)
            for g, (a, b) in enumerate(zip(self.owner, other.owner, strict=True))
            if a != b
        }

    def to_json(self) -> dict[str, Any]:
        """Plain, JSON-ready data to persist the assignment; :meth:`from_json` reads it back."""
        return {"groups": self.groups, "owner": list(self.owner), "version": self.version}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Assignment:
        """The assignment that :meth:`to_json` returned (types are checked, not coerced)."""
        if not isinstance(data, Mapping):
            msg = f"assignment: got a {type(data).__name__}; expected the dict from to_json()"
            raise ValueError(msg)
        missing = [f for f in _JSON_FIELDS if f not in data]
        unknown = sorted(str(k) for k in data if k not in _JSON_FIELDS)
        if missing or unknown:
            msg = (
                f"assignment: missing {missing}, unknown {unknown}; "
                f"expected exactly the fields {list(_JSON_FIELDS)} from to_json()"
            )
            raise ValueError(msg)
        owner = data["owner"]
        if not isinstance(owner, list | tuple):
            msg = f"owner: got a {type(owner).__name__}; expected a list of shard ids"
            raise ValueError(msg)
        return cls(data["groups"], tuple(owner), data["version"])


def route(
    assignment: Assignment,
    tenants: Sequence[str],
    signatures: Sequence[Sequence[Sequence[object]]],
) -> dict[int, npt.NDArray[np.intp]]:
    """For each shard, the indices of the events it must receive.

    ``tenants[i]`` is event ``i``'s tenant. ``signatures`` holds one entry per distinct
    ``group_by`` among the enabled rules: its columns, each a per-event value list (no
    columns means the tenant alone). Event ``i`` goes to the owner of its key group under
    every signature, and to no other shard. Each shard's indices are ascending (arrival
    order) and unique; shards that receive nothing are left out.
    """
    n = len(tenants)
    keys: list[npt.NDArray[np.int64]] = []
    shard_ids, dense = np.unique(np.asarray(assignment.owner, dtype=np.int64), return_inverse=True)
    positions = np.arange(n, dtype=np.int64)
    for i, columns in enumerate(signatures):
        try:
            groups = key_groups(tenants, columns, groups=assignment.groups)
        except ValueError as exc:
            msg = f"signatures[{i}]: {exc}"
            raise ValueError(msg) from exc
        # One int per (shard, event): sorting them sorts by shard, then arrival order.
        keys.append(dense[groups].astype(np.int64) * n + positions)
    if not keys or n == 0:
        return {}
    flat = np.sort(np.concatenate(keys))
    flat = flat[np.diff(flat, prepend=-1) != 0]  # an event sent twice to one shard goes once
    shard_rank = flat // n
    index = (flat - shard_rank * n).astype(np.intp)
    starts = np.flatnonzero(np.diff(shard_rank, prepend=-1))
    stops = np.append(starts[1:], len(flat))
    return {
        int(shard_ids[shard_rank[start]]): index[start:stop]
        for start, stop in zip(starts.tolist(), stops.tolist(), strict=True)
    }


def _check_groups(groups: object, field: str) -> None:
    if type(groups) is not int or not 1 <= groups <= MAX_KEY_GROUPS:
        msg = (
            f"{field}: got {groups!r}; use an int in 1..{MAX_KEY_GROUPS} "
            f"(default {DEFAULT_KEY_GROUPS}, fixed when the cluster is created)"
        )
        raise ValueError(msg)


def _check_tenants(tenants: Sequence[object], field: str) -> None:
    if not set(map(type, tenants)) <= {str}:
        at, bad = next((i, t) for i, t in enumerate(tenants) if type(t) is not str)
        msg = f"{field}: got a {type(bad).__name__} at position {at}; tenants are str"
        raise ValueError(msg)


def _check_values(column: Sequence[object], field: str) -> None:
    kinds = set(map(type, column))
    if not kinds <= _VALUE_TYPES:
        at, bad = next((i, v) for i, v in enumerate(column) if type(v) not in _VALUE_TYPES)
        msg = (
            f"{field}: got a {type(bad).__name__} at position {at}; group values must be "
            "JSON values (str, int, float, bool, None, list or dict): convert it first"
        )
        raise ValueError(msg)
    if float in kinds:
        for at, value in enumerate(column):
            if type(value) is float and not math.isfinite(value):
                msg = (
                    f"{field}: got {value} at position {at}; NaN and infinities have no "
                    "JSON form (they would hash like None): drop or replace them first"
                )
                raise ValueError(msg)
