"""Event integrity: the original producers' ``hash`` and ``signature``, verified per tenant.

How the original's producers compute them (its ``crypto.ts``), and therefore how they are
checked here, byte for byte:

* **Critical fields**: ``timestamp``, ``action``, ``status``, ``principalId``,
  ``organizationId``, ``targetResourceType``, ``targetResourceId``, ``outcomeDescription``.
  A missing or *falsy* value (JavaScript ``||``: ``""``, ``0``, ``false``, ``null``) is
  ``null``.
* **Canonical string**: the keys in code-unit order, each written ``key:`` + the value's
  ``JSON.stringify`` (non-ASCII kept as is, ``"``, ``\\`` and control characters escaped),
  joined with ``|``. The timestamp is the string exactly as received, never re-formatted:
  ``2026-03-10T10:00:00Z`` and ``2026-03-10T10:00:00.000Z`` are the same instant and different
  canonical strings.
* ``hash`` = SHA-256 hex of the canonical string (UTF-8); ``signature`` = HMAC-SHA256, keyed by
  the producer's secret, of the UTF-8 bytes of the *hex hash string*, as hex.

Policies, per tenant (:class:`Policy`):

* ``off``: nothing is read or checked (and nothing costs anything).
* ``verify-if-present``: a ``hash`` that is present must match; a ``signature`` that is present
  must match when the tenant has a key and the event's ``algorithm`` is HMAC-SHA256 (or absent).
  A mismatch is a *violation*.
* ``require``: as ``verify-if-present``, and an event without a ``signature`` is rejected
  (:attr:`~rayworker.events.RejectReason.UNSIGNED`); one whose signature cannot be checked (no
  key for the tenant, or a KMS algorithm) is rejected as
  :attr:`~rayworker.events.RejectReason.UNVERIFIABLE`.

A violation is counted (``integrity_violations`` per tenant) and raises one CRITICAL
``integrity_violation`` alert per tenant and suppression period (aligned on event time, like
every alert, so the id is deterministic), whose evidence holds the ids of the events. The event
itself still goes on to detection: a tampered failed login still counts.

Only a router (or a single detector) screens, once per event, so a violation is counted and
alerted exactly once however many shards the event then travels to. Digests are compared with
:func:`hmac.compare_digest`; keys never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import operator
from bisect import insort
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

import msgspec
import numpy as np
import numpy.typing as npt

from rayworker.alerts import Alert, alert_id, fingerprint
from rayworker.errors import ConfigError, StateError
from rayworker.events import EventBatch, Rejection, RejectReason, derive_event_id

if TYPE_CHECKING:
    from rayworker.detect import MetricDeltas

__all__ = [
    "CRITICAL_FIELDS",
    "HMAC_ALGORITHM",
    "INTEGRITY_RULE_ID",
    "IntegrityCheck",
    "IntegrityConfig",
    "IntegrityMonitor",
    "Policy",
    "Verdict",
    "canonical_string",
    "event_hash",
    "sign",
    "verify",
]

CRITICAL_FIELDS: Final[tuple[str, ...]] = (
    "action",
    "organizationId",
    "outcomeDescription",
    "principalId",
    "status",
    "targetResourceId",
    "targetResourceType",
    "timestamp",
)
"""The signed fields, already in code-unit order (the order of the canonical string)."""

HMAC_ALGORITHM: Final = "HMAC-SHA256"
"""The ``algorithm`` value of HMAC-signed events (others are KMS signatures)."""

INTEGRITY_RULE_ID: Final = "integrity_violation"
"""The ``rule_id`` of integrity alerts; no rule of a pack may use it while integrity is on."""

_US: Final = 1_000_000
_NEVER: Final = -(2**62)
_SEVERITY: Final = "CRITICAL"
_encode = msgspec.json.encode


class Policy(StrEnum):
    """What a tenant's events must prove."""

    OFF = "off"
    VERIFY_IF_PRESENT = "verify-if-present"
    REQUIRE = "require"


class Verdict(StrEnum):
    """The outcome of verifying one event."""

    VALID = "valid"
    """Everything present was checked and matches."""
    UNSIGNED = "unsigned"
    """No ``hash`` and no ``signature``: nothing to check."""
    HASH_MISMATCH = "hash_mismatch"
    """The ``hash`` is not that of the event's critical fields."""
    SIGNATURE_MISMATCH = "signature_mismatch"
    """The ``signature`` is not the HMAC of the event's hash under the tenant's key."""


# --- the original's algorithm ------------------------------------------------------------------


def _js_number(value: float) -> str:
    """``Number.prototype.toString()`` of a finite number (ECMAScript Number::toString)."""
    if value == 0:
        return "0"
    # Python's repr gives the shortest round-trip digits, as JavaScript does; only the layout
    # (where the point goes, when to switch to an exponent) differs.
    _, digit_tuple, exponent = Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    k = len(digits)
    n = len(digit_tuple) + int(exponent)  # the value is 0.digits * 10**n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        mantissa = digits[0] + ("." + digits[1:] if k > 1 else "")
        text = f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"
    return ("-" if value < 0 else "") + text


def _js_json(value: Any) -> bytes:
    """``JSON.stringify(value)`` as UTF-8 (msgspec escapes strings exactly as JavaScript)."""
    if value is None or value is True or value is False or isinstance(value, str):
        return _encode(value)
    if isinstance(value, int):
        # JavaScript numbers are doubles: a large integer reads back rounded.
        return str(value).encode() if abs(value) < 2**53 else _js_json(float(value))
    if isinstance(value, float):
        return _js_number(value).encode() if math.isfinite(value) else b"null"
    if isinstance(value, list | tuple):
        return b"[" + b",".join(_js_json(v) for v in value) + b"]"
    if isinstance(value, Mapping):
        items = (_encode(str(k)) + b":" + _js_json(v) for k, v in value.items())
        return b"{" + b",".join(items) + b"}"
    msg = f"a critical field holds a {type(value).__name__}, which is not a JSON value"
    raise TypeError(msg)


def _field_json(value: Any) -> bytes:
    """One critical field as the canonical string writes it (JavaScript ``|| null``)."""
    if value.__class__ is str:
        return _encode(value) if value else b"null"
    if value is None or value is False:
        return b"null"
    if isinstance(value, int | float) and (value == 0 or math.isnan(value)):
        return b"null"
    return _js_json(value)


_CANONICAL: Final = b"|".join(name.encode() + b":%s" for name in CRITICAL_FIELDS)


def _canonical(
    action: Any,
    organization_id: Any,
    outcome_description: Any,
    principal_id: Any,
    status: Any,
    target_resource_id: Any,
    target_resource_type: Any,
    timestamp: Any,
) -> bytes:
    j = _field_json
    return _CANONICAL % (
        j(action),
        j(organization_id),
        j(outcome_description),
        j(principal_id),
        j(status),
        j(target_resource_id),
        j(target_resource_type),
        j(timestamp),
    )


def canonical_string(event: Mapping[str, Any]) -> str:
    """The canonical string of an event given as its camelCase JSON object.

    ``event["timestamp"]`` must be the string as received (a ``datetime`` would be formatted
    differently from what the producer hashed).
    """
    return _canonical(*(event.get(name) for name in CRITICAL_FIELDS)).decode()


def event_hash(event: Mapping[str, Any]) -> str:
    """The ``hash`` the original's producers put on ``event``: SHA-256 hex of its canonical
    string."""
    return hashlib.sha256(canonical_string(event).encode()).hexdigest()


def sign(hash_hex: str, key: bytes | str) -> str:
    """The ``signature`` of a hash under an HMAC key (a ``str`` key is taken as UTF-8)."""
    secret = key.encode() if isinstance(key, str) else key
    return hmac.new(secret, hash_hex.encode(), hashlib.sha256).hexdigest()


def _matches(expected_hex: bytes, received: Any) -> bool:
    if not isinstance(received, str):
        return False
    return hmac.compare_digest(expected_hex, received.encode("utf-8", "surrogatepass"))


def _present(value: Any) -> bool:
    return value is not None and value != ""


def verify(event: Mapping[str, Any], key: bytes | str | None) -> Verdict:
    """Verify an event (its camelCase JSON object, timestamp as received) under ``key``.

    The ``hash`` is checked when present; the ``signature`` when present, when a key is given
    and when ``algorithm`` is absent or HMAC-SHA256. See the module docstring.
    """
    secret = key.encode() if isinstance(key, str) else key
    digest = hashlib.sha256(canonical_string(event).encode()).hexdigest().encode()
    return _judge(digest, event.get("hash"), event.get("signature"), event.get("algorithm"), secret)


def _judge(
    digest: bytes, given_hash: Any, signature: Any, algorithm: Any, key: bytes | None
) -> Verdict:
    has_hash, has_signature = _present(given_hash), _present(signature)
    if not has_hash and not has_signature:
        return Verdict.UNSIGNED
    if has_hash and not _matches(digest, given_hash):
        return Verdict.HASH_MISMATCH
    if has_signature and key is not None and _hmac_algorithm(algorithm):
        expected = hmac.digest(key, digest, "sha256").hex().encode()
        if not _matches(expected, signature):
            return Verdict.SIGNATURE_MISMATCH
    return Verdict.VALID


def _hmac_algorithm(algorithm: Any) -> bool:
    return algorithm is None or algorithm in ("", HMAC_ALGORITHM)


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class IntegrityConfig:
    """Per-tenant policies and HMAC keys (the pure form of ``Settings.integrity``).

    The keys are the producers' secrets as bytes (a secret string is its UTF-8 bytes); the repr
    names the tenants that have one and never shows a key.
    """

    default: Policy = Policy.OFF
    policies: Mapping[str, Policy] = field(default_factory=dict)
    keys: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Accept plain strings ("require") as well as Policy members, and freeze copies.
        try:
            object.__setattr__(self, "default", Policy(self.default))
            policies = {str(t): Policy(p) for t, p in self.policies.items()}
        except ValueError as exc:
            msg = f"{exc}; use one of {', '.join(p.value for p in Policy)}"
            raise ConfigError(msg) from None
        object.__setattr__(self, "policies", policies)
        object.__setattr__(self, "keys", dict(self.keys))
        for tenant, key in self.keys.items():
            if not isinstance(key, bytes) or not key:
                msg = f"the integrity key of tenant {tenant!r} must be non-empty bytes"
                raise ConfigError(msg)
        for tenant, policy in self.policies.items():
            if policy is Policy.REQUIRE and tenant not in self.keys:
                msg = (
                    f"tenant {tenant!r} requires signed events but has no HMAC key; "
                    f"add integrity.keys.{tenant} (or an entry in integrity.keys_file)"
                )
                raise ConfigError(msg)

    def __repr__(self) -> str:
        return (
            f"IntegrityConfig(default={self.default.value!r}, "
            f"policies={ {t: p.value for t, p in self.policies.items()}!r}, "
            f"keys=<{len(self.keys)} tenants: {', '.join(sorted(self.keys))}>)"
        )

    @property
    def enabled(self) -> bool:
        """True when some tenant's policy is not ``off``."""
        return self.default is not Policy.OFF or any(
            p is not Policy.OFF for p in self.policies.values()
        )

    def policy(self, tenant: str) -> Policy:
        """The tenant's policy (its own, else the default)."""
        return self.policies.get(tenant, self.default)

    def key(self, tenant: str) -> bytes | None:
        """The tenant's HMAC key, or None."""
        return self.keys.get(tenant)


# --- the screening step ------------------------------------------------------------------------


class _Proofs(msgspec.Struct, gc=False):
    """What verification reads of an event beyond the decoded batch: the timestamp string as
    received (the batch holds it parsed) and the proofs.

    Decoded from the raw bytes only for tenants whose policy is not ``off``, so the hot-path
    decoder keeps parsing ``timestamp`` straight into a datetime and integrity costs nothing
    when it is off.
    """

    timestamp: Any = None
    hash: Any = None
    signature: Any = None
    algorithm: Any = None


# The critical fields but the timestamp, in canonical order, from a decoded wire event. The
# decoder has checked they are strings (or absent), so each is written as msgspec encodes a
# string, which is exactly JSON.stringify, with "" turned into null.
_WIRE_FIELDS = operator.attrgetter(
    "action",
    "organization_id",
    "outcome_description",
    "principal_id",
    "status",
    "target_resource_id",
    "target_resource_type",
)
_EMPTY: Final = b'""'


class _HmacKey:
    """HMAC-SHA256 under one key with the padded key blocks hashed once (RFC 2104).

    ``hmac.digest`` sets the key up again for every message, which made HMAC the largest cost
    of verification (about 3.5 us of a 9 us check); copying the two prepared hash states costs
    a quarter of that. A test checks it against :func:`hmac.digest` for many key lengths.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        block = hashlib.sha256(key).digest() if len(key) > _BLOCK else key
        block = block.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(block.translate(_IPAD))
        self._outer = hashlib.sha256(block.translate(_OPAD))

    def hexdigest(self, message: bytes) -> bytes:
        """The HMAC of ``message``, as lowercase hex ASCII bytes."""
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest().encode()


_BLOCK: Final = 64
_IPAD: Final = bytes(b ^ 0x36 for b in range(256))
_OPAD: Final = bytes(b ^ 0x5C for b in range(256))


@dataclass(slots=True)
class IntegrityCheck:
    """What screening one batch found: rows rejected and rows in violation."""

    rejections: list[Rejection] = field(default_factory=list)
    violations: list[tuple[int, Verdict]] = field(default_factory=list)
    """(row in the batch, HASH_MISMATCH or SIGNATURE_MISMATCH), in arrival order."""


@dataclass(slots=True)
class _Period:
    """The open integrity alert of one tenant and suppression period."""

    tenant: str
    start_us: int
    watermark_us: int
    evidence: list[tuple[int, str]] = field(default_factory=list)
    occurrences: int = 0
    hash_mismatches: int = 0
    signature_mismatches: int = 0
    first_us: int = 0
    last_us: int = 0

    def to_json(self) -> list[Any]:
        return [
            self.tenant,
            self.start_us,
            self.watermark_us,
            [list(e) for e in self.evidence],
            self.occurrences,
            self.hash_mismatches,
            self.signature_mismatches,
            self.first_us,
            self.last_us,
        ]

    @classmethod
    def from_json(cls, data: list[Any]) -> _Period:
        tenant, start, wm, evidence, occ, hashes, sigs, first, last = data
        return cls(
            str(tenant),
            int(start),
            int(wm),
            [(int(t), str(i)) for t, i in evidence],
            int(occ),
            int(hashes),
            int(sigs),
            int(first),
            int(last),
        )


class IntegrityMonitor:
    """Verifies batches for the tenants whose policy is not ``off``; raises integrity alerts.

    Used by :func:`rayworker.detect.screen_batch`, so a detector and a router screen alike.
    State (the open alerts) is plain data: :meth:`snapshot` / :meth:`restore`.
    """

    def __init__(
        self,
        config: IntegrityConfig,
        *,
        suppression_s: float,
        evidence_cap: int,
        rule_ids: Iterable[str] = (),
    ) -> None:
        if INTEGRITY_RULE_ID in set(rule_ids):
            msg = (
                f"a rule is named {INTEGRITY_RULE_ID!r}, the rule id of integrity alerts; "
                "rename the rule"
            )
            raise ConfigError(msg)
        self.config = config
        self.period_us = max(1, round(suppression_s * _US))
        self.evidence_cap = evidence_cap
        self._decode: Callable[[bytes], _Proofs] = msgspec.json.Decoder(_Proofs).decode
        self._macs = {tenant: _HmacKey(key) for tenant, key in config.keys.items()}
        self._open: dict[tuple[str, int], _Period] = {}
        self._versions: dict[Policy, str] = {}

    def __repr__(self) -> str:
        return f"IntegrityMonitor({self.config!r}, open_alerts={len(self._open)})"

    # --- verification ------------------------------------------------------------------------

    def check(
        self, batch: EventBatch, accepted: npt.NDArray[np.bool_], start_index: int
    ) -> IntegrityCheck:
        """Verify the accepted events of tenants with a policy; reject per ``require``.

        ``accepted`` is updated in place: a rejected event is no longer accepted.
        """
        out = IntegrityCheck()
        if len(batch) == 0:
            return out
        codes, vocab = batch.codes("organizationId")
        policies = [self.config.policy(t) for t in vocab]
        active = np.array([p is not Policy.OFF for p in policies], dtype=np.bool_)
        rows = np.flatnonzero(active[codes] & accepted)
        if len(rows) == 0:
            return out
        macs = [self._macs.get(t) for t in vocab]
        raw = batch.raw
        events = batch.events
        decode = self._decode
        sha256 = hashlib.sha256
        encode = _encode
        template = _CANONICAL
        fields = _WIRE_FIELDS
        matches = _matches
        code_list = codes.tolist()
        for i in rows.tolist():
            code = code_list[i]
            proofs = decode(raw[i])
            mac = macs[code]
            signature = proofs.signature
            algorithm = proofs.algorithm
            if policies[code] is Policy.REQUIRE:
                tenant = vocab[code]
                problem = _unprovable(signature, algorithm, mac is not None, tenant)
                if problem is not None:
                    reason, message = problem
                    accepted[i] = False
                    out.rejections.append(
                        Rejection(
                            reason,
                            "signature",
                            message,
                            raw[i],
                            start_index + batch.line_of(i),
                            tenant,
                        )
                    )
                    continue
            stamp = proofs.timestamp
            parts = (*map(encode, fields(events[i])), encode(stamp) if stamp else b"null")
            if _EMPTY in parts:
                parts = tuple(b"null" if part == _EMPTY else part for part in parts)
            digest = sha256(template % parts).hexdigest().encode()
            given = proofs.hash
            if given is not None and given != "" and not matches(digest, given):
                out.violations.append((i, Verdict.HASH_MISMATCH))
            elif (
                signature is not None
                and signature != ""
                and mac is not None
                and _hmac_algorithm(algorithm)
                and not matches(mac.hexdigest(digest), signature)
            ):
                out.violations.append((i, Verdict.SIGNATURE_MISMATCH))
        return out

    # --- alerts ------------------------------------------------------------------------------

    def raise_alerts(
        self,
        batch: EventBatch,
        check: IntegrityCheck | None,
        wm_after: npt.NDArray[np.int64],
        max_seen: Mapping[str, int],
        lateness_us: int,
        metrics: MetricDeltas,
    ) -> list[Alert]:
        """Count violations (``metrics.integrity_violations``, per tenant) and fold them into
        the open alerts (counted as alerts and alert updates like any rule's).

        ``wm_after`` is each event's tenant watermark after it and ``max_seen`` every tenant's
        largest event time (microseconds); alerts whose period the tenant's watermark has passed
        are closed. Returns the alerts created or changed, in their latest state.
        """
        changed: dict[tuple[str, int], _Period] = {}
        if check is not None and check.violations:
            tenants = batch.tenants
            events, raw = batch.events, batch.raw
            times = batch.ts
            period = self.period_us
            for i, verdict in check.violations:
                tenant = tenants[i]
                t = int(times[i])
                start = (t // period) * period
                slot = (tenant, start)
                state = self._open.get(slot)
                if state is None:
                    state = self._open[slot] = _Period(
                        tenant, start, int(wm_after[i]), first_us=t, last_us=t
                    )
                    metrics.alerts[(tenant, INTEGRITY_RULE_ID, _SEVERITY)] += 1
                else:
                    metrics.alert_updates[(tenant, INTEGRITY_RULE_ID)] += 1
                metrics.integrity_violations[tenant] += 1
                state.occurrences += 1
                if verdict is Verdict.HASH_MISMATCH:
                    state.hash_mismatches += 1
                else:
                    state.signature_mismatches += 1
                state.first_us = min(state.first_us, t)
                state.last_us = max(state.last_us, t)
                # The latest events by (time, id): the same evidence whatever the arrival order.
                # Only the violating events' ids: a router never needs the others'.
                given = events[i].id
                insort(state.evidence, (t, given if given is not None else derive_event_id(raw[i])))
                if len(state.evidence) > self.evidence_cap:
                    del state.evidence[0]
                changed[slot] = state
        alerts = [self._alert(state) for state in changed.values()]
        if self._open:
            for slot in [
                s
                for s, st in self._open.items()
                if st.start_us + self.period_us <= max_seen.get(st.tenant, _NEVER) - lateness_us
            ]:
                del self._open[slot]
        return alerts

    def _version(self, policy: Policy) -> str:
        version = self._versions.get(policy)
        if version is None:
            text = f"{INTEGRITY_RULE_ID}|crypto.ts canonical v1|{HMAC_ALGORITHM}|{policy.value}"
            version = self._versions[policy] = hashlib.sha256(text.encode()).hexdigest()[:12]
        return version

    def _alert(self, state: _Period) -> Alert:
        tenant = state.tenant
        fp = fingerprint(tenant, INTEGRITY_RULE_ID, {})
        n = state.occurrences
        events = "event" if n == 1 else "events"
        description = (
            f"{n} audit {events} of tenant {tenant} failed integrity verification "
            f"({state.hash_mismatches} hash mismatch, {state.signature_mismatches} signature "
            "mismatch): the audit trail may have been tampered with"
        )
        return Alert(
            id=alert_id(fp, state.start_us),
            fingerprint=fp,
            tenant_id=tenant,
            rule_id=INTEGRITY_RULE_ID,
            rule_version=self._version(self.config.policy(tenant)),
            group={},
            severity=_SEVERITY,
            type="SECURITY",
            title="Audit Trail Integrity Violation",
            description=description,
            tags=["integrity", "tampering", "audit-trail"],
            first_seen_us=state.first_us,
            last_seen_us=state.last_us,
            occurrences=n,
            count=n,
            evidence_ids=[event_id for _, event_id in state.evidence],
            window_start_us=state.start_us,
            window_end_us=state.start_us + self.period_us,
            watermark_us=state.watermark_us,
            period_start_us=state.start_us,
            period_end_us=state.start_us + self.period_us,
            metadata={
                "patternType": INTEGRITY_RULE_ID.upper(),
                "organizationId": tenant,
                "eventCount": n,
                "hashMismatches": state.hash_mismatches,
                "signatureMismatches": state.signature_mismatches,
                "policy": self.config.policy(tenant).value,
            },
        )

    # --- state -------------------------------------------------------------------------------

    def snapshot(self) -> list[list[Any]]:
        """The open integrity alerts as plain data."""
        return [state.to_json() for state in self._open.values()]

    def restore(self, data: Iterable[list[Any]]) -> None:
        """Continue from :meth:`snapshot`'s data."""
        try:
            states = [_Period.from_json(list(item)) for item in data]
        except (TypeError, ValueError) as exc:
            msg = f"snapshot state of the integrity alerts is corrupt: {exc}"
            raise StateError(msg) from exc
        self._open = {(s.tenant, s.start_us): s for s in states}


def _unprovable(
    signature: Any, algorithm: Any, has_key: bool, tenant: str
) -> tuple[RejectReason, str] | None:
    """Why ``require`` refuses an event, or None when its signature can be checked."""
    if not _present(signature):
        return RejectReason.UNSIGNED, (
            f"event has no signature, and tenant {tenant!r} requires signed events (integrity "
            "policy 'require'); sign it in the producer, or relax the tenant's policy"
        )
    if not has_key:
        return RejectReason.UNVERIFIABLE, (
            f"no HMAC key is configured for tenant {tenant!r}, so its signature cannot be "
            "verified (integrity policy 'require'); add the producer's key under integrity.keys"
        )
    if not _hmac_algorithm(algorithm):
        return RejectReason.UNVERIFIABLE, (
            f"signature algorithm {str(algorithm)[:64]!r} cannot be verified with an HMAC "
            f"key (integrity policy 'require' for tenant {tenant!r}); sign with {HMAC_ALGORITHM} "
            "or relax the tenant's policy"
        )
    return None
