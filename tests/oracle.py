"""A brute-force reference detector: the semantics of detect.py written the slow, obvious way.

It looks at the whole input at once: watermarks in arrival order decide which events are late;
then, for every key, every matching event is evaluated over the full sorted set of the key's
events. No windows are kept, nothing is evicted, nothing is incremental.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from rayworker.alerts import alert_id, fingerprint
from rayworker.events import derive_event_id, lookup
from rayworker.rules import Overrides, RulePack, compile_filter


@dataclass
class OracleAlert:
    id: str
    tenant_id: str
    rule_id: str
    group: dict[str, Any]
    first_seen_us: int
    last_seen_us: int
    occurrences: int
    count: int
    evidence_ids: list[str]
    period_start_us: int
    watermark_us: int | None


def _micros(text: str) -> int:
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return (stamp - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _lower(condition: Any) -> int | None:
    if any(getattr(condition, op) is not None for op in ("lt", "lte", "eq", "neq")):
        return None
    bounds = [condition.gte] if condition.gte is not None else []
    if condition.gt is not None:
        bounds.append(condition.gt + 1)
    return max(bounds) if bounds else 0


def _group(rule: Any, event: dict[str, Any]) -> tuple[Any, ...]:
    values = []
    for spec in rule.group_by:
        paths = [spec] if isinstance(spec, str) else list(spec.coalesce)
        value = None
        for path in paths:
            value = lookup(event, path)
            if value is not None:
                break
        values.append(value)
    return tuple(values)


def _sequence(events: list[tuple[int, str, int]], q: int, width: int, counts: list[int]):
    t_q, _, tag_q = events[q]
    last = len(counts) - 1
    if not tag_q & (1 << last):
        return None
    stage, have, used = 0, 0, []
    for p in range(q):
        t, _, tag = events[p]
        if t <= t_q - width:
            continue
        if stage == last and have == counts[last] - 1:
            break
        if tag & (1 << stage):
            used.append(p)
            have += 1
            if have == counts[stage] and stage < last:
                stage, have = stage + 1, 0
    if stage == last and have == counts[last] - 1:
        return [*used, q]
    return None


def oracle(
    lines: list[bytes],
    pack: RulePack,
    *,
    overrides: Overrides | None = None,
    lateness_s: float = 60.0,
    suppression_s: float = 300.0,
    evidence_cap: int = 100,
) -> dict[str, OracleAlert]:
    """Alerts by id for the given JSON lines in arrival order (all lines must be valid)."""
    overrides = overrides or Overrides.empty()
    lateness = round(lateness_s * 1e6)
    arrivals = []
    max_seen: dict[str, int] = {}
    wm_after: list[int] = []
    for raw in lines:
        event = msgspec.json.decode(raw)
        t = _micros(event["timestamp"])
        tenant = event["organizationId"]
        seen = max_seen.get(tenant)
        late = seen is not None and t < seen - lateness
        if seen is None or t > seen:
            max_seen[tenant] = seen = t
        wm_after.append(seen - lateness)
        eid = event.get("id") or derive_event_id(raw)
        arrivals.append((event, t, tenant, eid, late))

    alerts: dict[str, OracleAlert] = {}
    for rule in pack.rules:
        pred = compile_filter(rule.filter)
        steps = [compile_filter(s.filter) for s in rule.steps] if rule.kind == "sequence" else []
        counts = [s.count for s in rule.steps] if steps else []
        keyed: dict[tuple[Any, ...], list[tuple[int, str, Any, int]]] = defaultdict(list)
        for index, (event, t, tenant, eid, late) in enumerate(arrivals):
            if late or not pred.matches(event):
                continue
            eff = overrides.effective(rule, tenant)
            if not eff.enabled:
                continue
            tag: Any = None
            if steps:
                tag = sum(1 << k for k, s in enumerate(steps) if s.matches(event))
                if not tag:
                    continue
            if rule.kind == "distinct":
                tag = lookup(event, rule.field)
                if tag is None:
                    continue
            if rule.kind == "time_of_day":
                zone = ZoneInfo(eff.timezone)
                local = datetime.fromtimestamp(t / 1e6, tz=UTC).astimezone(zone)
                minute = local.hour * 60 + local.minute
                if not eff.business_hours.is_outside(minute, local.weekday()):
                    continue
            group = _group(rule, event)
            if rule.skip_missing and None in group:
                continue
            key = (tenant, *group)
            if any(e[0] == t and e[1] == eid for e in keyed[key]):
                continue  # a duplicate of an event already counted
            keyed[key].append((t, eid, tag, index))

        for key, items in keyed.items():
            tenant = key[0]
            eff = overrides.effective(rule, tenant)
            width = round(eff.window_s * 1e6)
            sup = eff.suppression_s if eff.suppression_s is not None else suppression_s
            period = max(1, round(sup * 1e6))
            lower = sum(counts) if rule.kind == "sequence" else _lower(eff.condition)
            keep = (
                None if (lower is None or rule.kind == "sequence") else max(lower, evidence_cap, 1)
            )

            def evaluate(subset, q, *, eff=eff, width=width, keep=keep, rule=rule, counts=counts):
                t_q = subset[q][0]
                window = [p for p in range(len(subset)) if t_q - width < subset[p][0] <= t_q]
                if rule.kind == "sequence":
                    used = _sequence([(a, b, c) for a, b, c, _ in subset], q, width, counts)
                    if used is None:
                        return None
                    return len(used), [subset[p][1] for p in used][-evidence_cap:]
                if rule.kind == "distinct":
                    latest: dict[Any, int] = {}
                    for p in window:
                        latest[subset[p][2]] = p
                    n = len(latest)
                    if not eff.condition.holds(n):
                        return None
                    pos = sorted(latest.values())
                    shown = min(n, keep) if keep is not None else n
                    return shown, [subset[p][1] for p in pos][-evidence_cap:]
                n = len(window)
                if not eff.condition.holds(n):
                    return None
                shown = min(n, keep) if keep is not None else n
                return shown, [subset[p][1] for p in window][-evidence_cap:]

            ordered = sorted(items, key=lambda e: (e[0], e[1]))
            hits = []
            for q in range(len(ordered)):
                found = evaluate(ordered, q)
                if found is not None:
                    hits.append((q, found))
            by_period: dict[int, list[tuple[int, Any]]] = defaultdict(list)
            for q, found in hits:
                by_period[(ordered[q][0] // period) * period].append((q, found))
            group = dict(zip(rule.group_names, key[1:], strict=True))
            fp = fingerprint(tenant, rule.id, group)
            for start, period_hits in by_period.items():
                q0, (count, evidence) = period_hits[0]
                aid = alert_id(fp, start)
                watermark = None
                if lower is not None:
                    # The arrival at which the period first had a hit among the events so far.
                    for arrival in sorted(e[3] for e in items):
                        subset = sorted(
                            (e for e in items if e[3] <= arrival), key=lambda e: (e[0], e[1])
                        )
                        if any(
                            (subset[q][0] // period) * period == start
                            and evaluate(subset, q) is not None
                            for q in range(len(subset))
                        ):
                            watermark = wm_after[arrival]
                            break
                alerts[aid] = OracleAlert(
                    id=aid,
                    tenant_id=tenant,
                    rule_id=rule.id,
                    group=group,
                    first_seen_us=ordered[q0][0],
                    last_seen_us=max(ordered[q][0] for q, _ in period_hits),
                    occurrences=len(period_hits),
                    count=count,
                    evidence_ids=evidence,
                    period_start_us=start,
                    watermark_us=watermark,
                )
    return alerts
