"""Backtests: every point of a threshold/window sweep of one rule, over the same events.

The events are read, decoded and screened once, exactly as ``rayworker replay`` does
(:func:`rayworker.detect.screen_batch`: rejections, future timestamps, per-tenant watermarks,
late events). Then every sweep point is evaluated over the same columns:

* **Vectorised** (every kind: ``threshold``, ``distinct``, ``time_of_day``, ``sequence``):
  the rule's matching events are kept as NumPy arrays sorted by (key, time), repeats of one
  event dropped. For each window, the count of every event's window ``(t - W, t]`` comes
  from two ``searchsorted`` calls (:mod:`rayworker.backtest_vector`; distinct values from
  their presence intervals, sequences from running counts of each step's events); each
  threshold is then a mask over those counts, and the hits group into alerts per key and
  aligned suppression period. This is the detector's semantics written for the whole input
  at once, and it gives the alerts ``replay`` gives, ids, counts, occurrences and first/last
  seen included: the detector's state bounds (``keep`` settled events, eviction behind the
  watermark) never change a result, which its own property tests check against a
  brute-force oracle. The one bound that can, ``DetectorConfig.max_events_per_key``, is
  checked per point; a point that could reach it runs on the detector instead.
* **Detector** (points that could reach the state cap, or every point with
  ``detector_only``): the real :class:`~rayworker.detect.Detector` runs once per point, fed
  only the rule's candidate events with their watermarks, as a one-shard router would send
  them (:meth:`~rayworker.detect.Detector.process_routed`).

Points run through a :class:`Runner`: in this process (:class:`LocalRunner`), or as Ray
tasks (:mod:`rayworker.backtest_ray`). Per point: alerts, alerts per tenant per day, and with
labelled attacks (:class:`~rayworker.sources.synthetic.AttackLabel`) recall and precision.

Pure core: NumPy and rayworker's core; nothing here imports ray.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Literal, Protocol, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

from rayworker.alerts import AlertBook, alert_id, fingerprint, iso_utc
from rayworker.backtest_points import Sweep, SweepPoint, point_overrides
from rayworker.backtest_vector import max_in_span, sequence_counts, sort_unique, window_counts
from rayworker.clock import Clock, SystemClock, now_us
from rayworker.detect import (
    PRIMARY_BIT,
    DetectionResult,
    Detector,
    DetectorConfig,
    OffHoursScreen,
    _key,  # the detector's key identity (equal but differently typed values stay apart)
    _RuleRuntime,  # the one source of a rule's effective parameters per tenant
    group_column,
    rule_signature,
    screen_batch,
)
from rayworker.errors import ConfigError, InputError
from rayworker.events import (
    EventBatch,
    EventDecoder,
    _factorise,  # the detector's column factorisation
    derive_event_id,
)
from rayworker.partition import ShardBatch
from rayworker.rules import (
    DistinctRule,
    Overrides,
    RulePack,
    SequenceRule,
    compile_filter,
    compile_steps,
)
from rayworker.sources.jsonl import DEFAULT_BATCH_SIZE, iter_line_batches
from rayworker.sources.synthetic import AttackLabel

__all__ = [
    "BacktestAlert",
    "BacktestResult",
    "Batches",
    "EvalPath",
    "InputStats",
    "LocalRunner",
    "PointResult",
    "RuleEvents",
    "Runner",
    "jsonl_batches",
    "line_batches",
    "load_labels",
    "prepare_rule_events",
    "run_backtest",
    "vectorised_kinds",
]

I64 = npt.NDArray[np.int64]
Batches = Callable[[], Iterable[Sequence[bytes]]]
"""A re-readable source of events: each call yields the JSON lines again, batch by batch."""
EvalPath = Literal["vectorised", "detector"]
"""How a point was evaluated: NumPy over the prepared columns, or the detector."""

_US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY_US = 86_400 * _US
_MIN_SPAN_US = 3_600 * _US  # a shorter input still counts as an hour in per-day rates
READ_BATCH = 100_000
"""Lines decoded and screened at once while preparing."""
_S = TypeVar("_S")
_T = TypeVar("_T")
_R = TypeVar("_R")


def vectorised_kinds() -> frozenset[str]:
    """The rule kinds evaluated with NumPy (all of them; the detector path remains for points
    whose state could reach the cap, and as the reference with ``detector_only``)."""
    return frozenset({"threshold", "distinct", "time_of_day", "sequence"})


# --- sources --------------------------------------------------------------------------------


def jsonl_batches(path: str | Path, batch_size: int = DEFAULT_BATCH_SIZE) -> Batches:
    """Batches of lines from a JSONL file, readable again for every pass."""
    return lambda: iter_line_batches(path, batch_size=batch_size)


def line_batches(lines: Sequence[bytes], batch_size: int = DEFAULT_BATCH_SIZE) -> Batches:
    """Batches of lines held in memory."""
    return lambda: (lines[i : i + batch_size] for i in range(0, len(lines), batch_size))


def load_labels(path: str | Path) -> list[AttackLabel]:
    """Labelled attacks from a JSONL file written by ``rayworker.sources.synthetic``."""
    labels: list[AttackLabel] = []
    numbers = itertools.count(1)
    for batch in iter_line_batches(path):
        for line, number in zip(batch, numbers, strict=False):  # numbers never run out
            if not line.strip():
                continue
            try:
                label = AttackLabel.from_json(line)
                if label.start.utcoffset() is None or label.end.utcoffset() is None:
                    msg = "start and end need a UTC offset such as Z"
                    raise ValueError(msg)
            except (msgspec.DecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
                msg = (
                    f"{path}: line {number}: not an attack label ({exc}); each line must be a "
                    'JSON object with scenario, tenant, group, start and end, e.g. {"scenario": '
                    '"failed_auth", "tenant": "org-001", "group": {"principalId": "u-00001"}, '
                    '"start": "2026-01-05T10:00:00Z", "end": "2026-01-05T10:02:00Z"}'
                )
                raise InputError(msg) from exc
            labels.append(label)
    return labels


# --- prepared events ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputStats:
    """What the single read of the input found."""

    events_read: int
    accepted: int
    rejected: int
    late: int
    first_us: int | None
    last_us: int | None

    @property
    def days(self) -> float:
        """The event time the input covers, in days (an hour at least), for per-day rates."""
        span = 0 if self.first_us is None or self.last_us is None else self.last_us - self.first_us
        return max(span, _MIN_SPAN_US) / _DAY_US


@dataclass(frozen=True, slots=True)
class RuleEvents:
    """One rule's events, read once: sorted columns for NumPy, routed lines for the detector."""

    rule_id: str
    kind: str
    tenants: tuple[str, ...]
    """Every tenant with accepted events; ``key_tenant`` indexes it."""
    keys: tuple[tuple[Any, ...], ...]
    """Key code to (tenant, group values...)."""
    key_tenant: I64
    key_codes: I64
    """Each counted event's key, sorted by (key, time, id), repeats dropped."""
    times: I64
    tags: I64 | None
    """Distinct rules: each event's value code."""
    steps: I64 | None
    """Sequence rules: the steps each event matches, bit ``k`` for step ``k``."""
    step_counts: tuple[int, ...]
    routed: tuple[ShardBatch, ...] | None
    """The candidate lines as a one-shard router sends them; None when not kept."""
    stats: InputStats
    lateness_peak: int
    """The most events of one key within any ``allowed_lateness`` span."""


def prepare_rule_events(
    batches: Iterable[Sequence[bytes]],
    pack: RulePack,
    rule_id: str,
    *,
    overrides: Overrides | None = None,
    config: DetectorConfig | None = None,
    clock: Clock | None = None,
    keep_lines: bool = False,
) -> RuleEvents:
    """Read the events once and keep what the rule counts (see the module docstring)."""
    config = config if config is not None else DetectorConfig()
    clock = clock if clock is not None else SystemClock()
    collector = _Collector(pack, rule_id, overrides, config, keep_lines=keep_lines)
    fields: set[str] = set()
    for r in pack.rules:
        fields |= set(r.fields())
    decoder = EventDecoder(fields, naive_timestamps=config.naive_timestamps)
    max_seen: dict[str, int] = {}
    offset = 0
    for lines in _rechunk(batches, READ_BATCH):
        decoded = decoder.decode(lines, start_index=offset)
        screened, usable, wm_after = screen_batch(
            decoded.batch,
            decoded.rejections,
            start_index=offset,
            config=config,
            now_us=now_us(clock),
            max_seen=max_seen,
        )
        offset += len(lines)
        collector.count(len(lines) - list(lines).count(b""), screened)
        if usable.any():
            collector.add(decoded.batch, usable, wm_after, max_seen)
    return collector.finish()


def _rechunk(batches: Iterable[Sequence[bytes]], size: int) -> Iterator[Sequence[bytes]]:
    """The lines again in batches of about ``size``: fewer, larger batches factorise each
    distinct key once per batch (the batch split never changes a result)."""
    pending: list[bytes] = []
    for lines in batches:
        if not pending and len(lines) >= size:
            yield lines
            continue
        pending.extend(lines)
        if len(pending) >= size:
            yield pending
            pending = []
    if pending:
        yield pending


class _Collector:
    """Accumulates one rule's candidate events over the batches of a read."""

    def __init__(
        self,
        pack: RulePack,
        rule_id: str,
        overrides: Overrides | None,
        config: DetectorConfig,
        *,
        keep_lines: bool,
    ) -> None:
        rule = _rule(pack, rule_id)
        self.rule = rule
        self.config = config
        self.overrides = overrides if overrides is not None else Overrides.empty()
        self.keep_lines = keep_lines
        self.predicate = compile_filter(rule.filter)
        self.steps = compile_steps(rule) if isinstance(rule, SequenceRule) else ()
        self.hours = (
            OffHoursScreen(rule, self.overrides, config) if rule.kind == "time_of_day" else None
        )
        self.specs = rule_signature(rule)
        self.distinct_field: str | None = rule.field if isinstance(rule, DistinctRule) else None
        self.enabled: dict[str, bool] = {}
        self.key_code: dict[tuple[Any, ...], int] = {}
        self.raw_keys: list[tuple[Any, ...]] = []
        self.tag_code: dict[Any, int] = {}
        self.tenant_code: dict[str, int] = {}
        self.codes: list[I64] = []
        self.times: list[I64] = []
        self.tags: list[I64] = []
        self.steps_bits: list[I64] = []
        self.ids: list[str] = []
        self.routed: list[ShardBatch] = []
        self.read = self.accepted = self.rejected = self.late = 0
        self.first: int | None = None
        self.last: int | None = None

    def count(self, read: int, screened: DetectionResult) -> None:
        """Count a batch's lines, rejections, late events and tenants."""
        self.read += read
        self.rejected += len(screened.rejections)
        self.late += len(screened.late)
        for tenant in screened.metrics.events:
            self.tenant_code.setdefault(tenant, len(self.tenant_code))

    def add(
        self,
        batch: EventBatch,
        usable: npt.NDArray[np.bool_],
        wm_after: I64,
        max_seen: dict[str, int],
    ) -> None:
        """Keep the events of a screened batch that the rule could count."""
        self.accepted += int(usable.sum())
        ts_ok = batch.ts[usable]
        lo, hi = int(ts_ok.min()), int(ts_ok.max())
        self.first = lo if self.first is None else min(self.first, lo)
        self.last = hi if self.last is None else max(self.last, hi)
        mask = usable & self.predicate.mask(batch)
        bits = None
        if self.steps:
            # Each event's steps as a bit mask, as the detector tags sequence events.
            bits = np.zeros(len(batch), dtype=np.int64)
            for k, step in enumerate(self.steps):
                bits |= step.mask(batch).astype(np.int64) << k
            mask &= bits != 0
        index = np.flatnonzero(mask)
        if self.hours is not None and len(index):
            index = index[self.hours(batch, index)]
        if len(index) == 0:
            return
        if self.keep_lines:
            # Exactly what a one-shard router sends (rayworker.partition.Partitioner.split).
            touched = {t: max_seen[t] for t in set(itertools.compress(batch.tenants, usable))}
            owned = np.full(len(index), (1 << 0) | (1 << PRIMARY_BIT), dtype=np.uint64)
            raw = batch.raw
            self.routed.append(
                ShardBatch.build([raw[i] for i in index.tolist()], wm_after[index], owned, touched)
            )
        self._keys(batch, index, bits)

    def _keys(self, batch: EventBatch, index: npt.NDArray[np.intp], bits: I64 | None) -> None:
        """Code the key (and value) of each candidate the detector would count.

        Columns are factorised per batch, so Python runs once per distinct key of the batch,
        not per event; keys are told apart by the detector's own key identity.
        """
        tenants = batch.tenants
        tenant_codes, tenant_vocab = _factorise([tenants[i] for i in index.tolist()])
        enabled = np.array([self._enabled(t) for t in tenant_vocab], dtype=np.bool_)
        on = enabled[tenant_codes]
        index = index[on]
        combined = tenant_codes[on].astype(np.int64)
        vocabs: list[list[Any]] = []
        parts: list[npt.NDArray[np.int64]] = [combined]
        for spec in self.specs:
            column = group_column(batch, spec)
            sub_codes, vocab = _factorise([column[i] for i in index.tolist()])
            sub = sub_codes.astype(np.int64)
            vocabs.append(vocab)
            parts.append(sub)
            combined = np.unique(combined * max(len(vocab), 1) + sub, return_inverse=True)[1]
        _, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
        skip_missing = bool(self.rule.skip_missing)
        global_code = np.empty(len(first), dtype=np.int64)
        for u, row in enumerate(first.tolist()):
            raw_key = (
                tenant_vocab[int(parts[0][row])],
                *(vocab[int(part[row])] for vocab, part in zip(vocabs, parts[1:], strict=True)),
            )
            if skip_missing and None in raw_key[1:]:
                global_code[u] = -1
                continue
            code = self.key_code.setdefault(_key(list(raw_key)), len(self.key_code))
            if code == len(self.raw_keys):
                self.raw_keys.append(raw_key)
            global_code[u] = code
        codes_c = global_code[inverse.reshape(-1)]
        keep = codes_c >= 0
        if self.distinct_field is not None:
            values = batch.values(self.distinct_field)
            value_codes, value_vocab = _factorise([values[i] for i in index.tolist()])
            tag_of = np.array([self._tag(v) for v in value_vocab], dtype=np.int64)
            tags_c = tag_of[value_codes] if len(value_vocab) else codes_c[:0]
            keep &= tags_c >= 0
            self.tags.append(tags_c[keep])
        index, codes_c = index[keep], codes_c[keep]
        if bits is not None:
            self.steps_bits.append(bits[index])
        given = batch.values("id")
        raw = batch.raw
        self.ids.extend(
            given[i] if given[i] is not None else derive_event_id(raw[i]) for i in index.tolist()
        )
        self.codes.append(codes_c)
        self.times.append(batch.ts[index])

    def _enabled(self, tenant: str) -> bool:
        on = self.enabled.get(tenant)
        if on is None:
            on = self.enabled[tenant] = self.overrides.effective(self.rule, tenant).enabled
        return on

    def _tag(self, value: Any) -> int:
        """A distinct value's code (-1: missing, not counted), equal as the detector's tags are."""
        if value is None:
            return -1
        if isinstance(value, dict | list):
            value = msgspec.json.encode(value, order="sorted").decode()
        return self.tag_code.setdefault(value, len(self.tag_code))

    def finish(self) -> RuleEvents:
        """The sorted, de-duplicated columns."""
        empty = np.zeros(0, dtype=np.int64)
        key_arr = np.concatenate(self.codes) if self.codes else empty
        time_arr = np.concatenate(self.times) if self.times else empty
        order = sort_unique(key_arr, time_arr, self.ids)
        keys = tuple(self.raw_keys)
        sorted_keys, sorted_times = key_arr[order], time_arr[order]
        lateness_us = round(self.config.allowed_lateness_s * _US)
        tags = None
        if self.distinct_field is not None:
            tags = (np.concatenate(self.tags) if self.tags else empty)[order]
        steps = None
        if self.steps:
            steps = (np.concatenate(self.steps_bits) if self.steps_bits else empty)[order]
        return RuleEvents(
            rule_id=self.rule.id,
            kind=self.rule.kind,
            tenants=tuple(self.tenant_code),
            keys=keys,
            key_tenant=np.asarray([self.tenant_code[k[0]] for k in keys], dtype=np.int64),
            key_codes=sorted_keys,
            times=sorted_times,
            tags=tags,
            steps=steps,
            step_counts=tuple(s.count for s in self.rule.steps) if self.steps else (),
            routed=tuple(self.routed) if self.keep_lines else None,
            stats=InputStats(
                self.read, self.accepted, self.rejected, self.late, self.first, self.last
            ),
            lateness_peak=max_in_span(
                sorted_keys, sorted_times, np.full(len(sorted_keys), lateness_us, dtype=np.int64)
            ),
        )


def _rule(pack: RulePack, rule_id: str) -> Any:
    if rule_id not in pack.ids:
        msg = f'no rule "{rule_id}" in the rule pack; its rules are {", ".join(pack.ids)}'
        raise ConfigError(msg)
    return pack.get(rule_id)


# --- alerts of one point -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BacktestAlert:
    """An alert of one sweep point: the fields ``replay`` would give it that parity covers."""

    id: str
    fingerprint: str
    tenant_id: str
    rule_id: str
    group: dict[str, Any]
    first_seen_us: int
    last_seen_us: int
    occurrences: int
    count: int
    period_start_us: int

    def to_json(self) -> dict[str, Any]:
        """The alert as JSON, times as ISO-8601 UTC."""
        return {
            "id": self.id,
            "fingerprint": self.fingerprint,
            "tenant_id": self.tenant_id,
            "rule_id": self.rule_id,
            "group": self.group,
            "first_seen": iso_utc(self.first_seen_us),
            "last_seen": iso_utc(self.last_seen_us),
            "occurrences": self.occurrences,
            "count": self.count,
            "period_start": iso_utc(self.period_start_us),
        }


@dataclass(frozen=True, slots=True)
class _Table:
    """A point's alerts as columns."""

    key: I64
    period: I64
    first: I64
    last: I64
    occurrences: I64
    count: I64


@dataclass(frozen=True, slots=True)
class _Plan:
    """A point's parameters per tenant (index: tenant code); -1 means "none"."""

    enabled: npt.NDArray[np.bool_]
    lower: I64
    window_us: I64
    period_us: I64
    keep: I64
    holds: tuple[Callable[[int], bool] | None, ...]
    overrides: Overrides


@dataclass(frozen=True, slots=True)
class _Label:
    """A labelled attack tied to the rule's keys it names."""

    keys: tuple[int, ...]
    start_us: int
    end_us: int


@dataclass(frozen=True)
class _Context:
    """Everything a task needs: shipped once per sweep (one object in Ray's store)."""

    events: RuleEvents
    pack: RulePack
    overrides: Overrides
    config: DetectorConfig
    labels: tuple[_Label, ...] | None


def _plan(ctx: _Context, point: SweepPoint) -> _Plan:
    rule = ctx.pack.get(ctx.events.rule_id)
    overrides = point_overrides(ctx.overrides, ctx.pack, rule.id, point)
    runtime = _RuleRuntime(rule, overrides, ctx.config)
    # A tenant without overrides of its own has the defaults' parameters; "" is never a
    # tenant id, so it stands for all of them.
    shared = runtime.params("")
    own = overrides.spec.tenants
    params = [runtime.params(t) if t in own else shared for t in ctx.events.tenants]
    return _Plan(
        enabled=np.array([p.enabled for p in params], dtype=np.bool_),
        lower=np.array([-1 if p.lower is None else p.lower for p in params], dtype=np.int64),
        window_us=np.array([p.window_us for p in params], dtype=np.int64),
        period_us=np.array([p.suppression_us for p in params], dtype=np.int64),
        keep=np.array([-1 if p.keep is None else p.keep for p in params], dtype=np.int64),
        holds=tuple(p.holds for p in params),
        overrides=overrides,
    )


def _fits_state_cap(ctx: _Context, plan: _Plan, widths: I64) -> bool:
    """Whether no key's detector state can reach ``max_events_per_key`` at this point.

    A monotone count rule keeps at most ``keep`` settled events plus those of the last
    ``lateness``; other rules (sequences, non-monotone conditions) keep their window plus the
    lateness.
    """
    events = ctx.events
    cap = ctx.config.max_events_per_key
    if (plan.keep >= 0).all():
        return int(plan.keep.max(initial=0)) + events.lateness_peak <= cap
    lateness_us = round(ctx.config.allowed_lateness_s * _US)
    return max_in_span(events.key_codes, events.times, widths + lateness_us) <= cap


def _vector_table(ctx: _Context, plan: _Plan, counts: I64) -> _Table:
    events = ctx.events
    tenant = events.key_tenant[events.key_codes]
    lower = plan.lower[tenant]
    hit = plan.enabled[tenant] & (lower >= 0) & (counts >= lower)
    for t in np.flatnonzero(plan.lower < 0).tolist():
        holds = plan.holds[t]
        rows = np.flatnonzero(tenant == t)
        if holds is None or not plan.enabled[t] or len(rows) == 0:
            continue
        unique, inverse = np.unique(counts[rows], return_inverse=True)
        table = np.array([holds(int(n)) for n in unique.tolist()], dtype=np.bool_)
        hit[rows] = table[inverse]
    at = np.flatnonzero(hit)
    key = events.key_codes[at]
    periods = plan.period_us[tenant[at]]
    start = (events.times[at] // periods) * periods
    heads = np.flatnonzero(np.r_[True, (key[1:] != key[:-1]) | (start[1:] != start[:-1])])
    if len(at) == 0:
        heads = heads[:0]
    tails = np.r_[heads[1:], len(at)][: len(heads)] - 1
    first, last = at[heads], at[tails]
    keep = plan.keep[tenant[first]]
    count = counts[first]
    count = np.where(keep >= 0, np.minimum(count, keep), count)
    return _Table(
        key=key[heads],
        period=start[heads],
        first=events.times[first],
        last=events.times[last],
        occurrences=(tails - heads + 1).astype(np.int64),
        count=count.astype(np.int64),
    )


def _detector_table(ctx: _Context, plan: _Plan) -> _Table:
    events = ctx.events
    if events.routed is None:
        msg = "the detector path needs the routed lines; prepare with keep_lines=True"
        raise ValueError(msg)
    rule = ctx.pack.get(events.rule_id)
    detector = Detector(RulePack(rules=(rule,)), plan.overrides, ctx.config, SystemClock())
    book = AlertBook()
    for part in events.routed:
        book.update(
            detector.process_routed(part.lines(), part.wm_after, part.owned, part.watermarks).alerts
        )
    book.update(detector.flush().alerts)
    code = {_key(list(k)): i for i, k in enumerate(events.keys)}
    keyed = sorted(
        ((code.get(_key([a.tenant_id, *a.group.values()]), -1), a.period_start_us, a.id), a)
        for a in book
    )
    alerts = [a for _, a in keyed]
    return _Table(
        key=np.array([k for (k, _, _), _ in keyed], dtype=np.int64),
        period=np.array([a.period_start_us for a in alerts], dtype=np.int64),
        first=np.array([a.first_seen_us for a in alerts], dtype=np.int64),
        last=np.array([a.last_seen_us for a in alerts], dtype=np.int64),
        occurrences=np.array([a.occurrences for a in alerts], dtype=np.int64),
        count=np.array([a.count for a in alerts], dtype=np.int64),
    )


# --- per-point results ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PointResult:
    """What one sweep point gives over the input."""

    point: SweepPoint
    path: EvalPath
    alerts: int
    tenants_alerting: int
    alerts_per_tenant_day: float
    """Mean over every tenant with accepted events."""
    max_tenant_alerts_per_day: float
    tenant_alerts: dict[str, int] = field(default_factory=dict)
    """Alerts per tenant (tenants with none are left out)."""
    labels: int | None = None
    labels_detected: int | None = None
    true_alerts: int | None = None

    @property
    def recall(self) -> float | None:
        """Labelled attacks with an alert on their key in their time span, over all of them."""
        if not self.labels:
            return None
        return (self.labels_detected or 0) / self.labels

    @property
    def precision(self) -> float | None:
        """Alerts on a labelled attack's key and time span, over all alerts."""
        if self.labels is None or self.alerts == 0:
            return None
        return (self.true_alerts or 0) / self.alerts

    def row(self, rule_id: str) -> dict[str, Any]:
        """A flat record for CSV output."""
        return {
            "rule": rule_id,
            "threshold": "" if self.point.threshold is None else self.point.threshold,
            "window_s": "" if self.point.window_s is None else _number(self.point.window_s),
            "path": self.path,
            "alerts": self.alerts,
            "tenants_alerting": self.tenants_alerting,
            "alerts_per_tenant_day": round(self.alerts_per_tenant_day, 4),
            "max_tenant_alerts_per_day": round(self.max_tenant_alerts_per_day, 4),
            "labels": "" if self.labels is None else self.labels,
            "labels_detected": "" if self.labels_detected is None else self.labels_detected,
            "recall": "" if self.recall is None else round(self.recall, 4),
            "precision": "" if self.precision is None else round(self.precision, 4),
        }


def _number(value: float) -> int | float:
    return int(value) if value == int(value) else value


def _summarise(
    ctx: _Context, point: SweepPoint, plan: _Plan, table: _Table, path: EvalPath
) -> PointResult:
    events = ctx.events
    known = table.key >= 0
    tenant = np.full(len(table.key), -1, dtype=np.int64)
    tenant[known] = events.key_tenant[table.key[known]]
    per_tenant = np.bincount(tenant[known], minlength=len(events.tenants))
    days = events.stats.days
    n_tenants = max(len(events.tenants), 1)
    result = PointResult(
        point=point,
        path=path,
        alerts=len(table.key),
        tenants_alerting=int((per_tenant > 0).sum()),
        alerts_per_tenant_day=float(per_tenant.sum()) / n_tenants / days,
        max_tenant_alerts_per_day=float(per_tenant.max(initial=0)) / days,
        tenant_alerts={
            events.tenants[t]: int(n)
            for t in np.flatnonzero(per_tenant).tolist()
            for n in [per_tenant[t]]
        },
    )
    if ctx.labels is None:
        return result
    by_key: dict[int, list[int]] = {}
    for j, label in enumerate(ctx.labels):
        for k in label.keys:
            by_key.setdefault(k, []).append(j)
    detected: set[int] = set()
    true_alerts = 0
    candidates = np.flatnonzero(np.isin(table.key, np.fromiter(by_key, dtype=np.int64)))
    for a in candidates.tolist():
        k = int(table.key[a])
        width = int(plan.window_us[events.key_tenant[k]])
        first, last = int(table.first[a]), int(table.last[a])
        hits = [
            j
            for j in by_key[k]
            if first <= ctx.labels[j].end_us + width and last >= ctx.labels[j].start_us
        ]
        if hits:
            true_alerts += 1
            detected.update(hits)
    return replace(
        result,
        labels=len(ctx.labels),
        labels_detected=len(detected),
        true_alerts=true_alerts,
    )


def _resolve_labels(
    events: RuleEvents, pack: RulePack, labels: Sequence[AttackLabel], scenarios: frozenset[str]
) -> tuple[_Label, ...]:
    """Tie each relevant label to the keys of the rule it names (tenant and group values).

    A label's group field that the rule groups by (directly or in a coalesce) must equal the
    key's value; fields the rule does not group by are not compared.
    """
    specs = rule_signature(pack.get(events.rule_id))
    by_tenant: dict[str, list[int]] = {}
    for code, key in enumerate(events.keys):
        by_tenant.setdefault(key[0], []).append(code)
    out: list[_Label] = []
    for label in labels:
        if label.scenario not in scenarios:
            continue
        checks = [
            (value, [i for i, spec in enumerate(specs) if path in spec])
            for path, value in label.group.items()
        ]
        checks = [(value, at) for value, at in checks if at]
        keys = tuple(
            code
            for code in by_tenant.get(label.tenant, ())
            if all(any(events.keys[code][1 + i] == value for i in at) for value, at in checks)
        )
        out.append(_Label(keys, _micros(label.start), _micros(label.end)))
    return tuple(out)


def _micros(stamp: datetime) -> int:
    return (stamp - _EPOCH) // timedelta(microseconds=1)


# --- running the sweep ----------------------------------------------------------------------


class Runner(Protocol):
    """Runs ``fn(shared, item)`` for every item; calls ``on_done(i)`` as item ``i`` finishes."""

    def map(
        self,
        fn: Callable[[_S, _T], _R],
        shared: _S,
        items: Sequence[_T],
        on_done: Callable[[int], None],
    ) -> list[_R]:
        """The results in the order of ``items``."""
        ...


class LocalRunner:
    """Runs the items one after another in this process."""

    def map(
        self,
        fn: Callable[[_S, _T], _R],
        shared: _S,
        items: Sequence[_T],
        on_done: Callable[[int], None],
    ) -> list[_R]:
        """The results in the order of ``items``."""
        out = []
        for i, item in enumerate(items):
            out.append(fn(shared, item))
            on_done(i)
        return out


def _counts(events: RuleEvents, widths: I64) -> I64:
    """Each event's window count (distinct count; or for sequences, the events of the
    completed sequence it ends, else 0)."""
    if events.steps is not None:
        return sequence_counts(
            events.key_codes, events.times, widths, events.steps, events.step_counts
        )
    return window_counts(events.key_codes, events.times, widths, events.tags)


def _sweep_window(ctx: _Context, points: Sequence[SweepPoint]) -> list[PointResult | None]:
    """Task: the points sharing one window, counted once; None for a point that needs the
    detector (its state could reach the cap)."""
    plans = [_plan(ctx, point) for point in points]
    events = ctx.events
    widths = plans[0].window_us[events.key_tenant[events.key_codes]]
    counts = _counts(events, widths)
    return [
        _summarise(ctx, point, plan, _vector_table(ctx, plan, counts), "vectorised")
        if _fits_state_cap(ctx, plan, widths)
        else None
        for point, plan in zip(points, plans, strict=True)
    ]


def _sweep_detector(ctx: _Context, point: SweepPoint) -> PointResult:
    """Task: one point on the real detector."""
    plan = _plan(ctx, point)
    return _summarise(ctx, point, plan, _detector_table(ctx, plan), "detector")


@dataclass
class BacktestResult:
    """Every point's result, and the means to list any point's alerts."""

    rule_id: str
    kind: str
    points: list[PointResult]
    stats: InputStats
    tenants: tuple[str, ...]
    labels: int | None
    _ctx: _Context = field(repr=False)

    @property
    def days(self) -> float:
        """The event time the input covers, in days (see :attr:`InputStats.days`)."""
        return self.stats.days

    def tenant_events(self) -> dict[str, int]:
        """Events the rule counts per tenant (tenants with none are left out)."""
        events = self._ctx.events
        per_tenant = np.bincount(events.key_tenant[events.key_codes], minlength=len(events.tenants))
        return {events.tenants[t]: int(per_tenant[t]) for t in np.flatnonzero(per_tenant).tolist()}

    def rows(self) -> list[dict[str, Any]]:
        """One flat record per point."""
        return [p.row(self.rule_id) for p in self.points]

    def write_csv(self, out: IO[str]) -> None:
        """The points as CSV with a header."""
        rows = self.rows()
        if not rows:
            return
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)

    def tenant_rates(self, point: SweepPoint) -> dict[str, float]:
        """Alerts per day of every tenant (zero included) at ``point``."""
        found = self._result(point)
        return {t: found.tenant_alerts.get(t, 0) / self.days for t in self.tenants}

    def _result(self, point: SweepPoint) -> PointResult:
        for result in self.points:
            if result.point == point:
                return result
        msg = f"{point.label} is not a point of this sweep"
        raise KeyError(msg)

    def alerts(self, point: SweepPoint) -> list[BacktestAlert]:
        """The alerts of one point, as ``replay`` gives them, sorted by first seen and id."""
        path = self._result(point).path
        ctx = self._ctx
        plan = _plan(ctx, point)
        if path == "vectorised":
            events = ctx.events
            widths = plan.window_us[events.key_tenant[events.key_codes]]
            table = _vector_table(ctx, plan, _counts(events, widths))
        else:
            table = _detector_table(ctx, plan)
        rule = ctx.pack.get(self.rule_id)
        out = []
        for a in range(len(table.key)):
            key = ctx.events.keys[int(table.key[a])]
            group = dict(zip(rule.group_names, key[1:], strict=True))
            fp = fingerprint(key[0], rule.id, group)
            out.append(
                BacktestAlert(
                    id=alert_id(fp, int(table.period[a])),
                    fingerprint=fp,
                    tenant_id=key[0],
                    rule_id=rule.id,
                    group=group,
                    first_seen_us=int(table.first[a]),
                    last_seen_us=int(table.last[a]),
                    occurrences=int(table.occurrences[a]),
                    count=int(table.count[a]),
                    period_start_us=int(table.period[a]),
                )
            )
        out.sort(key=lambda x: (x.first_seen_us, x.tenant_id, x.id))
        return out


def run_backtest(
    source: Batches,
    pack: RulePack,
    rule_id: str,
    sweep: Sweep,
    *,
    labels: Sequence[AttackLabel] | None = None,
    label_scenarios: Iterable[str] | None = None,
    overrides: Overrides | None = None,
    config: DetectorConfig | None = None,
    clock: Clock | None = None,
    runner: Runner | None = None,
    progress: Callable[[int, int], None] | None = None,
    detector_only: bool = False,
) -> BacktestResult:
    """Evaluate every point of ``sweep`` for ``rule_id`` over the events of ``source``.

    ``labels``: labelled attacks; those whose scenario is in ``label_scenarios`` (default:
    the rule id) give recall and precision. ``progress(done, total)`` follows the points.
    ``detector_only`` runs every point on the detector (the reference the vectorised path is
    tested against).
    """
    rule = _rule(pack, rule_id)
    base = overrides if overrides is not None else Overrides.empty()
    config = config if config is not None else DetectorConfig()
    runner = runner if runner is not None else LocalRunner()
    points = sweep.points()
    for point in points:
        point_overrides(base, pack, rule_id, point)  # a bad point fails before any reading
    vectorised = rule.kind in vectorised_kinds() and not detector_only
    events = prepare_rule_events(
        source(),
        pack,
        rule_id,
        overrides=base,
        config=config,
        clock=clock,
        keep_lines=not vectorised,
    )
    scenarios = frozenset(label_scenarios) if label_scenarios is not None else frozenset({rule_id})
    resolved = None if labels is None else _resolve_labels(events, pack, labels, scenarios)
    ctx = _Context(events, pack, base, config, resolved)
    total = len(points)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    found: dict[SweepPoint, PointResult] = {}
    pending = points
    if vectorised:
        groups: dict[float | None, list[SweepPoint]] = {}
        for point in points:
            groups.setdefault(point.window_s, []).append(point)
        items = list(groups.values())
        outs = runner.map(_sweep_window, ctx, items, lambda i: advance(len(items[i])))
        pending = []
        for group, results in zip(items, outs, strict=True):
            for point, result in zip(group, results, strict=True):
                if result is None:
                    pending.append(point)
                else:
                    found[point] = result
        if pending:
            done -= len(pending)
            events = prepare_rule_events(
                source(),
                pack,
                rule_id,
                overrides=base,
                config=config,
                clock=clock,
                keep_lines=True,
            )
            ctx = replace(ctx, events=events)
    if pending:
        outs_d = runner.map(_sweep_detector, ctx, pending, lambda _i: advance(1))
        found.update(zip(pending, outs_d, strict=True))
    return BacktestResult(
        rule_id=rule_id,
        kind=rule.kind,
        points=[found[p] for p in points],
        stats=events.stats,
        tenants=events.tenants,
        labels=None if resolved is None else len(resolved),
        _ctx=ctx,
    )
