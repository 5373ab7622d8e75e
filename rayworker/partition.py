"""The router's pure half: screen a batch once, then split it into per-shard batches.

Only a router sees all of a tenant's events, so it alone can decide what is late: it decodes
and validates each batch, rejects future-dated events, advances every tenant's watermark,
reports late events and counts events (each exactly once, however many shards an event goes
to). Then it routes every usable event to the shard owning its key group under each distinct
rule signature (:func:`rayworker.routing.route`), with a bit mask saying which signatures
that shard owns it under. A shard's :meth:`~rayworker.detect.Detector.process_routed` runs
only those rules on it, so every (rule, key) lives on exactly one shard and the union of the
shards' alerts is what one detector over the whole stream would give.

A :class:`ShardBatch` is columnar: one bytes blob with offsets instead of a list of
thousands of ``bytes`` objects, and NumPy arrays, so handing it to another process costs a
few buffer copies rather than per-event pickling.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from rayworker.alerts import Alert
from rayworker.clock import Clock, SystemClock, now_us
from rayworker.detect import (
    PRIMARY_BIT,
    DetectorConfig,
    LateEvent,
    MetricDeltas,
    OffHoursScreen,
    group_column,
    group_signatures,
    integrity_monitor,
    rule_signature,
    screen_batch,
)
from rayworker.errors import StateError
from rayworker.events import EventBatch, EventDecoder, Rejection
from rayworker.integrity import IntegrityConfig
from rayworker.routing import Assignment, key_groups
from rayworker.rules import (
    Overrides,
    Predicate,
    RulePack,
    SequenceRule,
    compile_filter,
    compile_steps,
)

__all__ = ["Partition", "Partitioner", "ShardBatch"]

_SNAPSHOT_FORMAT = "rayworker.partitioner"


@dataclass(frozen=True, slots=True)
class ShardBatch:
    """The events one shard receives from one router flush, in arrival order."""

    blob: bytes
    """The raw events, concatenated."""
    offsets: npt.NDArray[np.int64]
    """``blob[offsets[i]:offsets[i + 1]]`` is event ``i``; ``len(offsets) == n + 1``."""
    wm_after: npt.NDArray[np.int64]
    """Each event's tenant watermark after it (microseconds)."""
    owned: npt.NDArray[np.uint64]
    """Bit ``s`` set: this shard owns the event's key under rule signature ``s``; bit
    :data:`~rayworker.detect.PRIMARY_BIT` set: this is the event's one primary shard."""
    watermarks: dict[str, int] = field(default_factory=dict)
    """The router's largest event time per tenant (microseconds), for settling."""

    def __len__(self) -> int:
        return len(self.wm_after)

    def lines(self) -> list[bytes]:
        """The events as separate byte strings."""
        blob, bounds = self.blob, self.offsets.tolist()
        return [blob[a:b] for a, b in itertools.pairwise(bounds)]

    @classmethod
    def build(
        cls,
        raw: Sequence[bytes],
        wm_after: npt.NDArray[np.int64],
        owned: npt.NDArray[np.uint64],
        watermarks: dict[str, int] | None = None,
    ) -> ShardBatch:
        """Pack raw events and their columns."""
        offsets = np.zeros(len(raw) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in raw], out=offsets[1:])
        return cls(b"".join(raw), offsets, wm_after, owned, dict(watermarks or {}))

    @classmethod
    def concat(cls, parts: Sequence[ShardBatch]) -> ShardBatch:
        """Several batches as one, in order (a router's buffer at flush time)."""
        if len(parts) == 1:
            return parts[0]
        shifts = np.cumsum([0] + [len(p.blob) for p in parts[:-1]])
        offsets = np.concatenate(
            [parts[0].offsets[:1]] + [p.offsets[1:] + s for p, s in zip(parts, shifts, strict=True)]
        )
        watermarks: dict[str, int] = {}
        for part in parts:
            for tenant, seen in part.watermarks.items():
                watermarks[tenant] = max(seen, watermarks.get(tenant, seen))
        return cls(
            b"".join(p.blob for p in parts),
            offsets.astype(np.int64),
            np.concatenate([p.wm_after for p in parts]),
            np.concatenate([p.owned for p in parts]),
            watermarks,
        )


@dataclass(slots=True)
class Partition:
    """One batch, screened and split."""

    shards: dict[int, ShardBatch]
    rejections: list[Rejection]
    late: list[LateEvent]
    metrics: MetricDeltas
    accepted: int
    """Events that were neither rejected nor late."""
    tenants: list[str]
    """The tenant of each usable event, in order (for latency accounting)."""
    alerts: list[Alert] = field(default_factory=list)
    """Integrity alerts (:mod:`rayworker.integrity`) created or changed by this batch: raised
    here, once, because only the router verifies events; persist them with the batch."""


@dataclass(frozen=True, slots=True)
class _RuleScreen:
    """What one rule could count: its filter, a step (sequences), off hours (time_of_day)."""

    predicate: Predicate
    steps: tuple[Predicate, ...]
    hours: OffHoursScreen | None


class Partitioner:
    """Screens batches like a detector does, then splits them by key-group ownership."""

    def __init__(
        self,
        pack: RulePack,
        assignment: Assignment,
        config: DetectorConfig | None = None,
        clock: Clock | None = None,
        overrides: Overrides | None = None,
        *,
        integrity: IntegrityConfig | None = None,
    ) -> None:
        self.pack = pack
        self.assignment = assignment
        self.config = config if config is not None else DetectorConfig()
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.signatures = group_signatures(pack)
        # Per signature, the filters of its rules: an event no rule of a signature could
        # count need not travel to that signature's shard at all.
        # A sequence rule counts an event only if it also matches one of its steps, and a
        # time_of_day rule only if it falls outside the tenant's business hours.
        self._filters: list[list[_RuleScreen]] = [[] for _ in self.signatures]
        effective = overrides if overrides is not None else Overrides.empty()
        for rule in pack.rules:
            steps = compile_steps(rule) if isinstance(rule, SequenceRule) else ()
            hours = (
                OffHoursScreen(rule, effective, self.config) if rule.kind == "time_of_day" else None
            )
            signature = self.signatures.index(rule_signature(rule))
            self._filters[signature].append(_RuleScreen(compile_filter(rule.filter), steps, hours))
        fields: set[str] = set()
        for rule in pack.rules:
            fields |= set(rule.fields())
        self.decoder = EventDecoder(fields, naive_timestamps=self.config.naive_timestamps)
        self._max_seen: dict[str, int] = {}
        self.integrity = integrity_monitor(integrity, self.config, pack)
        self._owner = np.asarray(assignment.owner, dtype=np.int64)
        self.load = np.zeros(assignment.groups, dtype=np.int64)
        """Event copies routed to each key group so far: the input of a load-aware plan
        (:meth:`~rayworker.routing.Assignment.balance_load`)."""

    def split_lines(self, lines: Sequence[bytes], *, start_index: int = 0) -> Partition:
        """Decode, screen and split raw JSON lines."""
        decoded = self.decoder.decode(lines, start_index=start_index)
        return self.split(decoded.batch, decoded.rejections, start_index=start_index)

    def split(
        self, batch: EventBatch, rejections: Sequence[Rejection] = (), *, start_index: int = 0
    ) -> Partition:
        """Screen a decoded batch and split its usable events by owning shard."""
        screened, usable, wm_after = screen_batch(
            batch,
            rejections,
            start_index=start_index,
            config=self.config,
            now_us=now_us(self.clock),
            max_seen=self._max_seen,
            integrity=self.integrity,
        )
        keep = np.flatnonzero(usable)
        partition = Partition(
            {}, screened.rejections, screened.late, screened.metrics, len(keep), [], screened.alerts
        )
        if len(keep) == 0:
            return partition
        sub = batch.take(keep) if len(keep) < len(batch) else batch
        wm = wm_after[keep]
        tenants = sub.tenants
        partition.tenants = tenants
        # -1: the event does not travel under that signature (no rule of it could count it).
        shard_of_event = np.full((len(self.signatures), len(keep)), -1, dtype=np.int64)
        for s, signature in enumerate(self.signatures):
            rows = np.flatnonzero(self._wanted(s, sub))
            if len(rows) == 0:
                continue
            # Columns are extracted once per batch (cached) and only indexed per signature.
            columns = [group_column(sub, spec) for spec in signature]
            picked_tenants = tenants
            if len(rows) < len(keep):
                at = rows.tolist()
                columns = [[column[i] for i in at] for column in columns]
                picked_tenants = [tenants[i] for i in at]
            groups = key_groups(picked_tenants, columns, groups=self.assignment.groups)
            shard_of_event[s, rows] = self._owner[groups]
            self.load += np.bincount(groups, minlength=self.assignment.groups)
        # Each routed event's lowest signature marks its one primary shard (which alone
        # counts it as a duplicate, if it is one).
        routed = shard_of_event >= 0
        first = np.argmax(routed, axis=0)
        primary_shard = shard_of_event[first, np.arange(len(keep))]
        touched = {tenant: self._max_seen[tenant] for tenant in set(tenants)}
        for shard in np.unique(shard_of_event[routed]).tolist():
            hit = shard_of_event == shard
            owned = np.zeros(len(keep), dtype=np.uint64)
            for s in range(len(self.signatures)):
                owned |= hit[s].astype(np.uint64) << np.uint64(s)
            owned |= (primary_shard == shard).astype(np.uint64) << np.uint64(PRIMARY_BIT)
            rows = np.flatnonzero(owned)
            raw = sub.raw
            partition.shards[int(shard)] = ShardBatch.build(
                [raw[i] for i in rows.tolist()], wm[rows], owned[rows], touched
            )
        return partition

    def _wanted(self, signature: int, batch: EventBatch) -> npt.NDArray[np.bool_]:
        """Which events some rule of the signature could count (its filter, a step of a
        sequence, and for time_of_day rules the tenant's off hours)."""
        wanted = np.zeros(len(batch), dtype=np.bool_)
        for screen in self._filters[signature]:
            mask = screen.predicate.mask(batch)
            if screen.steps:
                in_a_step = np.zeros(len(batch), dtype=np.bool_)
                for step in screen.steps:
                    in_a_step |= step.mask(batch)
                mask &= in_a_step
            if screen.hours is not None:
                # Only events no other rule already wants need the per-tenant hours lookup.
                index = np.flatnonzero(mask & ~wanted)
                mask = np.zeros(len(batch), dtype=np.bool_)
                if len(index):
                    mask[index] = screen.hours(batch, index)
            wanted |= mask
        return wanted

    def reassign(self, assignment: Assignment) -> None:
        """Route by ``assignment`` from now on (a rescale, after the state moved with it)."""
        if assignment.groups != self.assignment.groups:
            msg = (
                f"the new assignment has {assignment.groups} key groups, this pipeline "
                f"{self.assignment.groups}; the number of key groups never changes"
            )
            raise StateError(msg)
        self.assignment = assignment
        self._owner = np.asarray(assignment.owner, dtype=np.int64)

    def watermarks(self) -> dict[str, int]:
        """The largest event time seen per tenant (microseconds)."""
        return dict(self._max_seen)

    def snapshot(self) -> dict[str, Any]:
        """The router's state: watermarks and the assignment."""
        return {
            "format": _SNAPSHOT_FORMAT,
            "max_seen": dict(self._max_seen),
            "integrity": self.integrity.snapshot() if self.integrity is not None else [],
            "assignment": self.assignment.to_json(),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Continue from a snapshot taken by :meth:`snapshot`."""
        if snapshot.get("format") != _SNAPSHOT_FORMAT:
            msg = f"not a partitioner snapshot (missing format {_SNAPSHOT_FORMAT!r})"
            raise StateError(msg)
        self._max_seen = {str(k): int(v) for k, v in snapshot["max_seen"].items()}
        if self.integrity is not None:
            self.integrity.restore(snapshot.get("integrity", []))
        self.assignment = Assignment.from_json(snapshot["assignment"])
        self._owner = np.asarray(self.assignment.owner, dtype=np.int64)
