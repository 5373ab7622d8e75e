"""Moving detector state between shards, by key group. Pure; no Ray.

Scaling a pipeline moves whole key groups from one shard to another
(:meth:`rayworker.routing.Assignment.rebalance`). Each (rule, key) of a detector's state lives
in exactly one key group, the one :func:`rayworker.routing.key_group` gives for the key
``[tenant, *group values]``, which is how the router chose the shard that holds it. So a
detector snapshot can be split by key group: :func:`split_state` cuts out the keys of the
groups that leave a shard, and :func:`merge_states` folds them into the snapshot of the shard
that takes them over. Both work on the plain data of :meth:`rayworker.detect.Detector.snapshot`,
so a hand-off is snapshot -> split -> restore on the giver and snapshot -> merge -> restore on
the taker, and it is exactly as faithful as a checkpoint restore.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from rayworker.errors import StateError
from rayworker.routing import key_group

__all__ = ["merge_states", "split_state"]

_FORMAT = "rayworker.detector"


def split_state(
    snapshot: dict[str, Any], moving: Collection[int], *, groups: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(kept, moved)``: the snapshot without the keys of the ``moving`` key groups, and a
    snapshot of only those keys (``groups``: the pipeline's number of key groups).

    Both halves keep the rules' versions and sweep counters; ``moved`` carries the event-time
    watermarks of the tenants its keys belong to, ``kept`` all of them (the giver may still
    hold other keys of those tenants).
    """
    _check(snapshot)
    leaving = frozenset(moving)
    kept_rules: dict[str, Any] = {}
    moved_rules: dict[str, Any] = {}
    tenants: set[str] = set()
    for rule_id, data in snapshot["rules"].items():
        kept_keys, moved_keys = _partition(data["keys"], leaving, groups, tenants)
        kept_open, moved_open = _partition(data["open"], leaving, groups, tenants)
        base = {k: v for k, v in data.items() if k not in ("keys", "open")}
        kept_rules[rule_id] = {**base, "keys": kept_keys, "open": kept_open}
        moved_rules[rule_id] = {**base, "keys": moved_keys, "open": moved_open}
    max_seen = snapshot.get("max_seen", {})
    kept = {**snapshot, "rules": kept_rules}
    moved = {
        **snapshot,
        "rules": moved_rules,
        "max_seen": {t: w for t, w in max_seen.items() if t in tenants},
        "integrity": [],
    }
    return kept, moved


def merge_states(snapshots: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One snapshot holding every key of ``snapshots``, which must come from detectors of the
    same rules and settings and hold disjoint keys (different key groups)."""
    if not snapshots:
        msg = "merge_states needs at least one snapshot"
        raise StateError(msg)
    for snapshot in snapshots:
        _check(snapshot)
    first = snapshots[0]
    for snapshot in snapshots[1:]:
        if snapshot.get("lateness_us") != first.get("lateness_us"):
            msg = (
                "cannot merge detector states with different allowed lateness "
                f"({first.get('lateness_us')} vs {snapshot.get('lateness_us')} us); "
                "every shard of a pipeline must run the same settings"
            )
            raise StateError(msg)
    integrity = [s["integrity"] for s in snapshots if s.get("integrity")]
    if len(integrity) > 1:
        msg = "cannot merge two detectors' integrity state; only the router verifies events"
        raise StateError(msg)
    rules: dict[str, Any] = {}
    for snapshot in snapshots:
        for rule_id, data in snapshot["rules"].items():
            merged = rules.get(rule_id)
            if merged is None:
                rules[rule_id] = {**data, "keys": list(data["keys"]), "open": list(data["open"])}
                continue
            if merged.get("version") != data.get("version"):
                msg = (
                    f"rule {rule_id!r} has version {merged.get('version')} on one shard and "
                    f"{data.get('version')} on another; hand off only between shards that "
                    "run the same rules"
                )
                raise StateError(msg)
            merged["keys"].extend(data["keys"])
            merged["open"].extend(data["open"])
            merged["events_since_sweep"] = max(
                int(merged.get("events_since_sweep", 0)), int(data.get("events_since_sweep", 0))
            )
    for rule_id, data in rules.items():
        seen: set[tuple[str, ...]] = set()
        for key, _ in data["keys"]:
            marker = tuple(repr(v) for v in key)
            if marker in seen:
                msg = (
                    f"rule {rule_id!r}: key {key!r} is held by two shards; a key group must "
                    "have one owner, so these states cannot be merged"
                )
                raise StateError(msg)
            seen.add(marker)
    max_seen: dict[str, int] = {}
    for snapshot in snapshots:
        for tenant, watermark in snapshot.get("max_seen", {}).items():
            max_seen[tenant] = max(int(watermark), max_seen.get(tenant, int(watermark)))
    return {
        **first,
        "rules": rules,
        "max_seen": max_seen,
        "integrity": integrity[0] if integrity else [],
    }


def _partition(
    entries: Sequence[Sequence[Any]], leaving: frozenset[int], groups: int, tenants: set[str]
) -> tuple[list[Any], list[Any]]:
    """Entries whose key (their first element) stays, and those whose key group leaves."""
    stay: list[Any] = []
    go: list[Any] = []
    for entry in entries:
        key = entry[0]
        if key_group(key[0], key[1:], groups=groups) in leaving:
            go.append(entry)
            tenants.add(key[0])
        else:
            stay.append(entry)
    return stay, go


def _check(snapshot: dict[str, Any]) -> None:
    if snapshot.get("format") != _FORMAT or not isinstance(snapshot.get("rules"), dict):
        msg = f"not a detector snapshot (missing format {_FORMAT!r} or its rules)"
        raise StateError(msg)
