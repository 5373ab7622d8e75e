"""Deterministic synthetic audit traffic with labelled attacks.

The generator writes the original producers' JSON (camelCase, one compact object per line, no
``id`` unless asked) for a multi-tenant population, and injects attack scenarios whose labels
name the built-in rule each should trigger. The same config and seed always give the same bytes.

Population
    ``tenants`` tenants ``org-001``... with Zipf-like popularity (weight of rank ``r`` is
    ``1 / r ** zipf_a``; ``org-001`` is the busiest). ``principals`` principals ``u-00001``...
    belong to tenants in contiguous ranges: every tenant gets ``min(25, principals // tenants)``
    and the rest is shared in proportion to popularity, so busy tenants have more principals
    rather than busier ones. Each principal has a stable home IP (``10.x.y.z``) and user agent;
    attackers use addresses from ``100.64.0.0/10``, which no principal has.

Background
    Mostly successful reads (``data.read``, ``fhir.patient.read``, ``fhir.observation.search``),
    some ``data.update``, logins (about 5 % of them failing), rare exports/imports with
    ``recordCount``, rare access denials. Event times follow a day profile in which off-hours
    (22:00-06:00 UTC) are quieter; a span that lies wholly in off-hours (the default hour after
    midnight) is uniform. At the defaults, background alone stays far below the built-in
    thresholds, except off-hours access, which fires its LOW, per-tenant alert by design.

Attacks
    Per tenant, ``Poisson(attacks_per_tenant_hour * hours)`` scenarios, each one of
    :data:`SCENARIOS` (``off_hours`` only where the span has 23:00-05:00 time). Scenarios that
    do not fit in the span are not injected. Attack events count towards ``events``: the total is
    always exactly ``events`` (attacks are trimmed to at most half of it).
    ``brute_force_success`` also triggers ``failed_auth`` by construction (6+ failures).

Arrival order
    Event-time order when ``disorder_ms == 0``. Otherwise each event is delayed by a uniform
    ``0..disorder_ms`` ms and events are emitted by delayed time, so an event never arrives after
    one whose event time is more than ``disorder_ms`` later than its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

__all__ = [
    "SCENARIOS",
    "AttackLabel",
    "SyntheticConfig",
    "generate",
    "generate_labelled",
    "write_jsonl",
]

SCENARIOS: tuple[str, ...] = (
    "failed_auth",
    "unauthorized_access",
    "data_velocity",
    "bulk_operation",
    "password_spraying",
    "brute_force_success",
    "off_hours",
)
"""Scenario names; each equals the id of the built-in rule it should trigger."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS
_MAX_PRINCIPALS = 1 << 22  # home IPs are 10.x.y.z: principal indexes must fit in 24 bits
_MIN_PRINCIPALS_PER_TENANT = 25  # password spraying needs up to 25 distinct victims
_OFF_HOURS_DENSITY = 0.15  # background rate during 22:00-06:00 UTC, relative to the day
_SESSION_MS = 1_800_000  # a principal's session id changes every half hour


class _Kind(NamedTuple):
    action: str
    status: str
    resource_type: str | None
    resource_prefix: str
    outcome: str
    classification: str
    records: tuple[int, int] | None  # inclusive recordCount range; None: no recordCount


_KINDS: tuple[_Kind, ...] = (
    _Kind("data.read", "success", "Document", "d-", "Document read", "CONFIDENTIAL", (1, 1)),
    _Kind("fhir.patient.read", "success", "Patient", "p-", "Patient read", "PHI", (1, 1)),
    _Kind("fhir.observation.search", "success", "Observation", "o-", "Search", "PHI", (1, 10)),
    _Kind("data.update", "success", "Document", "d-", "Document updated", "CONFIDENTIAL", (1, 1)),
    _Kind("auth.login.success", "success", None, "", "Login successful", "INTERNAL", None),
    _Kind("auth.login.failure", "failure", None, "", "Invalid credentials", "INTERNAL", None),
    _Kind("data.export", "success", "Patient", "p-", "Export completed", "PHI", (20, 500)),
    _Kind("data.import", "success", "Patient", "p-", "Import completed", "PHI", (20, 500)),
    _Kind(
        "data.read",
        "failure",
        "Document",
        "d-",
        "Access denied - unauthorized",
        "CONFIDENTIAL",
        None,
    ),
)
(
    _READ,
    _PATIENT_READ,
    _OBS_SEARCH,
    _UPDATE,
    _LOGIN_OK,
    _LOGIN_FAIL,
    _EXPORT,
    _IMPORT,
    _DENIED,
) = range(len(_KINDS))

_BACKGROUND_MIX: dict[int, float] = {
    _READ: 0.3614,
    _PATIENT_READ: 0.25,
    _OBS_SEARCH: 0.16,
    _UPDATE: 0.10,
    _LOGIN_OK: 0.121,
    _LOGIN_FAIL: 0.006,
    _EXPORT: 0.0004,
    _IMPORT: 0.0002,
    _DENIED: 0.001,
}

_USER_AGENTS: tuple[str, ...] = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
    "EHRClient/4.2 (+okhttp)",
    "python-requests/2.32.3",  # the attackers' agent (last)
)
_ATTACKER_UA = len(_USER_AGENTS) - 1


def _default_start() -> datetime:
    return datetime(2026, 1, 5, tzinfo=UTC)


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate; validated on construction (``ValueError`` names the bad field)."""

    events: int = 1_000_000
    tenants: int = 100
    principals: int = 10_000
    duration_s: float = 3600.0
    start: datetime = field(default_factory=_default_start)
    zipf_a: float = 1.1
    attacks_per_tenant_hour: float = 3.0
    disorder_ms: int = 0
    with_ids: bool = False
    seed: int = 7

    def __post_init__(self) -> None:
        def bad(why: str, name: str) -> ValueError:
            return ValueError(f"Got {getattr(self, name)!r} for {name}. {why}")

        def is_int(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def is_real(value: object) -> bool:
            return isinstance(value, int | float) and not isinstance(value, bool)

        if not is_int(self.events) or self.events < 0:
            why = "events must be an integer >= 0."
            raise bad(why, "events")
        if not is_int(self.tenants) or self.tenants < 1:
            why = "tenants must be an integer >= 1."
            raise bad(why, "tenants")
        if not is_int(self.principals) or not self.tenants <= self.principals <= _MAX_PRINCIPALS:
            why = (
                f"principals must be an integer from tenants ({self.tenants}) to {_MAX_PRINCIPALS}."
            )
            raise bad(why, "principals")
        if not is_real(self.duration_s) or not math.isfinite(self.duration_s):
            why = "duration_s must be a finite number of seconds."
            raise bad(why, "duration_s")
        if self.duration_s < 0.001:
            why = "duration_s must be at least 0.001 (one millisecond)."
            raise bad(why, "duration_s")
        if not isinstance(self.start, datetime) or self.start.utcoffset() is None:
            why = "start must be a timezone-aware datetime, e.g. tzinfo=UTC."
            raise bad(why, "start")
        if not is_real(self.zipf_a) or not 0.0 <= self.zipf_a <= 10.0:
            why = "zipf_a must be a number from 0 (uniform) to 10."
            raise bad(why, "zipf_a")
        rate = self.attacks_per_tenant_hour
        if not is_real(rate) or not math.isfinite(rate) or rate < 0:
            why = "It must be a finite number >= 0."
            raise bad(why, "attacks_per_tenant_hour")
        if not is_int(self.disorder_ms) or self.disorder_ms < 0:
            why = "disorder_ms must be an integer >= 0."
            raise bad(why, "disorder_ms")
        if not isinstance(self.with_ids, bool):
            why = "with_ids must be True or False."
            raise bad(why, "with_ids")
        if not is_int(self.seed) or self.seed < 0:
            why = "seed must be an integer >= 0."
            raise bad(why, "seed")

    @property
    def start_ms(self) -> int:
        """The span's start in epoch milliseconds (floored to the millisecond)."""
        return (self.start - _EPOCH) // _MS

    @property
    def duration_ms(self) -> int:
        """The span's length in milliseconds; event times lie in ``[start, start + this)``."""
        return max(1, round(self.duration_s * 1000))


def _iso_ms(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class AttackLabel:
    """One injected attack: the rule it should trigger, where, and its first and last event."""

    scenario: str
    tenant: str
    group: dict[str, str] = field(hash=False)
    start: datetime
    end: datetime
    events: int = 0

    def to_json(self) -> str:
        """A compact JSON object; times as ISO-8601 UTC with milliseconds and ``Z``."""
        return msgspec.json.encode(
            {
                "scenario": self.scenario,
                "tenant": self.tenant,
                "group": self.group,
                "start": _iso_ms(self.start),
                "end": _iso_ms(self.end),
                "events": self.events,
            }
        ).decode()

    @classmethod
    def from_json(cls, data: str | bytes) -> AttackLabel:
        """Parse what :meth:`to_json` wrote."""
        obj: dict[str, Any] = msgspec.json.decode(data)
        return cls(
            scenario=str(obj["scenario"]),
            tenant=str(obj["tenant"]),
            group={str(k): str(v) for k, v in obj["group"].items()},
            start=datetime.fromisoformat(obj["start"]),
            end=datetime.fromisoformat(obj["end"]),
            events=int(obj.get("events", 0)),
        )


_I64 = npt.NDArray[np.int64]


@dataclass
class _Plan:
    """Columns of all events (attacks appended after background) and the arrival order."""

    ts: _I64  # epoch ms
    kind: _I64
    tenant: _I64
    principal: _I64
    ip: _I64  # < principals: that principal's home IP; else attacker address index
    ua: _I64
    session: _I64
    records: _I64  # -1: no recordCount
    resource: _I64
    correlation: _I64
    order: _I64
    labels: list[AttackLabel]


class _AttackEvents:
    """Column builder for the (few) attack events."""

    def __init__(self) -> None:
        self.offset: list[int] = []
        self.kind: list[int] = []
        self.tenant: list[int] = []
        self.principal: list[int] = []
        self.ip: list[int] = []
        self.ua: list[int] = []
        self.session: list[int] = []

    def __len__(self) -> int:
        return len(self.offset)

    def add(
        self, offset: int, kind: int, tenant: int, principal: int, ip: int, ua: int, session: int
    ) -> None:
        self.offset.append(offset)
        self.kind.append(kind)
        self.tenant.append(tenant)
        self.principal.append(principal)
        self.ip.append(ip)
        self.ua.append(ua)
        self.session.append(session)


def _tenant_weights(config: SyntheticConfig) -> npt.NDArray[np.float64]:
    ranks = np.arange(1, config.tenants + 1, dtype=np.float64)
    weights: npt.NDArray[np.float64] = 1.0 / ranks**config.zipf_a
    total = float(weights.sum())
    return weights / total


def _principal_ranges(config: SyntheticConfig, weights: npt.NDArray[np.float64]) -> _I64:
    """Principals per tenant: a floor each, the rest by largest remainder on popularity."""
    floor = min(_MIN_PRINCIPALS_PER_TENANT, config.principals // config.tenants)
    rest = config.principals - floor * config.tenants
    share = weights * rest
    counts = np.floor(share).astype(np.int64)
    short = rest - int(counts.sum())
    if short:
        counts[np.argsort(-(share - counts), kind="stable")[:short]] += 1
    return counts + floor


def _hour_segments(config: SyntheticConfig) -> tuple[_I64, _I64, _I64]:
    """The span cut at UTC hour boundaries: (start offset, length, UTC hour) of each piece."""
    start, dur = config.start_ms, config.duration_ms
    first = start - start % _HOUR_MS
    bounds = np.arange(first, start + dur + _HOUR_MS, _HOUR_MS, dtype=np.int64)
    lo = np.clip(bounds[:-1], start, start + dur) - start
    hi = np.clip(bounds[1:], start, start + dur) - start
    keep = hi > lo
    hours = (bounds[:-1] % _DAY_MS) // _HOUR_MS
    return lo[keep], (hi - lo)[keep], hours[keep]


def _off_hours_intervals(config: SyntheticConfig) -> list[tuple[int, int]]:
    """Offsets ``[lo, hi)`` of the span that fall in 23:00-05:00 UTC, merged."""
    out: list[tuple[int, int]] = []
    for lo, length, hour in zip(*_hour_segments(config), strict=True):
        if hour >= 23 or hour < 5:
            if out and out[-1][1] == lo:
                out[-1] = (out[-1][0], int(lo + length))
            else:
                out.append((int(lo), int(lo + length)))
    return out


def _background_offsets(rng: np.random.Generator, config: SyntheticConfig, n: int) -> _I64:
    lo, length, hours = _hour_segments(config)
    density = np.where((hours >= 22) | (hours < 6), _OFF_HOURS_DENSITY, 1.0)
    p = length * density
    counts = rng.multinomial(n, p / p.sum())
    seg = np.repeat(np.arange(len(lo)), counts)
    within = np.floor(rng.random(n) * length[seg]).astype(np.int64)
    return lo[seg] + np.minimum(within, length[seg] - 1)


def _plan(config: SyntheticConfig) -> _Plan:  # noqa: PLR0915 - one linear recipe
    rng = np.random.default_rng(config.seed)
    weights = _tenant_weights(config)
    counts = _principal_ranges(config, weights)
    first = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    dur = config.duration_ms
    off_hours = _off_hours_intervals(config)
    org_width = max(3, len(str(config.tenants)))
    pid_width = max(5, len(str(config.principals)))

    def org(t: int) -> str:
        return f"org-{t + 1:0{org_width}d}"

    def pid(p: int) -> str:
        return f"u-{p + 1:0{pid_width}d}"

    # -- attacks ---------------------------------------------------------------------------
    lengths = {
        "failed_auth": (60_000, 180_000),
        "unauthorized_access": (60_000, 300_000),
        "data_velocity": (60_000, 60_000),
        "bulk_operation": (240_000, 240_000),
        "password_spraying": (120_000, 300_000),
        "brute_force_success": (60_000, 300_000),
        "off_hours": (300_000, 900_000),
    }
    feasible = [s for s in SCENARIOS if s != "off_hours" and lengths[s][0] <= dur]
    if any(hi - lo >= lengths["off_hours"][0] for lo, hi in off_hours):
        feasible.append("off_hours")
    per_tenant = rng.poisson(config.attacks_per_tenant_hour * dur / _HOUR_MS, config.tenants)
    plan: list[tuple[int, str]] = []
    if feasible:
        picks = rng.integers(0, len(feasible), int(per_tenant.sum()))
        tenants_of = np.repeat(np.arange(config.tenants), per_tenant)
        plan = [(int(t), feasible[int(s)]) for t, s in zip(tenants_of, picks, strict=True)]
        plan = [plan[int(i)] for i in rng.permutation(len(plan))]

    attacks = _AttackEvents()
    labels: list[AttackLabel] = []
    budget = config.events // 2
    attacker = 0  # next attacker address / session index

    for t, scenario in plan:
        lo_len, hi_len = lengths[scenario]
        length = int(rng.integers(lo_len, hi_len + 1))
        n_principals = int(counts[t])
        victim = int(first[t] + rng.integers(0, n_principals))
        ip_home = victim
        events: list[tuple[int, int, int, int, int]] = []  # offset, kind, principal, ip, ua
        group: dict[str, str]
        if scenario == "failed_auth":
            n = int(rng.integers(8, 21))
            events = [(o, _LOGIN_FAIL, victim, ip_home, -1) for o in rng.integers(0, length, n)]
            group = {"principalId": pid(victim)}
        elif scenario == "unauthorized_access":
            n = int(rng.integers(4, 11))
            events = [(o, _DENIED, victim, ip_home, -1) for o in rng.integers(0, length, n)]
            group = {"principalId": pid(victim)}
        elif scenario == "data_velocity":
            n = int(rng.integers(80, 201))
            events = [(o, _PATIENT_READ, victim, ip_home, -1) for o in rng.integers(0, length, n)]
            group = {"principalId": pid(victim)}
        elif scenario == "bulk_operation":
            n = int(rng.integers(120, 201))
            crew = first[t] + rng.integers(0, n_principals, int(rng.integers(3, 9)))
            who = crew[rng.integers(0, len(crew), n)]
            offsets = rng.integers(0, length, n)
            events = [(o, _EXPORT, p, p, -1) for o, p in zip(offsets, who, strict=True)]
            group = {}
        elif scenario == "password_spraying":
            m = min(int(rng.integers(12, 26)), n_principals)
            if m < 12:
                continue
            victims = first[t] + rng.choice(n_principals, m, replace=False)
            tries = victims.repeat(rng.integers(1, 3, m))
            ip = config.principals + attacker
            offsets = rng.integers(0, length, len(tries))
            events = [
                (o, _LOGIN_FAIL, p, ip, _ATTACKER_UA) for o, p in zip(offsets, tries, strict=True)
            ]
            group = {"sessionContext.ipAddress": _ip(ip, config.principals)}
        elif scenario == "brute_force_success":
            n = int(rng.integers(6, 11))
            ip = config.principals + attacker
            offsets = np.sort(rng.integers(0, length - 1000, n))
            events = [(o, _LOGIN_FAIL, victim, ip, _ATTACKER_UA) for o in offsets]
            success = int(offsets[-1]) + int(rng.integers(1, 1001))
            events.append((success, _LOGIN_OK, victim, ip, _ATTACKER_UA))
            group = {"principalId": pid(victim)}
        else:  # off_hours: a burst of reads at 23:00-05:00 UTC
            n = int(rng.integers(20, 41))
            spans = [(lo, hi) for lo, hi in off_hours if hi - lo >= length]
            if not spans:
                continue
            span_lo, span_hi = spans[int(rng.integers(0, len(spans)))]
            base = span_lo + int(rng.integers(0, span_hi - span_lo - length + 1))
            kinds = np.where(rng.random(n) < 0.5, _READ, _PATIENT_READ)
            offsets = rng.integers(0, length, n)
            events = [(o, int(k), victim, ip_home, -1) for o, k in zip(offsets, kinds, strict=True)]
            events = [(base + int(o), k, p, i, u) for o, k, p, i, u in events]
            length = -1  # placed already
            group = {}
        if len(attacks) + len(events) > budget:
            continue
        if length >= 0:
            base = int(rng.integers(0, dur - length + 1))
            events = [(base + int(o), k, p, i, u) for o, k, p, i, u in events]
        if any(u == _ATTACKER_UA for *_, u in events):
            attacker += 1
        session_id = (1 << 40) + len(labels)
        for o, k, p, i, u in events:
            ua = u if u >= 0 else int(p) % _ATTACKER_UA
            attacks.add(int(o), k, t, int(p), int(i), ua, session_id)
        times = [int(e[0]) for e in events]
        labels.append(
            AttackLabel(
                scenario=scenario,
                tenant=org(t),
                group=group,
                start=_from_ms(config.start_ms + min(times)),
                end=_from_ms(config.start_ms + max(times)),
                events=len(events),
            )
        )

    # -- background ------------------------------------------------------------------------
    n_bg = config.events - len(attacks)
    bg_offsets = _background_offsets(rng, config, n_bg)
    bg_tenant = rng.choice(config.tenants, n_bg, p=weights).astype(np.int64)
    bg_principal = first[bg_tenant] + np.floor(rng.random(n_bg) * counts[bg_tenant]).astype(
        np.int64
    )
    mix_kinds = np.array(list(_BACKGROUND_MIX), dtype=np.int64)
    mix_p = np.array(list(_BACKGROUND_MIX.values()))
    bg_kind = mix_kinds[rng.choice(len(mix_kinds), n_bg, p=mix_p / mix_p.sum())]

    def col(background: _I64, attack: list[int]) -> _I64:
        return np.concatenate((background, np.asarray(attack, dtype=np.int64)))

    offsets = col(bg_offsets, attacks.offset)
    ts = offsets + config.start_ms
    kind = col(bg_kind, attacks.kind)
    principal = col(bg_principal, attacks.principal)
    n_all = len(ts)
    session = np.where(
        np.arange(n_all) < n_bg,
        (principal << 16) + ts // _SESSION_MS % 65536,
        col(np.zeros(n_bg, dtype=np.int64), attacks.session),
    )
    lo_rc = np.array([k.records[0] if k.records else -1 for k in _KINDS], dtype=np.int64)
    hi_rc = np.array([k.records[1] if k.records else -1 for k in _KINDS], dtype=np.int64)
    records = lo_rc[kind] + np.floor(rng.random(n_all) * (hi_rc[kind] - lo_rc[kind] + 1)).astype(
        np.int64
    )
    resource = rng.integers(1, 250_000, n_all, dtype=np.int64)
    correlation = rng.integers(0, np.iinfo(np.int64).max, n_all, dtype=np.int64)

    by_time = np.argsort(offsets, kind="stable")
    if config.disorder_ms > 0:
        delayed = offsets[by_time] + rng.integers(0, config.disorder_ms + 1, n_all)
        order = by_time[np.argsort(delayed, kind="stable")]
    else:
        order = by_time
    labels.sort(key=lambda label: (label.start, label.tenant, label.scenario))
    return _Plan(
        ts=ts,
        kind=kind,
        tenant=col(bg_tenant, attacks.tenant),
        principal=principal,
        ip=col(bg_principal, attacks.ip),
        ua=col(bg_principal % _ATTACKER_UA, attacks.ua),
        session=session,
        records=records,
        resource=resource,
        correlation=correlation,
        order=order.astype(np.int64),
        labels=labels,
    )


def _from_ms(ms: int) -> datetime:
    return _EPOCH + ms * _MS


def _ip(index: int, principals: int) -> str:
    if index < principals:
        return f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"
    j = index - principals
    return f"100.{64 + (j >> 16 & 63)}.{j >> 8 & 255}.{j & 255}"


def _lines(config: SyntheticConfig, plan: _Plan) -> Iterator[bytes]:
    order = plan.order
    org_width = max(3, len(str(config.tenants)))
    pid_width = max(5, len(str(config.principals)))
    orgs = [f"org-{t + 1:0{org_width}d}" for t in range(config.tenants)]
    pids = [f"u-{p + 1:0{pid_width}d}" for p in range(config.principals)]
    n_ips = int(plan.ip.max()) + 1 if len(plan.ip) else 0
    ips = [_ip(i, config.principals) for i in range(n_ips)]
    heads = [f'"action":"{k.action}","status":"{k.status}"' for k in _KINDS]
    targets = [
        f'"targetResourceType":"{k.resource_type}","targetResourceId":"{k.resource_prefix}'
        if k.resource_type
        else ""
        for k in _KINDS
    ]
    outcomes = [k.outcome for k in _KINDS]
    classes = [k.classification for k in _KINDS]
    stamps = np.datetime_as_string(plan.ts[order].astype("datetime64[ms]"), unit="ms")
    seed = config.seed
    columns = zip(
        order.tolist(),
        stamps.tolist(),
        plan.kind[order].tolist(),
        plan.principal[order].tolist(),
        plan.tenant[order].tolist(),
        plan.ip[order].tolist(),
        plan.ua[order].tolist(),
        plan.session[order].tolist(),
        plan.records[order].tolist(),
        plan.resource[order].tolist(),
        plan.correlation[order].tolist(),
        strict=True,
    )
    for i, stamp, k, p, t, ip, ua, sess, rc, res, corr in columns:
        ident = f'"id":"ev-{seed:x}-{i:08x}",' if config.with_ids else ""
        target = f'{targets[k]}{res}",' if targets[k] else ""
        count = f',"recordCount":{rc}' if rc >= 0 else ""
        yield (
            f'{{{ident}"timestamp":"{stamp}Z",{heads[k]},"principalId":"{pids[p]}",'
            f'"organizationId":"{orgs[t]}",{target}"outcomeDescription":"{outcomes[k]}",'
            f'"sessionContext":{{"sessionId":"s-{sess:x}","ipAddress":"{ips[ip]}",'
            f'"userAgent":"{_USER_AGENTS[ua]}"}},"dataClassification":"{classes[k]}",'
            f'"correlationId":"{corr:016x}"{count}}}'
        ).encode()


def generate(config: SyntheticConfig) -> Iterator[bytes]:
    """Yield the events as compact JSON lines (no trailing newline), in arrival order."""
    return _lines(config, _plan(config))


def generate_labelled(config: SyntheticConfig) -> tuple[list[bytes], list[AttackLabel]]:
    """All lines in arrival order, and the injected attacks sorted by start time."""
    plan = _plan(config)
    return list(_lines(config, plan)), plan.labels


def write_jsonl(
    path: str | Path, config: SyntheticConfig, *, labels_path: str | Path | None = None
) -> int:
    """Write the events as JSON lines (and the labels, one JSON object a line); return the count."""
    plan = _plan(config)
    written = 0
    with Path(path).open("wb") as out:
        for line in _lines(config, plan):
            out.write(line + b"\n")
            written += 1
    if labels_path is not None:
        with Path(labels_path).open("w", encoding="utf-8") as out_labels:
            out_labels.writelines(label.to_json() + "\n" for label in plan.labels)
    return written
