"""The pure detector: a batch of events in; alerts, rejections, late events and metrics out.

Semantics (the README quotes this):

* **Watermarks are per tenant.** A tenant's watermark is the largest event time seen for that
  tenant minus the allowed lateness. An event older than its tenant's watermark is *late*: it
  is reported and counted, never silently dropped, and not counted by rules. Keeping
  watermarks per tenant means another tenant's traffic can never make your events late.
* **A hit** is a matching event whose window ``(t - W, t]`` (its own group, its own tenant)
  meets the rule's condition. Events that arrive out of order but within the lateness are
  placed at their event time, and the hits they reveal are found, so the hits are those of the
  events sorted by time, whatever the arrival order or batch split.
* **Monotone conditions** (``gte``/``gt``, sequences, ``time_of_day`` with a minimum) fire as
  soon as the hit is seen. Other conditions (``lt``, ``eq``, ...) can be undone by a later
  event, so they are evaluated once the watermark has passed the event.
* **Alerts** group hits by fingerprint (tenant, rule, group values) and aligned suppression
  period (see :mod:`rayworker.alerts`). Each result carries the alerts created or changed by
  that batch in their latest state; fold them by id (:class:`rayworker.alerts.AlertBook`).
  ``count`` is the number of events in the first hit's window, counted up to
  ``max(N, evidence_cap)``; ``evidence`` holds the latest ``evidence_cap`` event ids of that
  window (the distinct values' latest events, or the events completing a sequence).
* **Duplicates**: an event id already in a key's window is not counted again.
* **Future-dated events** (beyond ``max_future_s`` of the injected clock) are rejected: one
  such event would otherwise move the tenant's watermark ahead and blind its detection.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import numpy.typing as npt
from xxhash import xxh3_128_digest

from rayworker.alerts import Alert, alert_id, fingerprint, iso_utc
from rayworker.clock import Clock, SystemClock, now_us
from rayworker.columnar import (
    GROUP_BITS,
    GROUP_MASK,
    CountStore,
    IdWords,
    ValueVocab,
    Vocab,
    decode_ids,
    digest_ids,
    encode_ids,
    plain_classes,
)
from rayworker.errors import ConfigError, StateError
from rayworker.events import (
    DecodeResult,
    EventBatch,
    EventDecoder,
    Rejection,
    RejectReason,
    derive_event_id,
)
from rayworker.integrity import IntegrityConfig, IntegrityMonitor
from rayworker.packed_vocab import PackedVocab
from rayworker.rules import (
    DistinctRule,
    Overrides,
    RulePack,
    SequenceRule,
    compile_filter,
    compile_steps,
)
from rayworker.rules.model import filter_fields
from rayworker.windows import KeyWindow, distinct_at, sequence_at, window_range

if TYPE_CHECKING:
    from rayworker.rules import Predicate, Rule

__all__ = [
    "DetectionResult",
    "Detector",
    "DetectorConfig",
    "LateEvent",
    "MetricDeltas",
    "OffHoursScreen",
    "group_column",
    "group_signatures",
    "integrity_monitor",
    "rule_signature",
    "screen_batch",
]

_US = 1_000_000
_VECTOR_MIN = 32  # below this many candidates the per-event path is as fast
_NEVER = -(2**62)
_NO_KEEP = 2**62  # a store compaction's keep for rows of no cap
_SNAPSHOT_VERSION = 1
_VOCAB_GC_MIN = 10_000  # forget unused group-value codes once the vocabularies reach this
# (and twice what was live after the last time); 0 forgets after every batch, for tests.
MAX_SIGNATURES = 63
"""Distinct rule signatures a router can route: one bit each in a uint64 per event."""
PRIMARY_BIT = 63
"""The routing bit marking an event's one primary shard, which alone counts duplicates."""


@dataclass(frozen=True)
class DetectorConfig:
    """How the detector treats time, suppression and bounds."""

    allowed_lateness_s: float = 60.0
    suppression_s: float = 300.0
    max_future_s: float | None = 300.0
    evidence_cap: int = 100
    naive_timestamps: Literal["utc", "reject"] = "utc"
    max_events_per_key: int = 100_000

    def __post_init__(self) -> None:
        problems = []
        if not (0 <= self.allowed_lateness_s <= 7 * 86400):
            problems.append(
                f"allowed_lateness_s: got {self.allowed_lateness_s}; use 0..604800 seconds"
            )
        if not (0 < self.suppression_s <= 30 * 86400):
            problems.append(f"suppression_s: got {self.suppression_s}; use (0, 2592000] seconds")
        if self.max_future_s is not None and self.max_future_s < 0:
            problems.append(f"max_future_s: got {self.max_future_s}; use >= 0, or None to allow")
        if not (1 <= self.evidence_cap <= 10_000):
            problems.append(f"evidence_cap: got {self.evidence_cap}; use 1..10000")
        if self.max_events_per_key < 10:
            problems.append(f"max_events_per_key: got {self.max_events_per_key}; use >= 10")
        if problems:
            msg = "invalid detector config: " + "; ".join(problems)
            raise ConfigError(msg)


@dataclass(frozen=True, slots=True)
class LateEvent:
    """An event older than its tenant's watermark when it arrived."""

    event_id: str
    tenant: str
    timestamp_us: int
    watermark_us: int
    index: int

    def to_json(self) -> dict[str, Any]:
        """The late event as a JSON record."""
        return {
            "event_id": self.event_id,
            "tenant": self.tenant,
            "timestamp": iso_utc(self.timestamp_us),
            "watermark": iso_utc(self.watermark_us),
            "index": self.index,
        }


@dataclass
class MetricDeltas:
    """Counts produced by one call, per tenant; merge them to total."""

    events: Counter[str] = field(default_factory=Counter)
    rejected: Counter[tuple[str | None, str]] = field(default_factory=Counter)
    late: Counter[str] = field(default_factory=Counter)
    alerts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    alert_updates: Counter[tuple[str, str]] = field(default_factory=Counter)
    naive_timestamps: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    state_capped: Counter[str] = field(default_factory=Counter)
    integrity_violations: Counter[str] = field(default_factory=Counter)

    def is_empty(self) -> bool:
        """True when no count is non-zero (nothing worth writing)."""
        return not any(
            (
                self.events,
                self.rejected,
                self.late,
                self.alerts,
                self.alert_updates,
                self.naive_timestamps,
                self.duplicates,
                self.state_capped,
                self.integrity_violations,
            )
        )

    def merge(self, other: MetricDeltas) -> None:
        """Add another set of deltas into this one."""
        self.events.update(other.events)
        self.rejected.update(other.rejected)
        self.late.update(other.late)
        self.alerts.update(other.alerts)
        self.alert_updates.update(other.alert_updates)
        self.naive_timestamps.update(other.naive_timestamps)
        self.duplicates.update(other.duplicates)
        self.state_capped.update(other.state_capped)
        self.integrity_violations.update(other.integrity_violations)


@dataclass
class DetectionResult:
    """What one call produced."""

    alerts: list[Alert] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    late: list[LateEvent] = field(default_factory=list)
    metrics: MetricDeltas = field(default_factory=MetricDeltas)


@dataclass(slots=True)
class _Params:
    """A rule's parameters for one tenant (the pack with the tenant's overrides)."""

    enabled: bool
    holds: Any
    lower: int | None
    window_us: int
    suppression_us: int
    version: str
    keep: int | None
    outside: npt.NDArray[np.bool_] | None
    zone: ZoneInfo | None
    finished_tag: int | None


_PARK = msgspec.msgpack.Encoder()
_ALERT_FIELDS = tuple(f.name for f in fields(Alert))
_EVIDENCE = _ALERT_FIELDS.index("evidence_ids")


def _park_alert(alert: Alert) -> bytes:
    """An alert as compact msgpack: its field values in order (no names), and evidence ids
    that are all derived as their 128 bits each (the text ids are two thirds of an alert)."""
    values: list[Any] = [getattr(alert, name) for name in _ALERT_FIELDS]
    words = encode_ids(values[_EVIDENCE])
    if not words.named.any():  # a named id (or one not in canonical form) stays text
        values[_EVIDENCE] = np.column_stack([words.hi, words.lo]).astype(">u8").tobytes()
    return _PARK.encode(values)


def _unpark_alert(data: bytes) -> Alert:
    """The alert :func:`_park_alert` packed."""
    values = msgspec.msgpack.decode(data)
    if isinstance(values[_EVIDENCE], bytes):
        words = digest_ids(values[_EVIDENCE])
        values[_EVIDENCE] = decode_ids(words.hi, words.lo)
    return Alert(*values)


class _Wake:
    """The open alerts a detector holds unpacked, and the number of its current call."""

    __slots__ = ("awake", "call")

    def __init__(self) -> None:
        self.awake: list[_Open] = []
        self.call = 0

    def park_idle(self) -> None:
        """Start a call: park the alerts the call that just ended did not touch."""
        ended = self.call
        kept = []
        for current in self.awake:
            if current.seen == ended and current.is_awake:
                kept.append(current)
            else:
                current.park()
        self.awake = kept
        self.call = ended + 1


class _Open:
    """An alert whose suppression period can still receive hits.

    An alert left untouched for a whole call is *parked*: held as its msgpack encoding,
    which costs about a third of the objects (an alert holds up to ``evidence_cap`` event-id
    strings, and most open alerts receive nothing for minutes). Touching :attr:`alert`
    unpacks it. The detector parks, at the start of each call, what the call before did not
    touch: the object it returned stays its own until then (a shard sets ``trace_id`` on it
    after a batch), and an alert hit batch after batch is not packed and unpacked each time.
    """

    __slots__ = ("_alert", "_packed", "_wake", "first_id", "first_t", "period_end", "seen")

    def __init__(self, alert: Alert, first_t: int, first_id: str, wake: _Wake) -> None:
        self._alert: Alert | None = alert
        self._packed = b""
        self._wake = wake
        self.first_t = first_t
        self.first_id = first_id
        self.period_end = alert.period_end_us
        self.seen = wake.call
        wake.awake.append(self)

    @property
    def alert(self) -> Alert:
        """The alert, unpacked (and awake until a call that does not touch it has ended)."""
        wake = self._wake
        if self._alert is None:
            self._alert = _unpark_alert(self._packed)
            self._packed = b""
            wake.awake.append(self)
        self.seen = wake.call
        return self._alert

    @property
    def is_awake(self) -> bool:
        """Whether the alert is held unpacked."""
        return self._alert is not None

    def view(self) -> Alert:
        """The alert as it stands, without waking it (a parked one is a fresh copy)."""
        return self._alert if self._alert is not None else _unpark_alert(self._packed)

    def park(self) -> None:
        """Hold the alert as its encoding until it is touched again."""
        if self._alert is not None:
            self._packed = _park_alert(self._alert)
            self._alert = None


def _lower_bound(condition: Any) -> int | None:
    """The smallest count a monotone condition accepts (None when not monotone)."""
    if condition.lt is not None or condition.lte is not None:
        return None
    if condition.eq is not None or condition.neq is not None:
        return None
    bounds = []
    if condition.gte is not None:
        bounds.append(int(condition.gte))
    if condition.gt is not None:
        bounds.append(int(condition.gt) + 1)
    return max(bounds) if bounds else 0


def _outside_table(hours: Any) -> npt.NDArray[np.bool_]:
    """A 7x1440 table: is (weekday, minute of day) outside business hours."""
    table = np.zeros(7 * 1440, dtype=np.bool_)
    for weekday in range(7):
        for minute in range(1440):
            table[weekday * 1440 + minute] = hours.is_outside(minute, weekday)
    return table


class _RuleRuntime:
    """One rule's compiled predicates and the state of all its keys."""

    def __init__(self, rule: Rule, overrides: Overrides, config: DetectorConfig) -> None:
        self.rule = rule
        self.kind: str = rule.kind
        self.overrides = overrides
        self.config = config
        self.predicate = compile_filter(rule.filter)
        self.steps: tuple[Predicate, ...] = ()
        self.step_counts: list[int] = []
        if isinstance(rule, SequenceRule):
            self.steps = compile_steps(rule)
            self.step_counts = [step.count for step in rule.steps]
        self.group_specs: list[tuple[str, ...]] = []
        for spec in rule.group_by:
            if isinstance(spec, str):
                self.group_specs.append((spec,))
            else:
                self.group_specs.append(tuple(spec.coalesce))
        self.group_names: tuple[str, ...] = tuple(rule.group_names)
        self.distinct_field: str | None = rule.field if isinstance(rule, DistinctRule) else None
        self.windows: dict[tuple[Any, ...], KeyWindow] = {}
        # Every rule keeps its keys in one columnar store between batches; ``windows`` holds
        # only the keys the per-event path works on during a batch (and keys of non-monotone
        # conditions), and ``slow_codes`` maps their key codes back. Distinct rules store
        # each value's code in ``tag_vocab`` (the detector's vocabulary of group values) as
        # the row's tag.
        self.store: CountStore | None = None
        if self.kind in ("threshold", "time_of_day", "sequence", "distinct"):
            self.store = CountStore(tagged=self.kind in ("sequence", "distinct"))
        self.tag_vocab: Vocab | None = None
        self.store_keys = 0
        # A count rule's store is compacted once it grew by a quarter since it last was, so
        # that eviction costs O(1) per event however small the batches: until then, per
        # tenant code, the watermark, width and keep it will be compacted with.
        self.pending: tuple[npt.NDArray[np.int64], ...] | None = None
        self.rows_after_compact = 0
        self.slow_codes: dict[int, tuple[Any, ...]] = {}
        self.combo: ValueVocab | None = ValueVocab() if len(self.group_specs) > 1 else None
        # Settled events whose tags are exactly this are evicted (see KeyWindow.compact).
        self.finished_tag: int | None = (
            1 << (len(self.step_counts) - 1)
            if self.step_counts and self.step_counts[-1] == 1
            else None
        )
        self.open: dict[tuple[Any, ...], dict[int, _Open]] = {}
        self._params: dict[str, _Params] = {}
        # Tenants with the same effective parameters share one _Params (usually all do).
        self._shared_params: dict[tuple[Any, ...], _Params] = {}
        self._tables: dict[Any, npt.NDArray[np.bool_]] = {}
        self.events_since_sweep = 0

    def params(self, tenant: str) -> _Params:
        cached = self._params.get(tenant)
        if cached is not None:
            return cached
        eff = self.overrides.effective(self.rule, tenant)
        window_us = round(eff.window_s * _US)
        suppression_s = (
            eff.suppression_s if eff.suppression_s is not None else self.config.suppression_s
        )
        if eff.condition is None:
            holds = None
            lower: int | None = sum(self.step_counts)
            monotone = True
        else:
            holds = eff.condition.holds
            lower = _lower_bound(eff.condition)
            monotone = lower is not None
        keep: int | None = None
        if monotone and self.kind != "sequence":
            keep = max(lower or 0, self.config.evidence_cap, 1)
        outside = None
        zone = None
        if self.kind == "time_of_day":
            hours = eff.business_hours
            outside = self._tables.get(hours)
            if outside is None:
                outside = self._tables[hours] = _outside_table(hours)
            zone = ZoneInfo(eff.timezone)
        shared_key = (
            eff.enabled,
            id(eff.condition),
            window_us,
            suppression_s,
            eff.version,
            id(outside),
            zone,
        )
        shared = self._shared_params.get(shared_key)
        if shared is not None:
            self._params[tenant] = shared
            return shared
        cached = _Params(
            enabled=eff.enabled,
            holds=holds,
            lower=lower,
            window_us=window_us,
            suppression_us=max(1, round(suppression_s * _US)),
            version=eff.version,
            keep=keep,
            outside=outside,
            zone=zone,
            finished_tag=(
                1 << (len(self.step_counts) - 1)
                if self.step_counts and self.step_counts[-1] == 1
                else None
            ),
        )
        self._params[tenant] = self._shared_params[shared_key] = cached
        return cached


def _outside_hours(
    runtime: _RuleRuntime, batch: EventBatch, index: npt.NDArray[np.intp]
) -> npt.NDArray[np.bool_]:
    """For time_of_day rules: which candidate events fall outside business hours."""
    codes, tenants = batch.codes("organizationId")
    out = np.zeros(len(index), dtype=np.bool_)
    # Tenants sharing business hours and time zone (usually all of them) go together.
    group_of: dict[tuple[int, str], int] = {}
    tables: list[tuple[npt.NDArray[np.bool_], ZoneInfo]] = []
    tenant_group = np.full(len(tenants), -1, dtype=np.int64)
    for code, tenant in enumerate(tenants):
        params = runtime.params(tenant)
        if params.outside is None or params.zone is None:
            continue
        group = group_of.setdefault((id(params.outside), params.zone.key), len(tables))
        if group == len(tables):
            tables.append((params.outside, params.zone))
        tenant_group[code] = group
    event_group = tenant_group[codes[index]]
    for group, (outside, zone) in enumerate(tables):
        sel = np.flatnonzero(event_group == group)
        micros = batch.ts[index[sel]]
        local = micros + _utc_offsets_us(zone, micros)
        minutes = (local // (60 * _US)) % 1440
        weekday = ((local // (86400 * _US)) + 3) % 7  # 1970-01-01 was a Thursday
        out[sel] = outside[weekday * 1440 + minutes]
    return out


class OffHoursScreen:
    """Which events a time_of_day rule could count: those outside each tenant's business hours.

    The router applies it so that in-hours events never travel to the shard of a rule grouped
    by the tenant alone, the one signature that keeps a busy tenant on a single shard.
    """

    def __init__(self, rule: Rule, overrides: Overrides, config: DetectorConfig) -> None:
        self._runtime = _RuleRuntime(rule, overrides, config)

    def __call__(self, batch: EventBatch, index: npt.NDArray[np.intp]) -> npt.NDArray[np.bool_]:
        """For the events at ``index``: True where the rule could count them."""
        return _outside_hours(self._runtime, batch, index)


class _LazyIds:
    """A batch's event ids, made only where asked for: ``ids[i]`` as text, or the 128-bit
    form of many (straight from the digest of the raw bytes when the producer sent none)."""

    __slots__ = ("_all_derived", "_digested", "batch")

    def __init__(self, batch: EventBatch) -> None:
        self.batch = batch
        self._digested: IdWords | None = None
        self._all_derived: bool | None = None  # no event has a producer id (once known)

    def __getitem__(self, i: int) -> str:
        given = self.batch.events[i].id
        return given if given is not None else derive_event_id(self.batch.raw[i])

    def words(self, index: npt.NDArray[np.intp]) -> IdWords:
        """The 128-bit ids of the events at ``index``, in that order."""
        batch = self.batch
        if self._all_derived is None:
            self._all_derived = batch.count_missing("id") == len(batch)
        if self._digested is None and self._all_derived:
            # No producer ids: every event's id is its digest, computed once for all rules.
            digests = b"".join([xxh3_128_digest(r.strip()) for r in batch.raw])
            self._digested = digest_ids(digests)
        if self._digested is not None:
            whole = self._digested
            return IdWords(whole.hi[index], whole.lo[index], whole.named[index], [])
        return encode_ids([self[i] for i in index.tolist()])


@dataclass(slots=True)
class _TenantTable:
    """A rule's parameters per batch-local tenant code, as arrays (lower is -1 for None)."""

    enabled: npt.NDArray[np.bool_]
    lower: npt.NDArray[np.int64]
    width: npt.NDArray[np.int64]
    period: npt.NDArray[np.int64]


class _BatchKeys:
    """Codes of one batch shared by the rules of one call: tenants and group values."""

    def __init__(self, detector: Detector, batch: EventBatch) -> None:
        self.detector = detector
        self.batch = batch
        self._tenant_map: npt.NDArray[np.int64] | None = None
        self._tenant_pcodes: npt.NDArray[np.int64] | None = None
        self._specs: dict[tuple[str, ...], tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]] = {}
        self._tables: dict[str, _TenantTable] = {}

    def batch_tenant_codes(self) -> npt.NDArray[np.int32]:
        """Each event's batch-local tenant code."""
        return self.batch.codes("organizationId")[0]

    def _tenants(self) -> npt.NDArray[np.int64]:
        if self._tenant_map is None:
            vocab = self.batch.codes("organizationId")[1]
            self._tenant_map = self.detector._tenants.codes(vocab)
        return self._tenant_map

    def tenant_pcodes(self) -> npt.NDArray[np.int64]:
        """Each event's persistent tenant code."""
        if self._tenant_pcodes is None:
            self._tenant_pcodes = self._tenants()[self.batch_tenant_codes()]
        return self._tenant_pcodes

    def tenant_pcodes_present(self) -> list[int]:
        """The persistent codes of the batch's tenants."""
        return [int(c) for c in self._tenants().tolist()]

    def spec_values(self, spec: tuple[str, ...], index: list[int]) -> list[Any]:
        """One group key's values (first non-missing path) for the events at ``index``."""
        merged = self.batch.values_at(spec[0], index)
        for path in spec[1:]:
            other = self.batch.values_at(path, index)
            merged = [m if m is not None else o for m, o in zip(merged, other, strict=True)]
        return merged

    def spec_codes(
        self, spec: tuple[str, ...], index: npt.NDArray[np.intp]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Persistent codes of one group key's values at ``index``, and where they are None."""
        vocab = self.detector._groups
        cached = self._specs.get(spec)
        if cached is not None or (len(spec) == 1 and len(index) * 4 >= len(self.batch)):
            if cached is None:
                # One pass over the whole column, shared by every rule that groups by it.
                batch, path = self.batch, spec[0]
                codes = vocab.codes_from(lambda: batch.iter_values(path))
                none_code = vocab.code_if_known(None)
                none = codes == none_code if none_code is not None else np.zeros(0, np.bool_)
                cached = self._specs[spec] = (codes, none)
            codes, none = cached
            if not len(none):
                return codes[index], np.zeros(len(index), dtype=np.bool_)
            return codes[index], none[index]
        values = self.spec_values(spec, index.tolist())
        return vocab.codes(values), np.array([v is None for v in values], dtype=np.bool_)

    def params(self, runtime: _RuleRuntime) -> _TenantTable:
        """The rule's parameters per batch-local tenant code."""
        table = self._tables.get(runtime.rule.id)
        if table is None:
            plist = [runtime.params(t) for t in self.batch.codes("organizationId")[1]]
            table = self._tables[runtime.rule.id] = _TenantTable(
                enabled=np.array([p.enabled for p in plist], dtype=np.bool_),
                lower=np.array(
                    [p.lower if p.lower is not None else -1 for p in plist], dtype=np.int64
                ),
                width=np.array([p.window_us for p in plist], dtype=np.int64),
                period=np.array([p.suppression_us for p in plist], dtype=np.int64),
            )
        return table


def _view(store: CountStore, code: int) -> KeyWindow:
    """A throwaway window over one key's rows in a store (to describe a hit)."""
    block = store.rows_of(code)
    window = KeyWindow()
    window.times, window.ids, window.tags, window.hits = (
        block.times,
        block.ids,
        block.tags,
        block.hits,
    )
    return window


class Detector:
    """Detects the rules of a pack over batches of audit events; pure and deterministic."""

    def __init__(
        self,
        pack: RulePack,
        overrides: Overrides | None = None,
        config: DetectorConfig | None = None,
        clock: Clock | None = None,
        *,
        integrity: IntegrityConfig | None = None,
    ) -> None:
        self.pack = pack
        self.overrides = overrides if overrides is not None else Overrides.empty()
        self.config = config if config is not None else DetectorConfig()
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.integrity = integrity_monitor(integrity, self.config, pack)
        self._lateness_us = round(self.config.allowed_lateness_s * _US)
        self._max_seen: dict[str, int] = {}
        self._rules = [_RuleRuntime(rule, self.overrides, self.config) for rule in pack.rules]
        # Persistent codes of tenants and group values, for the columnar state of rules.
        self._tenants = ValueVocab()
        # One vocabulary for the values of every group key (and distinct field): a principal
        # grouped by several rules, or by a coalesced key, has one code and one text.
        self._groups = PackedVocab()
        for runtime in self._rules:
            if runtime.kind == "distinct":
                runtime.tag_vocab = self._groups
        self._live_codes = 0
        # Open alerts held unpacked; those a call did not touch are parked when the next starts.
        self._wake = _Wake()
        signatures = group_signatures(pack)
        if len(signatures) > MAX_SIGNATURES:
            msg = (
                f"the rules use {len(signatures)} different group_by lists; a router can "
                f"route at most {MAX_SIGNATURES}: give more rules the same group_by"
            )
            raise ConfigError(msg)
        self.signature_bits: dict[str, int] = {
            rule.id: signatures.index(rule_signature(rule)) for rule in pack.rules
        }
        fields: set[str] = set()
        filtered: dict[str, None] = {"organizationId": None}
        for rule in pack.rules:
            fields |= set(rule.fields())
            filtered.update(dict.fromkeys(sorted(filter_fields(rule.filter))))
            if isinstance(rule, SequenceRule):
                for step in rule.steps:
                    filtered.update(dict.fromkeys(sorted(filter_fields(step.filter))))
        # The columns every batch factorises together: the tenant and what filters read.
        self._filter_paths: tuple[str, ...] = tuple(filtered)
        self.decoder = EventDecoder(fields, naive_timestamps=self.config.naive_timestamps)

    # --- public API -----------------------------------------------------------------------

    def process_lines(self, lines: Sequence[bytes], *, start_index: int = 0) -> DetectionResult:
        """Decode JSON lines and detect over them."""
        decoded: DecodeResult = self.decoder.decode(lines, start_index=start_index)
        return self.process(decoded.batch, decoded.rejections, start_index=start_index)

    def process(
        self,
        batch: EventBatch,
        rejections: Iterable[Rejection] = (),
        *,
        start_index: int = 0,
    ) -> DetectionResult:
        """Detect over a decoded batch, in its arrival order."""
        self._park()
        batch.factorise(self._filter_paths)
        result, usable, wm_after = screen_batch(
            batch,
            rejections,
            start_index=start_index,
            config=self.config,
            now_us=now_us(self.clock),
            max_seen=self._max_seen,
            integrity=self.integrity,
        )
        if len(batch) == 0:
            return result
        self._run_rules(batch, wm_after, result, lambda _runtime: usable, usable)
        return result

    def process_routed(
        self,
        lines: Sequence[bytes],
        wm_after: npt.NDArray[np.int64],
        owned: npt.NDArray[np.uint64],
        watermarks: dict[str, int],
    ) -> DetectionResult:
        """Detect over events a router screened and routed here (see :mod:`rayworker.partition`).

        The router has already rejected bad and future events, found the late ones and
        counted events per tenant, because only it sees all of a tenant's events: here
        ``wm_after`` gives each event's tenant watermark, ``owned`` which rule signatures
        this shard owns each event's key under (bit ``s`` for signature ``s``), and
        ``watermarks`` the router's largest event time per tenant, so that keys of a tenant
        that sent nothing here lately still settle on time.
        """
        self._park()
        decoded = self.decoder.decode(lines)
        if decoded.rejections:
            first = decoded.rejections[0]
            msg = (
                f"a routed event failed to decode here ({first.message}); the router and "
                "this shard must run the same rayworker version and rules"
            )
            raise StateError(msg)
        batch = decoded.batch
        batch.factorise(self._filter_paths)
        max_seen = self._max_seen
        for tenant, seen in watermarks.items():
            if seen > max_seen.get(tenant, _NEVER):
                max_seen[tenant] = seen
        result = DetectionResult()
        if len(batch) == 0:
            return result
        masks: dict[int, npt.NDArray[np.bool_]] = {}

        def usable_for(runtime: _RuleRuntime) -> npt.NDArray[np.bool_]:
            bit = self.signature_bits[runtime.rule.id]
            mask = masks.get(bit)
            if mask is None:
                mask = masks[bit] = ((owned >> np.uint64(bit)) & np.uint64(1)).astype(np.bool_)
            return mask

        primary = ((owned >> np.uint64(PRIMARY_BIT)) & np.uint64(1)).astype(np.bool_)
        self._run_rules(batch, wm_after, result, usable_for, primary)
        return result

    def _run_rules(
        self,
        batch: EventBatch,
        wm_after: npt.NDArray[np.int64],
        result: DetectionResult,
        usable_for: Callable[[_RuleRuntime], npt.NDArray[np.bool_]],
        primary: npt.NDArray[np.bool_],
    ) -> None:
        metrics = result.metrics
        ids = _LazyIds(batch)
        changed: dict[str, Alert] = {}
        duplicate_rows: set[int] = set()
        ctx = _BatchKeys(self, batch)
        for runtime in self._rules:
            usable = usable_for(runtime)
            if not usable.any():
                continue
            self._run_rule(
                runtime, batch, usable, wm_after, ids, changed, duplicate_rows, metrics, ctx
            )
        self._maybe_forget_codes()
        for i in duplicate_rows:
            if primary[i]:
                metrics.duplicates[batch.value_at("organizationId", i)] += 1
        result.alerts.extend(changed.values())

    def flush(self) -> DetectionResult:
        """End of input: settle every pending evaluation as if the watermark were infinite."""
        self._park()
        result = DetectionResult()
        changed: dict[str, Alert] = {}
        for runtime in self._rules:
            self._sweep(runtime, changed, result.metrics, final=True)
        result.alerts = list(changed.values())
        return result

    def _park(self) -> None:
        self._wake.park_idle()

    def active_keys(self) -> int:
        """Number of (rule, tenant, group) keys holding window state."""
        return sum(
            len(r.windows) + (r.store.n_keys() if r.store is not None else 0) for r in self._rules
        )

    def watermark(self, tenant: str) -> int | None:
        """A tenant's watermark in microseconds since the epoch, or None if unseen."""
        seen = self._max_seen.get(tenant)
        return None if seen is None else seen - self._lateness_us

    # --- watermarks ------------------------------------------------------------------------

    # --- rules -----------------------------------------------------------------------------

    def _candidates(
        self, runtime: _RuleRuntime, batch: EventBatch, usable: npt.NDArray[np.bool_]
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64] | None]:
        """Which events the rule counts, and for sequences each event's step bit mask."""
        mask = usable & runtime.predicate.mask(batch)
        step_bits: npt.NDArray[np.int64] | None = None
        if runtime.steps:
            step_bits = np.zeros(len(batch), dtype=np.int64)
            for k, step in enumerate(runtime.steps):
                step_bits |= step.mask(batch).astype(np.int64) << k
            mask &= step_bits != 0
        return mask, step_bits

    def _run_rule(  # noqa: PLR0915 - the per-event loop is hot and kept inline on purpose
        self,
        runtime: _RuleRuntime,
        batch: EventBatch,
        usable: npt.NDArray[np.bool_],
        wm_after: npt.NDArray[np.int64],
        ids: _LazyIds,
        changed: dict[str, Alert],
        duplicate_rows: set[int],
        metrics: MetricDeltas,
        ctx: _BatchKeys,
    ) -> None:
        mask, step_bits = self._candidates(runtime, batch, usable)
        index = np.flatnonzero(mask)
        if runtime.kind == "time_of_day" and len(index):
            index = index[_outside_hours(runtime, batch, index)]
        if len(index) == 0:
            return
        seen_candidates = len(index)
        counting = runtime.kind in ("threshold", "time_of_day")
        key_codes: list[int] | None = None
        if runtime.store is not None and runtime.kind != "distinct" and len(index) >= _VECTOR_MIN:
            index, codes = self._vector_counting(
                runtime, batch, index, wm_after, ids, changed, metrics, ctx, step_bits
            )
            key_codes = codes.tolist()
        elif runtime.store is not None:
            codes = self._key_codes(runtime, batch, index, ctx)[0]
            if runtime.store is not None and len(runtime.store):
                self._migrate_out(runtime, np.unique(codes))
            key_codes = codes.tolist()
        if len(index) == 0:
            self._count_candidates(runtime, seen_candidates, changed, metrics)
            return
        step_tags = step_bits.tolist() if step_bits is not None else None
        tenant_codes, tenant_vocab = batch.codes("organizationId")
        tenants = [tenant_vocab[c] for c in tenant_codes[index].tolist()]
        idx_list = index.tolist()
        # Columns of the candidates only (position j), not of the whole batch.
        columns = [ctx.spec_values(spec, idx_list) for spec in runtime.group_specs]
        skip_missing = bool(runtime.rule.skip_missing)
        distinct_values = (
            batch.values_at(runtime.distinct_field, idx_list)
            if runtime.distinct_field is not None
            else None
        )
        times = batch.ts
        windows = runtime.windows
        cap = self.config.max_events_per_key
        times_list = times[index].tolist()
        wm_list = wm_after[index].tolist()
        updates: Counter[str] = Counter()
        for j, i in enumerate(idx_list):
            tenant = tenants[j]
            params = runtime.params(tenant)
            if not params.enabled:
                continue
            group = tuple(column[j] for column in columns)
            if skip_missing and None in group:
                continue
            if distinct_values is not None:
                tag: Any = distinct_values[j]
                if tag is None:
                    continue
                if isinstance(tag, dict | list):
                    tag = msgspec.json.encode(tag, order="sorted").decode()
            elif step_tags is not None:
                tag = step_tags[i]
            else:
                tag = None
            key = _key([tenant, *group])
            window = windows.get(key)
            if window is None:
                window = windows[key] = KeyWindow()
                if key_codes is not None:
                    runtime.slow_codes[key_codes[j]] = key
            t = times_list[j]
            wtimes = window.times
            if counting and (not wtimes or t > wtimes[-1]) and params.lower is not None:
                # The common case, inlined: an in-order event of a monotone count rule. It can
                # only complete its own window, and cannot touch an open alert's evidence.
                wtimes.append(t)
                window.ids.append(ids[i])
                window.tags.append(None)
                window.hits.append(0)
                width = params.window_us
                count = len(wtimes) - bisect_right(wtimes, t - width)
                if count >= params.lower:
                    window.hits[-1] = 1
                    periods = runtime.open.get(key)
                    current = (
                        periods.get((t // params.suppression_us) * params.suppression_us)
                        if periods
                        else None
                    )
                    if current is None:
                        q = len(wtimes) - 1
                        self._hit(runtime, key, window, q, wm_list[j], params, changed, metrics)
                    else:
                        alert = current.alert
                        alert.occurrences += 1
                        alert.last_seen_us = t
                        changed[alert.id] = alert
                        updates[tenant] += 1
                keep = params.keep
                if wtimes[0] <= wm_list[j] - width or (
                    keep is not None and len(wtimes) > keep + 32
                ):
                    window.compact(wm_list[j], width, keep, distinct=False)
                continue
            pos = window.insert(t, ids[i], tag)
            if pos is None:
                duplicate_rows.add(i)
                continue
            wm = wm_list[j]
            self._after_insert(runtime, key, window, pos, wm, params, changed, metrics)
            if len(window) > cap:
                window.drop_first(len(window) - cap)
                metrics.state_capped[tenant] += 1
        for tenant, n_updates in updates.items():
            metrics.alert_updates[(tenant, runtime.rule.id)] += n_updates
        self._store_windows(runtime)
        self._count_candidates(runtime, seen_candidates, changed, metrics)

    def _store_windows(self, runtime: _RuleRuntime) -> None:
        """End of a rule's batch: keys of monotone conditions go back to the columnar store,
        so that no per-key window outlives the batch that needed it."""
        if runtime.store is None or not runtime.windows:
            return
        codes = [
            code
            for code, key in runtime.slow_codes.items()
            if key in runtime.windows and runtime.params(key[0]).lower is not None
        ]
        if codes:
            self._migrate_in(runtime, np.array(codes, dtype=np.int64))
            runtime.store_keys = runtime.store.n_keys()

    def _count_candidates(
        self, runtime: _RuleRuntime, n: int, changed: dict[str, Alert], metrics: MetricDeltas
    ) -> None:
        """Sweep a rule's keys once it has seen about as many events as it has keys."""
        runtime.events_since_sweep += n
        if runtime.events_since_sweep >= max(len(runtime.windows) + runtime.store_keys, 10_000):
            self._sweep(runtime, changed, metrics, final=False)

    def _vector_counting(  # noqa: PLR0915 - one vectorised pass over a dozen aligned arrays
        self,
        runtime: _RuleRuntime,
        batch: EventBatch,
        index: npt.NDArray[np.intp],
        wm_after: npt.NDArray[np.int64],
        ids: _LazyIds,
        changed: dict[str, Alert],
        metrics: MetricDeltas,
        ctx: _BatchKeys,
        step_bits: npt.NDArray[np.int64] | None,
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64]]:
        """Count and sequence rules, vectorised over the rule's columnar store: every key whose
        events in this batch arrive in time order after its retained events is evaluated with
        numpy. This gives exactly what the per-event path gives (in order, an event only
        completes its own window). The remaining events (out of order, redeliveries,
        non-monotone conditions, and for sequences equal times) are returned in arrival order
        with their key codes, for the per-event path; their keys' state has been moved to
        per-key windows.
        """
        sequence = step_bits is not None
        store = runtime.store
        if store is None:  # pragma: no cover - only count rules come here
            msg = f"rule {runtime.rule.id!r} has no columnar state"
            raise StateError(msg)
        m = len(index)
        # 1. Persistent key codes, and the tenant's parameters, per candidate.
        kc, missing = self._key_codes(runtime, batch, index, ctx)
        table = ctx.params(runtime)
        btc = ctx.batch_tenant_codes()[index]
        # One stable sort gives the keys, each key's first candidate, and the candidates by
        # (key, arrival), which step 2 needs.
        by_arrival = np.argsort(kc, kind="stable")
        sorted_kc = kc[by_arrival]
        new_key = np.r_[True, sorted_kc[1:] != sorted_kc[:-1]]
        ukeys = sorted_kc[new_key]
        first = by_arrival[new_key]
        kcode = np.empty(m, dtype=np.int64)
        kcode[by_arrival] = np.cumsum(new_key) - 1
        tk = btc[first]
        drop_k = ~table.enabled[tk]
        if runtime.rule.skip_missing:
            drop_k |= missing[first]
        slow_k = table.lower[tk] < 0
        if runtime.slow_codes:
            self._migrate_in(runtime, ukeys[~slow_k & ~drop_k])
        start, end = store.ranges(ukeys)
        held_k = end > start
        last_k = np.full(len(ukeys), _NEVER, dtype=np.int64)
        if held_k.any():
            last_k[held_k] = store.times[end[held_k] - 1]
        times_c = batch.ts[index]
        # 2. Eligibility is judged in arrival order: a key's times must never decrease.
        ks_a = kcode[by_arrival]
        ts_a = times_c[by_arrival]
        same_key = ks_a[1:] == ks_a[:-1]
        slow_k[ks_a[1:][same_key & (ts_a[1:] < ts_a[:-1])]] = True
        if sequence:  # equal times can change earlier hits: the per-event path's business
            slow_k[ks_a[1:][same_key & (ts_a[1:] == ts_a[:-1])]] = True
        starts = np.flatnonzero(np.r_[True, ~same_key])
        slow_k[ks_a[starts][ts_a[starts] <= last_k[ks_a[starts]]]] = True
        # Equal times are fine, unless the same event was delivered twice: that one is the
        # per-event path's (it drops the duplicate).
        ties = np.flatnonzero(same_key & (ts_a[1:] == ts_a[:-1])).tolist()
        if ties:
            arrival = index[by_arrival]
            run_ids: set[str] = {ids[int(arrival[ties[0]])]}
            for prev, pos in itertools.pairwise([-2, *ties]):
                if pos != prev + 1:
                    run_ids = {ids[int(arrival[pos])]}
                following = ids[int(arrival[pos + 1])]
                if following in run_ids:
                    slow_k[ks_a[pos]] = True
                run_ids.add(following)
        if sequence:  # a key that could reach the state cap: the per-event path applies it
            per_key = np.bincount(kcode, minlength=len(ukeys))
            slow_k |= (end - start) + per_key > self.config.max_events_per_key
        fast_k = ~slow_k & ~drop_k
        width_k = table.width[tk]
        fts_all = ts_a[fast_k[ks_a]]
        floor = span = 0
        if len(fts_all):
            floor = int(fts_all.min()) - int(width_k[fast_k].max()) - 1
            span = int(fts_all.max()) - floor + 1
            if len(ukeys) * span >= 2**62:  # an absurd time span in one batch
                fast_k[:] = False
        to_slow = ~fast_k & ~drop_k & held_k
        if to_slow.any():
            self._migrate_out(runtime, ukeys[to_slow])
            start, end = store.ranges(ukeys)
        slow_positions = np.sort(by_arrival[(~fast_k & ~drop_k)[ks_a]])
        remaining = index[slow_positions]
        remaining_codes = kc[slow_positions]
        sel = fast_k[ks_a]
        if not sel.any():
            return remaining, remaining_codes

        # 3. Counts over (t - W, t]: batch events of the key plus its retained events. Sorted by
        # (key, time, arrival); equal times form runs that all see each other.
        fo = by_arrival[sel]
        fks = ks_a[sel]
        fts = ts_a[sel]
        lower_k = table.lower[tk]
        period_k = table.period[tk]
        width_e = width_k[fks]
        comp = fks * span + (fts - floor)
        positions = np.arange(len(comp))
        lo_b = np.searchsorted(comp, comp - width_e, side="right")
        run_end = np.searchsorted(comp, comp, side="right")
        run_start = np.searchsorted(comp, comp, side="left")
        fast_keys = np.flatnonzero(fast_k)
        before = end[fast_keys] - start[fast_keys]
        retained = np.zeros(len(comp), dtype=np.int64)
        total = int(before.sum())
        rows = np.zeros(0, dtype=np.int64)
        ret_comp = np.zeros(0, dtype=np.int64)
        if total:
            offsets = np.cumsum(before) - before
            rows = np.repeat(start[fast_keys] - offsets, before) + np.arange(total)
            ret_comp = np.repeat(fast_keys, before) * span + (
                np.maximum(store.times[rows], floor) - floor
            )
            retained = np.searchsorted(ret_comp, (fks + 1) * span, side="left") - np.searchsorted(
                ret_comp, comp - width_e, side="right"
            )
        if step_bits is not None:
            hit = self._sequence_hits(
                runtime, store, rows, ret_comp, comp, width_e, step_bits[index[fo]]
            )
            held_on_arrival = hit
        else:
            lower_e = lower_k[fks]
            hit = (run_end - lo_b + retained) >= lower_e
            # The count when this event arrived: the condition first held at the first such
            # event.
            held_on_arrival = (positions - lo_b + 1 + retained) >= lower_e

        # 4. Add to the store in (key, time, id) order, then turn hits into alerts.
        event_index = index[fo]
        id_rows = event_index
        if np.any(run_end - run_start > 1):
            id_rows = event_index.copy()
            for a, b in _runs(run_start, run_end):
                id_rows[a:b] = sorted(id_rows[a:b].tolist(), key=ids.__getitem__)
        store.insert(
            ukeys[fks],
            fts,
            ids.words(id_rows),
            hit.astype(np.uint8),
            step_bits[index[fo]] if step_bits is not None else None,
        )
        hit_at = np.flatnonzero(hit)
        if len(hit_at):
            wm_e = wm_after[event_index]
            before_k = np.zeros(len(ukeys), dtype=np.int64)
            before_k[fast_keys] = before
            periods = period_k[fks[hit_at]]
            starts_p = (fts[hit_at] // periods) * periods
            boundary = np.r_[
                True, (fks[hit_at][1:] != fks[hit_at][:-1]) | (starts_p[1:] != starts_p[:-1])
            ]
            group_first = np.flatnonzero(boundary).tolist()
            group_end = [*group_first[1:], len(hit_at)]
            hit_list = hit_at.tolist()
            held = held_on_arrival.tolist()
            run_end_list = run_end.tolist()
            t_list = fts.tolist()
            updates: Counter[str] = Counter()
            for g0, g1 in zip(group_first, group_end, strict=True):
                j0 = hit_list[g0]
                k = int(fks[j0])
                code = int(ukeys[k])
                key = self._key_tuple(runtime, code)
                start_p = int(starts_p[g0])
                open_periods = runtime.open.get(key)
                current = open_periods.get(start_p) if open_periods else None
                n_hits = g1 - g0
                if current is None:
                    window = _view(store, code)
                    q = int(before_k[k]) + j0 - int(np.searchsorted(fks, k))
                    fired = next(j for j in range(j0, run_end_list[j0]) if held[j])
                    params = runtime.params(key[0])
                    self._hit(runtime, key, window, q, int(wm_e[fired]), params, changed, metrics)
                    current = runtime.open[key][start_p]
                    n_hits -= 1
                alert = current.alert
                if n_hits:
                    alert.occurrences += n_hits
                    alert.last_seen_us = max(alert.last_seen_us, t_list[hit_list[g1 - 1]])
                    updates[key[0]] += n_hits
                    changed[alert.id] = alert
            for tenant, n_updates in updates.items():
                metrics.alert_updates[(tenant, runtime.rule.id)] += n_updates

        # 5. Evict what the watermark has passed, for the tenants of this batch.
        self._compact_store(runtime, ctx.tenant_pcodes_present())
        return remaining, remaining_codes

    def _sequence_hits(
        self,
        runtime: _RuleRuntime,
        store: CountStore,
        rows: npt.NDArray[np.int64],
        ret_comp: npt.NDArray[np.int64],
        comp: npt.NDArray[np.int64],
        width_e: npt.NDArray[np.int64],
        tags_e: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.bool_]:
        """Which in-order batch events complete the sequence, as :func:`sequence_at` decides.

        Retained rows (``rows`` of the store, at ``ret_comp``) and batch events (at ``comp``,
        strictly later per key, no equal times) are merged per key; the greedy scan becomes,
        per step, a search in the prefix counts of that step's events.
        """
        n_ret = len(rows)
        tags_r = store.tags[rows] if store.tags is not None else np.zeros(n_ret, dtype=np.int64)
        all_comp = np.concatenate([ret_comp, comp])
        all_tags = np.concatenate([tags_r, tags_e])
        order = np.argsort(all_comp, kind="stable")
        all_comp = all_comp[order]
        all_tags = all_tags[order]
        pos = np.empty(len(order), dtype=np.int64)
        pos[order] = np.arange(len(order))
        pos = pos[n_ret:]
        lo = np.searchsorted(all_comp, comp - width_e, side="right")
        counts = runtime.step_counts
        last = len(counts) - 1
        ok = (tags_e & (1 << last)) != 0
        p = lo
        for stage in range(last):
            prefix = np.r_[0, np.cumsum((all_tags >> stage) & 1)]
            target = prefix[p] + counts[stage]
            done = np.searchsorted(prefix, target, side="left") - 1
            ok &= done < pos
            p = np.where(ok, done + 1, p)
        need = counts[last] - 1
        if need:
            prefix = np.r_[0, np.cumsum((all_tags >> last) & 1)]
            ok &= prefix[pos] - prefix[p] >= need
        return np.asarray(ok, dtype=np.bool_)

    # --- columnar state of rules ----------------------------------------------------------

    def _key_codes(
        self,
        runtime: _RuleRuntime,
        batch: EventBatch,
        index: npt.NDArray[np.intp],
        ctx: _BatchKeys,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Persistent key codes of the events at ``index``, and whether a group value is None."""
        codes = ctx.tenant_pcodes()[index] << GROUP_BITS
        specs = runtime.group_specs
        if not specs:
            return codes, np.zeros(len(index), dtype=np.bool_)
        if len(specs) == 1:
            group, missing = ctx.spec_codes(specs[0], index)
            return codes | group, missing
        combo = runtime.combo
        if combo is None:  # pragma: no cover - built with the runtime for several specs
            msg = f"rule {runtime.rule.id!r} has no group vocabulary"
            raise StateError(msg)
        idx = index.tolist()
        columns = [ctx.spec_values(spec, idx) for spec in specs]
        combos = list(zip(*columns, strict=True))
        missing = np.array([any(v is None for v in c) for c in combos], dtype=np.bool_)
        return codes | combo.codes(combos), missing

    def _codes_of(
        self, runtime: _RuleRuntime, keys: Sequence[tuple[Any, ...]]
    ) -> npt.NDArray[np.int64]:
        """The persistent codes of key tuples (assigning codes as needed), in one lookup per
        vocabulary: a packed lookup has a fixed cost per call, and a restore has every key."""
        plain = [_plain(key) for key in keys]
        codes = self._tenants.codes([p[0] for p in plain]) << GROUP_BITS
        specs = runtime.group_specs
        if len(specs) == 1:
            codes |= self._groups.codes([p[1] for p in plain])
        elif specs and runtime.combo is not None:
            codes |= runtime.combo.codes([tuple(p[1:]) for p in plain])
        return codes

    def _key_tuple(self, runtime: _RuleRuntime, code: int) -> tuple[Any, ...]:
        """The key tuple of a persistent key code."""
        tenant = self._tenants.values[code >> GROUP_BITS]
        group = code & GROUP_MASK
        specs = runtime.group_specs
        if not specs:
            return (tenant,)
        if len(specs) == 1:
            return _key([tenant, self._groups.values[group]])
        combo = runtime.combo
        values = combo.values[group] if combo is not None else ()
        return _key([tenant, *values])

    def _migrate_out(self, runtime: _RuleRuntime, codes: npt.NDArray[np.int64]) -> None:
        """Move keys from the columnar store to per-key windows (for the per-event path)."""
        if runtime.store is None:
            return
        pending = runtime.pending
        for block in runtime.store.take(codes):
            key = self._key_tuple(runtime, block.code)
            window = KeyWindow()
            window.times = block.times
            window.ids = block.ids
            window.tags = self._tag_values(runtime, block.tags)
            window.hits = block.hits
            if pending is not None:  # the compaction it missed (see _compact_store)
                c = block.code >> GROUP_BITS
                if c < len(pending[0]) and pending[0][c] != _NEVER:
                    keep = int(pending[2][c])
                    window.compact(
                        int(pending[0][c]),
                        int(pending[1][c]),
                        keep if keep != _NO_KEEP else None,
                        distinct=False,
                        finished_tag=runtime.finished_tag,
                    )
            runtime.windows[key] = window
            runtime.slow_codes[block.code] = key

    def _migrate_in(self, runtime: _RuleRuntime, codes: npt.NDArray[np.int64]) -> None:
        """Move keys with monotone conditions from per-key windows back to the store."""
        store = runtime.store
        if store is None:
            return
        slow = runtime.slow_codes
        keys: list[int] = []
        times: list[int] = []
        event_ids: list[str] = []
        tags: list[Any] = []
        hits = bytearray()
        for code in sorted(codes.tolist()):
            key = slow.pop(code, None)
            if key is None:
                continue
            window = runtime.windows.pop(key, None)
            if window is not None and window.times:
                keys.extend([code] * len(window.times))
                times.extend(window.times)
                event_ids.extend(window.ids)
                tags.extend(window.tags)
                hits.extend(window.hits)
        if keys:
            tag_codes: npt.NDArray[np.int64] | None = None
            if runtime.tag_vocab is not None:
                tag_codes = runtime.tag_vocab.codes(tags)
            elif store.tags is not None:
                tag_codes = np.array(tags, dtype=np.int64)
            store.insert(
                np.array(keys, dtype=np.int64),
                np.array(times, dtype=np.int64),
                encode_ids(event_ids),
                np.frombuffer(bytes(hits), dtype=np.uint8),
                tag_codes,
            )

    @staticmethod
    def _tag_values(runtime: _RuleRuntime, tags: list[Any]) -> list[Any]:
        """A block's tags as a window holds them (a distinct rule's values, not codes)."""
        vocab = runtime.tag_vocab
        if vocab is None:
            return tags
        values = vocab.values
        return [values[c] for c in tags]

    def _compact_store(
        self, runtime: _RuleRuntime, tenant_codes: Iterable[int], *, force: bool = False
    ) -> None:
        """Evict store rows of these tenants' keys that their watermarks have passed.

        A count rule defers this until its store grew by a quarter (or ``force``): rows a
        watermark has passed are never counted (windows end at the event), and a key's rows
        beyond ``keep`` only ever raise a count that is capped at ``keep``, so what is
        detected is the same; a key leaving for the per-event path is compacted first
        (:meth:`_migrate_out`), and a snapshot compacts, so state is as if never deferred.
        The watermarks are those of each tenant's last batch, as if compacted then."""
        store = runtime.store
        if store is None:
            return
        if not len(store):
            runtime.pending, runtime.rows_after_compact = None, 0
            return
        size = len(self._tenants.values)
        if runtime.pending is not None and len(runtime.pending[0]) >= size:
            wm, width, keep = runtime.pending
        else:
            wm = np.full(size, _NEVER, dtype=np.int64)
            width = np.zeros(size, dtype=np.int64)
            keep = np.full(size, _NO_KEEP, dtype=np.int64)
            if runtime.pending is not None:
                held = len(runtime.pending[0])
                wm[:held], width[:held], keep[:held] = runtime.pending
        values = self._tenants.values
        for c in tenant_codes:
            tenant = values[c]
            seen = self._max_seen.get(tenant)
            if seen is None:
                continue
            params = runtime.params(tenant)
            # Overwritten, not raised: a freed tenant code may belong to another tenant now.
            wm[c] = seen - self._lateness_us
            width[c] = params.window_us
            keep[c] = params.keep if params.keep is not None else _NO_KEEP
        growth = len(store) - runtime.rows_after_compact
        if runtime.kind == "threshold" and not force and growth * 4 < runtime.rows_after_compact:
            runtime.pending = (wm, width, keep)
            return
        runtime.pending = None
        tenant_of = store.keys >> GROUP_BITS
        store.compact(
            wm[tenant_of],
            width[tenant_of],
            keep[tenant_of] if runtime.kind != "sequence" else None,
            runtime.finished_tag,
            distinct=(
                plain_classes(runtime.tag_vocab, store.tags)
                if runtime.tag_vocab is not None and store.tags is not None
                else None
            ),
        )
        runtime.rows_after_compact = len(store)
        runtime.store_keys = store.n_keys()

    def _after_insert(
        self,
        runtime: _RuleRuntime,
        key: tuple[Any, ...],
        window: KeyWindow,
        pos: int,
        wm: int,
        params: _Params,
        changed: dict[str, Alert],
        metrics: MetricDeltas,
    ) -> None:
        width = params.window_us
        t = window.times[pos]
        if params.lower is not None:
            # Monotone: the new event can only add hits, at positions in [t, t + W).
            times = window.times
            hits = window.hits
            start = pos
            while start > 0 and times[start - 1] == t:
                start -= 1
            end = len(times)
            if times[-1] >= t + width:
                end = bisect_left(times, t + width, start)
            for q in range(start, end):
                if not hits[q] and self._holds(runtime, window, q, params):
                    hits[q] = 1
                    self._hit(runtime, key, window, q, wm, params, changed, metrics)
            self._refresh_evidence(runtime, key, window, t, params, changed)
        else:
            self._refresh_evidence(runtime, key, window, t, params, changed)
            self._settle(runtime, key, window, wm, params, changed, metrics)
        window.compact(
            wm,
            width,
            params.keep,
            distinct=runtime.kind == "distinct",
            finished_tag=params.finished_tag,
        )
        self._close_periods(runtime, key, wm)

    def _holds(self, runtime: _RuleRuntime, window: KeyWindow, q: int, params: _Params) -> bool:
        if runtime.kind == "sequence":
            return sequence_at(window, q, params.window_us, runtime.step_counts) is not None
        lo, hi = window_range(window, q, params.window_us)
        count = len(distinct_at(window, lo, hi)) if runtime.kind == "distinct" else hi - lo
        return bool(params.holds(count))

    def _settle(
        self,
        runtime: _RuleRuntime,
        key: tuple[Any, ...],
        window: KeyWindow,
        wm: int,
        params: _Params,
        changed: dict[str, Alert],
        metrics: MetricDeltas,
    ) -> None:
        """Non-monotone rules: evaluate positions the watermark has passed, once each."""
        times = window.times
        q = window.settled
        while q < len(times) and times[q] < wm:
            if self._holds(runtime, window, q, params):
                window.hits[q] = 1
                self._hit(runtime, key, window, q, wm, params, changed, metrics)
            q += 1
        window.settled = q

    def _describe(
        self, runtime: _RuleRuntime, window: KeyWindow, q: int, params: _Params
    ) -> tuple[int, list[str], int, int]:
        """Count, evidence ids and window bounds of the hit at position q."""
        cap = self.config.evidence_cap
        lo, hi = window_range(window, q, params.window_us)
        if runtime.kind == "sequence":
            used = sequence_at(window, q, params.window_us, runtime.step_counts) or [q]
            count = len(used)
            evidence = [window.ids[p] for p in used][-cap:]
        elif runtime.kind == "distinct":
            latest = distinct_at(window, lo, hi)
            positions = sorted(latest.values())
            count = min(len(positions), params.keep or len(positions))
            evidence = [window.ids[p] for p in positions][-cap:]
        else:
            count = hi - lo
            if params.keep is not None:
                count = min(count, params.keep)
            evidence = window.ids[max(lo, hi - cap) : hi]
        t = window.times[q]
        return count, evidence, t - params.window_us, t

    def _hit(
        self,
        runtime: _RuleRuntime,
        key: tuple[Any, ...],
        window: KeyWindow,
        q: int,
        wm: int,
        params: _Params,
        changed: dict[str, Alert],
        metrics: MetricDeltas,
    ) -> None:
        t = window.times[q]
        event_id = window.ids[q]
        period = params.suppression_us
        start = (t // period) * period
        periods = runtime.open.setdefault(key, {})
        current = periods.get(start)
        tenant = key[0]
        rule = runtime.rule
        if current is None:
            group = dict(zip(runtime.group_names, _plain(key)[1:], strict=True))
            fp = fingerprint(tenant, rule.id, group)
            count, evidence, w_start, w_end = self._describe(runtime, window, q, params)
            alert = Alert(
                id=alert_id(fp, start),
                fingerprint=fp,
                tenant_id=tenant,
                rule_id=rule.id,
                rule_version=params.version,
                group=group,
                severity=str(rule.severity),
                type=str(rule.type),
                title="",
                description="",
                tags=list(rule.tags),
                first_seen_us=t,
                last_seen_us=t,
                occurrences=1,
                count=count,
                evidence_ids=evidence,
                window_start_us=w_start,
                window_end_us=w_end,
                watermark_us=wm,
                period_start_us=start,
                period_end_us=start + period,
            )
            self._render(runtime, alert, params)
            periods[start] = _Open(alert, t, event_id, self._wake)
            metrics.alerts[(tenant, rule.id, alert.severity)] += 1
        else:
            alert = current.alert
            alert.occurrences += 1
            alert.last_seen_us = max(alert.last_seen_us, t)
            if (t, event_id) < (current.first_t, current.first_id):
                current.first_t = t
                current.first_id = event_id
                alert.first_seen_us = t
                self._redescribe(runtime, window, q, params, alert)
            metrics.alert_updates[(tenant, rule.id)] += 1
        changed[alert.id] = alert

    def _redescribe(
        self, runtime: _RuleRuntime, window: KeyWindow, q: int, params: _Params, alert: Alert
    ) -> None:
        count, evidence, w_start, w_end = self._describe(runtime, window, q, params)
        alert.count = count
        alert.evidence_ids = evidence
        alert.window_start_us = w_start
        alert.window_end_us = w_end
        self._render(runtime, alert, params)

    def _refresh_evidence(
        self,
        runtime: _RuleRuntime,
        key: tuple[Any, ...],
        window: KeyWindow,
        t: int,
        params: _Params,
        changed: dict[str, Alert],
    ) -> None:
        """A new event inside an open alert's first window updates its count and evidence."""
        periods = runtime.open.get(key)
        if not periods:
            return
        for current in periods.values():
            if t <= current.first_t < t + params.window_us:
                q = window.find(current.first_t, current.first_id)
                if q >= 0:
                    self._redescribe(runtime, window, q, params, current.alert)
                    changed[current.alert.id] = current.alert

    def _render(self, runtime: _RuleRuntime, alert: Alert, params: _Params) -> None:
        rule = runtime.rule
        window_s = params.window_us / _US
        values: dict[str, object] = {
            "count": alert.count,
            "threshold": params.lower if params.lower is not None else "",
            "window_seconds": int(window_s) if window_s == int(window_s) else window_s,
            "window": _human(window_s),
            "tenant": alert.tenant_id,
            "rule_id": rule.id,
            "group": ", ".join("unknown" if v is None else str(v) for v in alert.group.values()),
        }
        for name, value in alert.group.items():
            values[name.replace(".", "_")] = "unknown" if value is None else value
        alert.title = rule.render("title", values)
        alert.description = rule.render("description", values)
        alert.metadata = {
            "patternType": rule.id.upper(),
            "organizationId": alert.tenant_id,
            "eventCount": alert.count,
            "timeWindow": round(window_s * 1000),
            **alert.group,
        }

    def _close_periods(self, runtime: _RuleRuntime, key: tuple[Any, ...], wm: int) -> None:
        periods = runtime.open.get(key)
        if not periods:
            return
        for start in [s for s, o in periods.items() if o.period_end <= wm]:
            del periods[start]
        if not periods:
            del runtime.open[key]

    def _sweep(
        self,
        runtime: _RuleRuntime,
        changed: dict[str, Alert],
        metrics: MetricDeltas,
        *,
        final: bool,
    ) -> None:
        """Visit every key: settle, evict, and forget keys with nothing left."""
        runtime.events_since_sweep = 0
        store = runtime.store
        if not final and store is not None:
            if len(store):
                tenants = np.flatnonzero(np.bincount(store.keys >> GROUP_BITS)).tolist()
                self._compact_store(runtime, tenants, force=True)
            for key in [k for k in runtime.open if k not in runtime.windows]:
                seen = self._max_seen.get(key[0])
                if seen is not None:
                    self._close_periods(runtime, key, seen - self._lateness_us)
        for key in list(runtime.windows):
            window = runtime.windows[key]
            tenant = key[0]
            params = runtime.params(tenant)
            seen = self._max_seen.get(tenant)
            wm = _FOREVER if final else (seen - self._lateness_us if seen is not None else 0)
            if params.lower is None:
                self._settle(runtime, key, window, wm, params, changed, metrics)
            if not final:
                window.compact(
                    wm,
                    params.window_us,
                    params.keep,
                    distinct=runtime.kind == "distinct",
                    finished_tag=params.finished_tag,
                )
                self._close_periods(runtime, key, wm)
                if not window.times and key not in runtime.open:
                    del runtime.windows[key]

    def _maybe_forget_codes(self) -> None:
        """Free the codes of tenants and group values no state refers to any more."""
        total = self._vocab_sizes()
        if _VOCAB_GC_MIN and total < max(_VOCAB_GC_MIN, 2 * self._live_codes):
            return
        live_tenants: set[int] = set()
        live_groups: set[int] = set()
        for runtime in self._rules:
            if runtime.store is None:
                continue
            runtime.slow_codes = {
                c: k for c, k in runtime.slow_codes.items() if k in runtime.windows
            }
            codes = np.concatenate(
                [runtime.store.key_codes(), np.array(list(runtime.slow_codes), dtype=np.int64)]
            )
            live_tenants.update((codes >> GROUP_BITS).tolist())
            groups = (codes & GROUP_MASK).tolist()
            if len(runtime.group_specs) == 1:
                live_groups.update(groups)
            elif runtime.combo is not None:
                runtime.combo.retain(groups)
            if runtime.tag_vocab is not None and runtime.store.tags is not None:
                live_groups.update(np.unique(runtime.store.tags).tolist())
        self._tenants.retain(live_tenants)
        self._groups.retain(live_groups)
        self._live_codes = self._vocab_sizes()
        # A freed tenant code may be given to another tenant: a deferred compaction must not
        # apply the old tenant's watermark to the new one's rows.
        for runtime in self._rules:
            if runtime.pending is not None:
                wm = runtime.pending[0]
                freed = np.ones(len(wm), dtype=np.bool_)
                freed[[c for c in live_tenants if c < len(wm)]] = False
                wm[freed] = _NEVER

    def _vocab_sizes(self) -> int:
        """Codes held by every vocabulary (tenants, group values, combinations, tags)."""
        total = len(self._tenants) + len(self._groups)
        for runtime in self._rules:
            total += len(runtime.combo) if runtime.combo is not None else 0
        return total

    def _store_snapshot(self, runtime: _RuleRuntime) -> list[list[Any]]:
        """A rule's columnar keys in the per-key window format of a snapshot (a distinct
        rule's tags as the values themselves)."""
        if runtime.store is None:
            return []
        return [
            [
                _plain(self._key_tuple(runtime, b.code)),
                [b.times, b.ids, self._tag_values(runtime, b.tags), list(b.hits), 0],
            ]
            for b in runtime.store.blocks()
        ]

    def _adopt_windows(self, runtime: _RuleRuntime) -> None:
        """After a restore: move keys with monotone conditions into the store."""
        if runtime.store is None:
            return
        keys = list(runtime.windows)
        codes = []
        for key, code in zip(keys, self._codes_of(runtime, keys).tolist(), strict=True):
            runtime.slow_codes[code] = key
            if runtime.params(key[0]).lower is not None:
                codes.append(code)
        self._migrate_in(runtime, np.array(codes, dtype=np.int64))
        runtime.store_keys = runtime.store.n_keys()

    # --- snapshot / restore ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole detector state as plain data (JSON- and msgpack-friendly)."""
        rules: dict[str, Any] = {}
        for runtime in self._rules:
            if runtime.pending is not None:
                self._compact_store(runtime, (), force=True)
            rules[runtime.rule.id] = {
                "version": runtime.rule.version,
                "events_since_sweep": runtime.events_since_sweep,
                "keys": [
                    *([_plain(k), w.snapshot()] for k, w in runtime.windows.items()),
                    *self._store_snapshot(runtime),
                ],
                "open": [
                    [_plain(k), o.first_t, o.first_id, _alert_state(o.view())]
                    for k, periods in runtime.open.items()
                    for o in periods.values()
                ],
            }
        return {
            "format": "rayworker.detector",
            "version": _SNAPSHOT_VERSION,
            "lateness_us": self._lateness_us,
            "max_seen": dict(self._max_seen),
            "rules": rules,
            "integrity": self.integrity.snapshot() if self.integrity is not None else [],
        }

    @classmethod
    def restore(
        cls,
        pack: RulePack,
        snapshot: dict[str, Any],
        overrides: Overrides | None = None,
        config: DetectorConfig | None = None,
        clock: Clock | None = None,
        *,
        integrity: IntegrityConfig | None = None,
    ) -> Detector:
        """A detector that continues exactly where the snapshot was taken."""
        if snapshot.get("format") != "rayworker.detector":
            msg = "not a detector snapshot (missing format 'rayworker.detector')"
            raise StateError(msg)
        if snapshot.get("version") != _SNAPSHOT_VERSION:
            msg = (
                f"snapshot version {snapshot.get('version')!r} is not supported; "
                f"this rayworker reads version {_SNAPSHOT_VERSION}"
            )
            raise StateError(msg)
        detector = cls(pack, overrides, config, clock, integrity=integrity)
        if detector.integrity is not None:
            detector.integrity.restore(snapshot.get("integrity", []))
        stored = snapshot.get("rules", {})
        for runtime in detector._rules:
            data = stored.get(runtime.rule.id)
            if data is None:
                continue
            if data.get("version") != runtime.rule.version:
                msg = (
                    f"rule {runtime.rule.id!r} changed since the snapshot "
                    f"(version {data.get('version')} -> {runtime.rule.version}); "
                    "start it from an empty state or restore with the old rules"
                )
                raise StateError(msg)
            try:
                runtime.events_since_sweep = int(data.get("events_since_sweep", 0))
                for key, window in data["keys"]:
                    runtime.windows[_key(key)] = KeyWindow.restore(window)
                detector._adopt_windows(runtime)
                for key, first_t, first_id, state in data["open"]:
                    alert = Alert(**state)
                    periods = runtime.open.setdefault(_key(key), {})
                    periods[alert.period_start_us] = _Open(
                        alert, int(first_t), str(first_id), detector._wake
                    )
            except (KeyError, TypeError, ValueError) as exc:
                msg = f"snapshot state of rule {runtime.rule.id!r} is corrupt: {exc}"
                raise StateError(msg) from exc
        detector._max_seen = {str(k): int(v) for k, v in snapshot.get("max_seen", {}).items()}
        return detector


def screen_batch(
    batch: EventBatch,
    rejections: Iterable[Rejection],
    *,
    start_index: int,
    config: DetectorConfig,
    now_us: int,
    max_seen: dict[str, int],
    integrity: IntegrityMonitor | None = None,
) -> tuple[DetectionResult, npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """The per-tenant bookkeeping before any rule runs, shared by a detector and a router.

    Rejects future-dated events, verifies event integrity (``integrity``: rejects what its
    policies refuse, counts violations and returns their alerts in the result), advances each
    tenant's watermark (``max_seen`` is updated in place), reports late events and counts
    events, rejections and naive timestamps. Returns the result so far, which events rules may
    count, and each event's watermark after it. A violating event stays usable: a tampered
    failed login still counts.
    """
    result = DetectionResult(rejections=list(rejections))
    metrics = result.metrics
    n = len(batch)
    accepted = np.ones(n, dtype=np.bool_)

    def tenant_of(i: int) -> str:
        return str(batch.value_at("organizationId", i))

    if n and config.max_future_s is not None:
        horizon = now_us + round(config.max_future_s * _US)
        for i in np.flatnonzero(batch.ts > horizon).tolist():
            accepted[i] = False
            msg = (
                f"timestamp {iso_utc(int(batch.ts[i]))} is more than "
                f"{config.max_future_s:g} s ahead of the clock; fix the producer's clock"
            )
            result.rejections.append(
                Rejection(
                    RejectReason.FUTURE_TIMESTAMP,
                    "timestamp",
                    msg,
                    batch.raw[i],
                    start_index + batch.line_of(i),
                    tenant_of(i),
                )
            )
    checked = integrity.check(batch, accepted, start_index) if integrity is not None else None
    if checked is not None:
        result.rejections.extend(checked.rejections)
    for rejection in result.rejections:
        metrics.rejected[(rejection.tenant, rejection.reason.value)] += 1
    if batch.naive:
        for i, event in enumerate(batch.events):
            if event.timestamp.tzinfo is None:
                metrics.naive_timestamps[tenant_of(i)] += 1
    if n == 0:
        return result, accepted, np.zeros(0, dtype=np.int64)
    lateness_us = round(config.allowed_lateness_s * _US)
    wm_after, late = _advance_watermarks(max_seen, lateness_us, batch, accepted)
    if late.any():
        ids = batch.ids()
        for i in np.flatnonzero(late).tolist():
            result.late.append(
                LateEvent(
                    ids[i],
                    tenant_of(i),
                    int(batch.ts[i]),
                    int(wm_after[i]),
                    start_index + batch.line_of(i),
                )
            )
            metrics.late[tenant_of(i)] += 1
    usable = accepted & ~late
    codes, vocab = batch.codes("organizationId")
    per_tenant = np.bincount(codes[usable], minlength=len(vocab)).tolist()
    for code, count in enumerate(per_tenant):
        if count:
            metrics.events[vocab[code]] += count
    if integrity is not None:
        result.alerts.extend(
            integrity.raise_alerts(batch, checked, wm_after, max_seen, lateness_us, metrics)
        )
    return result, usable, wm_after


def integrity_monitor(
    integrity: IntegrityConfig | None, config: DetectorConfig, pack: RulePack
) -> IntegrityMonitor | None:
    """The integrity screening of a detector or router; None when every policy is ``off``."""
    if integrity is None or not integrity.enabled:
        return None
    return IntegrityMonitor(
        integrity,
        suppression_s=config.suppression_s,
        evidence_cap=config.evidence_cap,
        rule_ids=[rule.id for rule in pack.rules],
    )


def _advance_watermarks(
    max_seen: dict[str, int],
    lateness: int,
    batch: EventBatch,
    accepted: npt.NDArray[np.bool_],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Per event: the tenant's watermark after it, and whether it was late.

    Vectorised as a running maximum per tenant (tenants are made disjoint by offsets); the
    per-event loop is kept for time spans too wide for the offsets.
    """
    codes, vocab = batch.codes("organizationId")
    ts = batch.ts
    prior = np.array([max_seen.get(t, _NEVER) for t in vocab], dtype=np.int64)
    known = prior != _NEVER
    lo = int(ts.min())
    hi = int(ts.max())
    if known.any():
        lo = min(lo, int(prior[known].min()))
        hi = max(hi, int(prior[known].max()))
    width = hi - lo + 2
    if width * (len(vocab) + 1) >= 2**62:
        return _advance_watermarks_loop(max_seen, lateness, batch.tenants, ts, accepted)
    # Shifted so that 0 means "nothing seen" and each tenant's values sit above the previous.
    value = np.where(accepted, ts - lo + 1, 0)
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order].astype(np.int64)
    offset = sorted_codes * width
    running = np.maximum.accumulate(value[order] + offset) - offset
    prior_v = np.where(known, prior - lo + 1, 0)[sorted_codes]
    after_v = np.maximum(running, prior_v)
    before_v = np.empty_like(after_v)
    before_v[0] = prior_v[0]
    same = sorted_codes[1:] == sorted_codes[:-1]
    before_v[1:] = np.where(same, after_v[:-1], prior_v[1:])
    seen_after = np.empty_like(after_v)
    seen_before = np.empty_like(after_v)
    seen_after[order] = after_v
    seen_before[order] = before_v
    t_v = ts - lo + 1
    late = accepted & (seen_before > 0) & (t_v < seen_before - lateness)
    wm_after = np.where(
        accepted,
        seen_after + (lo - 1) - lateness,
        np.where(seen_before > 0, seen_before + (lo - 1), ts) - lateness,
    )
    last = np.zeros(len(vocab), dtype=np.int64)
    np.maximum.at(last, codes, value)
    for code in np.flatnonzero(last > 0).tolist():
        seen = int(last[code]) + lo - 1
        tenant = vocab[code]
        if seen > max_seen.get(tenant, _NEVER):
            max_seen[tenant] = seen
    return wm_after.astype(np.int64), late


def _advance_watermarks_loop(
    max_seen: dict[str, int],
    lateness: int,
    tenants: list[str],
    ts: npt.NDArray[np.int64],
    accepted: npt.NDArray[np.bool_],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Per event: the tenant's watermark after it, and whether it was late."""
    n = len(tenants)
    wm_after = np.empty(n, dtype=np.int64)
    late = np.zeros(n, dtype=np.bool_)
    times = ts.tolist()
    ok = accepted.tolist()
    for i in range(n):
        tenant = tenants[i]
        t = times[i]
        seen = max_seen.get(tenant)
        if not ok[i]:
            wm_after[i] = (seen if seen is not None else t) - lateness
            continue
        if seen is None or t > seen:
            max_seen[tenant] = seen = t
        elif t < seen - lateness:
            late[i] = True
        wm_after[i] = seen - lateness
    return wm_after, late


def group_column(batch: EventBatch, spec: tuple[str, ...]) -> list[Any]:
    """Each event's value of one group key: the first non-missing of its paths."""
    if len(spec) == 1:
        return batch.values(spec[0])
    merged = list(batch.values(spec[0]))
    for path in spec[1:]:
        other = batch.values(path)
        merged = [m if m is not None else o for m, o in zip(merged, other, strict=True)]
    return merged


def rule_signature(rule: Rule) -> tuple[tuple[str, ...], ...]:
    """A rule's group signature: its ``group_by`` as field paths (coalesced keys as tuples).

    Rules with equal signatures keep state under equal keys, so a router sends an event to
    one shard per distinct signature (:func:`rayworker.routing.route`).
    """
    return tuple(
        (spec,) if isinstance(spec, str) else tuple(spec.coalesce) for spec in rule.group_by
    )


def group_signatures(pack: RulePack) -> tuple[tuple[tuple[str, ...], ...], ...]:
    """The distinct rule signatures of a pack, in rule order (the order routers use)."""
    return tuple(dict.fromkeys(rule_signature(rule) for rule in pack.rules))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FOREVER = 2**62


def _runs(run_start: npt.NDArray[np.intp], run_end: npt.NDArray[np.intp]) -> list[tuple[int, int]]:
    """The [start, end) slices of runs longer than one."""
    long_runs = np.flatnonzero((run_end - run_start > 1) & (np.arange(len(run_start)) == run_start))
    return [(int(run_start[i]), int(run_end[i])) for i in long_runs]


class _Typed:
    """A bool or float group value that stays apart from the int it equals in Python.

    ``1 == 1.0 == True`` share a dict slot, but routing hashes their JSON forms (``1``, ``1.0``,
    ``true``) to different key groups; windows must keep them apart too, or one detector and
    a sharded pipeline would disagree.
    """

    __slots__ = ("value",)

    def __init__(self, value: bool | float) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is _Typed
            and type(other.value) is type(self.value)
            and other.value == self.value
        )

    def __hash__(self) -> int:
        return hash((type(self.value), self.value))

    def __repr__(self) -> str:
        return repr(self.value)


def _key(raw: list[Any]) -> tuple[Any, ...]:
    return tuple(_Typed(v) if type(v) is bool or type(v) is float else v for v in raw)


def _plain(key: tuple[Any, ...]) -> list[Any]:
    return [v.value if type(v) is _Typed else v for v in key]


def _alert_state(alert: Alert) -> dict[str, Any]:
    return {
        name: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
        for name in Alert.__slots__
        for v in [getattr(alert, name)]
    }


def _human(seconds: float) -> str:
    if seconds % 86400 == 0:
        return f"{int(seconds // 86400)}d"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


_OFFSET_STEP_US = 15 * 60 * _US  # every real UTC offset change falls on a quarter hour


def _utc_offsets_us(zone: ZoneInfo, micros: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """UTC offset of ``zone`` at each instant, computed once per quarter hour present."""
    if zone.key == "UTC":
        return np.zeros(len(micros), dtype=np.int64)
    buckets, inverse = np.unique(micros // _OFFSET_STEP_US, return_inverse=True)
    offsets = np.empty(len(buckets), dtype=np.int64)
    for k, bucket in enumerate(buckets.tolist()):
        instant = _EPOCH + timedelta(microseconds=bucket * _OFFSET_STEP_US)
        delta = instant.astimezone(zone).utcoffset()
        offsets[k] = 0 if delta is None else delta // timedelta(microseconds=1)
    return offsets[inverse]
