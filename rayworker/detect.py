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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import numpy.typing as npt

from rayworker.alerts import Alert, alert_id, fingerprint, iso_utc
from rayworker.clock import Clock, SystemClock, now_us
from rayworker.errors import ConfigError, StateError
from rayworker.events import (
    DecodeResult,
    EventBatch,
    EventDecoder,
    Rejection,
    RejectReason,
)
from rayworker.events import (
    _factorise as _factorise_values,
)
from rayworker.integrity import IntegrityConfig, IntegrityMonitor
from rayworker.rules import (
    DistinctRule,
    Overrides,
    RulePack,
    SequenceRule,
    compile_filter,
    compile_steps,
)
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
_SNAPSHOT_VERSION = 1
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


class _Open:
    """An alert whose suppression period can still receive hits."""

    __slots__ = ("alert", "first_id", "first_t")

    def __init__(self, alert: Alert, first_t: int, first_id: str) -> None:
        self.alert = alert
        self.first_t = first_t
        self.first_id = first_id


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
        self.open: dict[tuple[Any, ...], dict[int, _Open]] = {}
        self._params: dict[str, _Params] = {}
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
        self._params[tenant] = cached
        return cached


def _outside_hours(
    runtime: _RuleRuntime, batch: EventBatch, index: npt.NDArray[np.intp]
) -> npt.NDArray[np.bool_]:
    """For time_of_day rules: which candidate events fall outside business hours."""
    tenants = batch.tenants
    out = np.zeros(len(index), dtype=np.bool_)
    by_tenant: dict[str, list[int]] = {}
    for j, i in enumerate(index.tolist()):
        by_tenant.setdefault(tenants[i], []).append(j)
    for tenant, rows in by_tenant.items():
        params = runtime.params(tenant)
        if params.outside is None or params.zone is None:
            continue
        sel = np.asarray(rows, dtype=np.intp)
        micros = batch.ts[index[sel]]
        local = micros + _utc_offsets_us(params.zone, micros)
        minutes = (local // (60 * _US)) % 1440
        weekday = ((local // (86400 * _US)) + 3) % 7  # 1970-01-01 was a Thursday
        out[sel] = params.outside[weekday * 1440 + minutes]
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
        for rule in pack.rules:
            fields |= set(rule.fields())
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
        decoded = self.decoder.decode(lines)
        if decoded.rejections:
            first = decoded.rejections[0]
            msg = (
                f"a routed event failed to decode here ({first.message}); the router and "
                "this shard must run the same rayworker version and rules"
            )
            raise StateError(msg)
        batch = decoded.batch
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
        tenants = batch.tenants
        ids = batch.ids()
        changed: dict[str, Alert] = {}
        duplicate_rows: set[int] = set()
        for runtime in self._rules:
            usable = usable_for(runtime)
            if not usable.any():
                continue
            self._run_rule(runtime, batch, usable, wm_after, ids, changed, duplicate_rows, metrics)
        for i in duplicate_rows:
            if primary[i]:
                metrics.duplicates[tenants[i]] += 1
        result.alerts.extend(changed.values())

    def flush(self) -> DetectionResult:
        """End of input: settle every pending evaluation as if the watermark were infinite."""
        result = DetectionResult()
        changed: dict[str, Alert] = {}
        for runtime in self._rules:
            self._sweep(runtime, changed, result.metrics, final=True)
        result.alerts = list(changed.values())
        return result

    def active_keys(self) -> int:
        """Number of (rule, tenant, group) keys holding window state."""
        return sum(len(r.windows) for r in self._rules)

    def watermark(self, tenant: str) -> int | None:
        """A tenant's watermark in microseconds since the epoch, or None if unseen."""
        seen = self._max_seen.get(tenant)
        return None if seen is None else seen - self._lateness_us

    # --- watermarks ------------------------------------------------------------------------

    # --- rules -----------------------------------------------------------------------------

    def _group_columns(self, runtime: _RuleRuntime, batch: EventBatch) -> list[list[Any]]:
        return [self._group_columns_for(batch, spec) for spec in runtime.group_specs]

    def _candidates(
        self, runtime: _RuleRuntime, batch: EventBatch, usable: npt.NDArray[np.bool_]
    ) -> tuple[npt.NDArray[np.bool_], list[int] | None]:
        """Which events the rule counts, and for sequences each event's step bit mask."""
        mask = usable & runtime.predicate.mask(batch)
        step_tags: list[int] | None = None
        if runtime.steps:
            bits = np.zeros(len(batch), dtype=np.int64)
            for k, step in enumerate(runtime.steps):
                bits |= step.mask(batch).astype(np.int64) << k
            mask &= bits != 0
            step_tags = bits.tolist()
        return mask, step_tags

    def _run_rule(  # noqa: PLR0915 - the per-event loop is hot and kept inline on purpose
        self,
        runtime: _RuleRuntime,
        batch: EventBatch,
        usable: npt.NDArray[np.bool_],
        wm_after: npt.NDArray[np.int64],
        ids: list[str],
        changed: dict[str, Alert],
        duplicate_rows: set[int],
        metrics: MetricDeltas,
    ) -> None:
        mask, step_tags = self._candidates(runtime, batch, usable)
        index = np.flatnonzero(mask)
        if runtime.kind == "time_of_day" and len(index):
            index = index[_outside_hours(runtime, batch, index)]
        if len(index) == 0:
            return
        seen_candidates = len(index)
        counting = runtime.kind in ("threshold", "time_of_day")
        if counting and len(index) >= _VECTOR_MIN:
            index = self._vector_counting(runtime, batch, index, wm_after, ids, changed, metrics)
        if len(index) == 0:
            self._count_candidates(runtime, seen_candidates, changed, metrics)
            return
        tenants = batch.tenants
        columns = self._group_columns(runtime, batch)
        skip_missing = bool(runtime.rule.skip_missing)
        distinct_values = (
            batch.values(runtime.distinct_field) if runtime.distinct_field is not None else None
        )
        times = batch.ts
        windows = runtime.windows
        cap = self.config.max_events_per_key
        idx_list = index.tolist()
        times_list = times[index].tolist()
        wm_list = wm_after[index].tolist()
        updates: Counter[str] = Counter()
        for j, i in enumerate(idx_list):
            tenant = tenants[i]
            params = runtime.params(tenant)
            if not params.enabled:
                continue
            group = tuple(column[i] for column in columns)
            if skip_missing and None in group:
                continue
            if distinct_values is not None:
                tag: Any = distinct_values[i]
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
        self._count_candidates(runtime, seen_candidates, changed, metrics)

    def _count_candidates(
        self, runtime: _RuleRuntime, n: int, changed: dict[str, Alert], metrics: MetricDeltas
    ) -> None:
        """Sweep a rule's keys once it has seen about as many events as it has keys."""
        runtime.events_since_sweep += n
        if runtime.events_since_sweep >= max(len(runtime.windows), 10_000):
            self._sweep(runtime, changed, metrics, final=False)

    def _vector_counting(  # noqa: PLR0915 - one vectorised pass over a dozen aligned arrays
        self,
        runtime: _RuleRuntime,
        batch: EventBatch,
        index: npt.NDArray[np.intp],
        wm_after: npt.NDArray[np.int64],
        ids: list[str],
        changed: dict[str, Alert],
        metrics: MetricDeltas,
    ) -> npt.NDArray[np.intp]:
        """Count rules, vectorised: every key whose events in this batch arrive in time order
        after its retained events is counted with numpy. This gives exactly what the per-event
        path gives (in order, an event only completes its own window). The indices of the
        remaining events (out of order, equal times, redeliveries) are returned, in arrival
        order, for the per-event path.
        """
        m = len(index)
        tenants = batch.tenants
        # 1. A batch-local code per (tenant, group values) key.
        value_lists: list[list[Any]] = []
        combined = batch.codes("organizationId")[0][index].astype(np.int64)
        typed = False  # does a column hold a bool or float (which must not merge with ints)?
        for spec in runtime.group_specs:
            if len(spec) == 1:
                codes, vocab = batch.codes(spec[0])
                sub = codes[index].astype(np.int64)
                size = len(vocab)
                value_lists.append(batch.values(spec[0]))
            else:
                merged = self._group_columns_for(batch, spec)
                value_lists.append(merged)
                sub_codes, vocab = _factorise_values([merged[i] for i in index.tolist()])
                sub = sub_codes.astype(np.int64)
                size = len(vocab)
            typed = typed or any(type(v) is bool or type(v) is float for v in vocab)
            combined = np.unique(combined * max(size, 1) + sub, return_inverse=True)[1]
        _, first, kcode = np.unique(combined, return_index=True, return_inverse=True)
        kcode = kcode.astype(np.int64)
        n_keys = len(first)
        rep = index[first].tolist()
        keys = [(tenants[r], *(values[r] for values in value_lists)) for r in rep]
        if typed:
            keys = [_key(list(key)) for key in keys]

        # 2. Per key: parameters, state, and whether it can take the fast path.
        windows = runtime.windows
        skip_missing = bool(runtime.rule.skip_missing)
        params_k = [runtime.params(key[0]) for key in keys]
        drop_k = np.array(
            [
                not p.enabled or (skip_missing and None in key[1:])
                for p, key in zip(params_k, keys, strict=True)
            ],
            dtype=np.bool_,
        )
        slow_k = np.array([p.lower is None for p in params_k], dtype=np.bool_)
        last_k = np.array(
            [
                (w.times[-1] if (w := windows.get(key)) is not None and w.times else _NEVER)
                for key in keys
            ],
            dtype=np.int64,
        )
        arrival = np.arange(m)
        times_c = batch.ts[index]
        # Eligibility is judged in arrival order: a key's times must never decrease.
        by_arrival = np.lexsort((arrival, kcode))
        ks_a = kcode[by_arrival]
        ts_a = times_c[by_arrival]
        same_key = ks_a[1:] == ks_a[:-1]
        slow_k[ks_a[1:][same_key & (ts_a[1:] < ts_a[:-1])]] = True
        starts = np.flatnonzero(np.r_[True, ~same_key])
        slow_k[ks_a[starts][ts_a[starts] <= last_k[ks_a[starts]]]] = True
        # Equal times are fine, unless the same event was delivered twice: that one is the
        # per-event path's (it drops the duplicate).
        ties = np.flatnonzero(same_key & (ts_a[1:] == ts_a[:-1])).tolist()
        if ties:
            arrival_ids = [ids[i] for i in index[by_arrival].tolist()]
            run_ids: set[str] = {arrival_ids[ties[0]]}
            for prev, pos in itertools.pairwise([-2, *ties]):
                if pos != prev + 1:
                    run_ids = {arrival_ids[pos]}
                if arrival_ids[pos + 1] in run_ids:
                    slow_k[ks_a[pos]] = True
                run_ids.add(arrival_ids[pos + 1])
        fast_k = ~slow_k & ~drop_k
        slow_positions = np.sort(by_arrival[(slow_k & ~drop_k)[ks_a]])
        remaining = index[slow_positions]
        sel = fast_k[ks_a]
        if not sel.any():
            return remaining

        # 3. Counts over (t - W, t]: batch events of the key plus its retained events. Sorted by
        # (key, time, arrival); equal times form runs that all see each other.
        fo = by_arrival[sel]
        fks = ks_a[sel]
        fts = ts_a[sel]
        width_k = np.array([p.window_us for p in params_k], dtype=np.int64)
        lower_k = np.array([p.lower or 0 for p in params_k], dtype=np.int64)
        period_k = np.array([p.suppression_us for p in params_k], dtype=np.int64)
        width_e = width_k[fks]
        floor = int(fts.min()) - int(width_k[fast_k].max())
        span = int(fts.max()) - floor + 1
        if n_keys * span >= 2**62:
            return index  # an absurd time span in one batch: take the per-event path
        comp = fks * span + (fts - floor)
        positions = np.arange(len(comp))
        lo_b = np.searchsorted(comp, comp - width_e, side="right")
        run_end = np.searchsorted(comp, comp, side="right")
        run_start = np.searchsorted(comp, comp, side="left")
        fast_keys = np.flatnonzero(fast_k).tolist()
        seg = np.flatnonzero(np.r_[True, fks[1:] != fks[:-1]]).tolist()
        seg_end = [*seg[1:], len(fks)]
        ret_t: list[int] = []
        ret_k: list[int] = []
        before: dict[int, int] = {}
        for k, a in zip(fast_keys, seg, strict=True):
            window = windows.get(keys[k])
            if window is None:
                before[k] = 0
                continue
            before[k] = len(window.times)
            cut = bisect_right(window.times, int(fts[a]) - int(width_k[k]))
            tail = window.times[cut:]
            ret_t.extend(tail)
            ret_k.extend([k] * len(tail))
        retained = np.zeros(len(comp), dtype=np.int64)
        if ret_t:
            ret_comp = np.array(ret_k, dtype=np.int64) * span + (
                np.array(ret_t, dtype=np.int64) - floor
            )
            retained = np.searchsorted(ret_comp, (fks + 1) * span, side="left") - np.searchsorted(
                ret_comp, comp - width_e, side="right"
            )
        lower_e = lower_k[fks]
        hit = (run_end - lo_b + retained) >= lower_e
        # The count when this event arrived: the condition first held at the first such event.
        held_on_arrival = (positions - lo_b + 1 + retained) >= lower_e

        # 4. Append to the windows in (time, id) order, then turn hits into alerts.
        event_index = index[fo]
        t_list = fts.tolist()
        id_list = [ids[i] for i in event_index.tolist()]
        if np.any(run_end - run_start > 1):
            for a, b in _runs(run_start, run_end):
                id_list[a:b] = sorted(id_list[a:b])
        hit_bytes = hit.astype(np.uint8).tobytes()
        wm_e = wm_after[event_index].tolist()
        for k, a, b in zip(fast_keys, seg, seg_end, strict=True):
            window = windows.get(keys[k])
            if window is None:
                window = windows[keys[k]] = KeyWindow()
            window.times.extend(t_list[a:b])
            window.ids.extend(id_list[a:b])
            window.tags.extend([None] * (b - a))
            window.hits.extend(hit_bytes[a:b])
        hit_at = np.flatnonzero(hit)
        if len(hit_at):
            periods = period_k[fks[hit_at]]
            starts_p = (fts[hit_at] // periods) * periods
            boundary = np.r_[
                True, (fks[hit_at][1:] != fks[hit_at][:-1]) | (starts_p[1:] != starts_p[:-1])
            ]
            group_first = np.flatnonzero(boundary).tolist()
            group_end = [*group_first[1:], len(hit_at)]
            hit_list = hit_at.tolist()
            seg_of = dict(zip(fast_keys, seg, strict=True))
            held = held_on_arrival.tolist()
            run_end_list = run_end.tolist()
            updates: Counter[str] = Counter()
            for g0, g1 in zip(group_first, group_end, strict=True):
                j0 = hit_list[g0]
                k = int(fks[j0])
                key = keys[k]
                start = int(starts_p[g0])
                open_periods = runtime.open.get(key)
                current = open_periods.get(start) if open_periods else None
                n_hits = g1 - g0
                if current is None:
                    window = windows[key]
                    q = before[k] + (j0 - seg_of[k])
                    fired = next(j for j in range(j0, run_end_list[j0]) if held[j])
                    self._hit(runtime, key, window, q, wm_e[fired], params_k[k], changed, metrics)
                    current = runtime.open[key][start]
                    n_hits -= 1
                alert = current.alert
                if n_hits:
                    alert.occurrences += n_hits
                    alert.last_seen_us = max(alert.last_seen_us, t_list[hit_list[g1 - 1]])
                    updates[key[0]] += n_hits
                    changed[alert.id] = alert
            for tenant, n_updates in updates.items():
                metrics.alert_updates[(tenant, runtime.rule.id)] += n_updates

        # 5. Evict what the watermark has passed.
        for k, b in zip(fast_keys, seg_end, strict=True):
            window = windows[keys[k]]
            params = params_k[k]
            wm = wm_e[b - 1]
            if window.times[0] <= wm - params.window_us or (
                params.keep is not None and len(window.times) > params.keep + 32
            ):
                window.compact(wm, params.window_us, params.keep, distinct=False)
        return remaining

    def _group_columns_for(self, batch: EventBatch, spec: tuple[str, ...]) -> list[Any]:
        return group_column(batch, spec)

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
            periods[start] = _Open(alert, t, event_id)
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
        for start in [s for s, o in periods.items() if o.alert.period_end_us <= wm]:
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

    # --- snapshot / restore ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole detector state as plain data (JSON- and msgpack-friendly)."""
        rules: dict[str, Any] = {}
        for runtime in self._rules:
            rules[runtime.rule.id] = {
                "version": runtime.rule.version,
                "events_since_sweep": runtime.events_since_sweep,
                "keys": [[_plain(k), w.snapshot()] for k, w in runtime.windows.items()],
                "open": [
                    [_plain(k), o.first_t, o.first_id, _alert_state(o.alert)]
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
                for key, first_t, first_id, state in data["open"]:
                    alert = Alert(**state)
                    periods = runtime.open.setdefault(_key(key), {})
                    periods[alert.period_start_us] = _Open(alert, int(first_t), str(first_id))
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
    tenants = batch.tenants
    accepted = np.ones(n, dtype=np.bool_)
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
                    start_index + i,
                    tenants[i],
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
                metrics.naive_timestamps[tenants[i]] += 1
    if n == 0:
        return result, accepted, np.zeros(0, dtype=np.int64)
    lateness_us = round(config.allowed_lateness_s * _US)
    wm_after, late = _advance_watermarks(max_seen, lateness_us, tenants, batch.ts, accepted)
    if late.any():
        ids = batch.ids()
        for i in np.flatnonzero(late).tolist():
            result.late.append(
                LateEvent(ids[i], tenants[i], int(batch.ts[i]), int(wm_after[i]), start_index + i)
            )
            metrics.late[tenants[i]] += 1
    usable = accepted & ~late
    metrics.events.update(t for t, ok in zip(tenants, usable.tolist(), strict=True) if ok)
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
