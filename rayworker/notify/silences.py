"""Silences: per-tenant label matchers that mute notifications for a time (Alertmanager's).

A matcher is ``name=value``, ``name!=value``, ``name=~regex`` or ``name!~regex``; regexes
are anchored (they must match the whole value) and a missing label is the empty string.
``tag`` matches any of the alert's tags (``tag!=x``: none of them is ``x``). A silence mutes
an alert of its tenant while it is *active* (``starts_at <= now < ends_at``) and all its
matchers match. As in Alertmanager, at least one matcher must not match the empty string,
so a silence can never mute everything by accident.

Silences never cross tenants: :class:`Silences` is keyed by tenant and an id of another
tenant is "not found", exactly like an unknown one.

Pure: no database or network client is imported here.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from rayworker.errors import ConfigError

__all__ = [
    "Matcher",
    "Silence",
    "SilenceError",
    "SilenceState",
    "Silences",
    "expire_silence",
    "new_silence",
    "parse_matcher",
]

SilenceState = Literal["pending", "active", "expired"]
_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$", re.DOTALL)
_OPS = ("=", "!=", "=~", "!~")
MAX_COMMENT = 2000


class SilenceError(ConfigError):
    """Raised when a silence is invalid, unknown or cannot be expired; says what to do."""


@dataclass(frozen=True, slots=True)
class Matcher:
    """One label condition of a silence."""

    name: str
    op: str
    value: str

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            msg = f"matcher operator {self.op!r} is not one of {', '.join(_OPS)}"
            raise SilenceError(msg)
        if self.op in ("=~", "!~"):
            try:
                re.compile(self.value)
            except re.error as exc:
                msg = f"matcher {self.name}{self.op}{self.value!r}: bad regex ({exc})"
                raise SilenceError(msg) from None

    def _test(self, value: str) -> bool:
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        found = re.fullmatch(self.value, value) is not None
        return found if self.op == "=~" else not found

    def matches(self, labels: dict[str, str], tags: Sequence[str] = ()) -> bool:
        """True when the labels (and, for ``tag``, the tags) satisfy this matcher."""
        if self.name == "tag":
            values = list(tags) or [""]
            if self.op in ("=", "=~"):
                return any(self._test(v) for v in values)
            return all(self._test(v) for v in values)
        return self._test(labels.get(self.name, ""))

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"


def parse_matcher(text: str) -> Matcher:
    """``'rule_id=failed_auth'``, ``'group.source=~"10\\..*"'`` (quotes optional)."""
    found = _MATCHER.match(text)
    if found is None:
        msg = (
            f'Got "{text}"; write a matcher as name=value, name!=value, name=~regex or '
            "name!~regex, e.g. rule_id=failed_auth"
        )
        raise SilenceError(msg)
    name, op, value = found.groups()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return Matcher(name, op, value)


@dataclass(frozen=True, slots=True)
class Silence:
    """A silence of one tenant. Times are seconds since the epoch."""

    id: str
    tenant: str
    matchers: tuple[Matcher, ...]
    starts_at: float
    ends_at: float
    created_by: str
    comment: str
    created_at: float
    updated_at: float

    def state(self, now: float) -> SilenceState:
        """``pending`` before it starts, ``active`` until it ends, then ``expired``."""
        if now >= self.ends_at:
            return "expired"
        return "pending" if now < self.starts_at else "active"

    def mutes(self, labels: dict[str, str], tags: Sequence[str], now: float) -> bool:
        """True when active and every matcher matches."""
        return self.state(now) == "active" and all(m.matches(labels, tags) for m in self.matchers)

    def to_state(self) -> dict[str, Any]:
        """Plain data (for snapshots, JSON output and the stores)."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "matchers": [str(m) for m in self.matchers],
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "created_by": self.created_by,
            "comment": self.comment,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Silence:
        """The inverse of :meth:`to_state`."""
        return cls(
            id=str(state["id"]),
            tenant=str(state["tenant"]),
            matchers=tuple(parse_matcher(m) for m in state["matchers"]),
            starts_at=float(state["starts_at"]),
            ends_at=float(state["ends_at"]),
            created_by=str(state["created_by"]),
            comment=str(state["comment"]),
            created_at=float(state["created_at"]),
            updated_at=float(state["updated_at"]),
        )


def new_silence(
    tenant: str,
    matchers: Iterable[Matcher | str],
    *,
    starts_at: float,
    ends_at: float,
    created_by: str,
    comment: str,
    now: float,
    silence_id: str | None = None,
) -> Silence:
    """A validated new silence; raises :class:`SilenceError` saying what to fix."""
    parsed = tuple(m if isinstance(m, Matcher) else parse_matcher(m) for m in matchers)
    if not tenant.strip():
        msg = "a silence needs a tenant (--tenant)"
        raise SilenceError(msg)
    if not parsed:
        msg = "a silence needs at least one matcher, e.g. rule_id=failed_auth"
        raise SilenceError(msg)
    if all(m.matches({}, ()) for m in parsed):
        msg = (
            "every matcher also matches alerts without that label, so the silence would mute "
            "everything; add a matcher such as rule_id=failed_auth"
        )
        raise SilenceError(msg)
    if ends_at <= starts_at:
        msg = "the silence must end after it starts; check --ends/--duration"
        raise SilenceError(msg)
    if ends_at <= now:
        msg = "the silence would already be expired; give an end in the future"
        raise SilenceError(msg)
    if not created_by.strip():
        msg = "say who creates the silence (--by)"
        raise SilenceError(msg)
    if not comment.strip() or len(comment) > MAX_COMMENT:
        msg = f"give a comment saying why (1 to {MAX_COMMENT} characters)"
        raise SilenceError(msg)
    return Silence(
        id=silence_id or f"sil-{uuid.uuid4().hex}",
        tenant=tenant,
        matchers=parsed,
        starts_at=starts_at,
        ends_at=ends_at,
        created_by=created_by,
        comment=comment,
        created_at=now,
        updated_at=now,
    )


def expire_silence(silence: Silence, now: float) -> Silence:
    """The silence ended now (a pending one never starts); an expired one is an error."""
    state = silence.state(now)
    if state == "expired":
        msg = f"silence {silence.id} has already expired"
        raise SilenceError(msg)
    if state == "pending":
        return replace(silence, starts_at=now, ends_at=now, updated_at=now)
    return replace(silence, ends_at=now, updated_at=now)


class Silences:
    """The silences of every tenant, in memory; what the notifier consults."""

    def __init__(self, silences: Iterable[Silence] = ()) -> None:
        self._by_tenant: dict[str, dict[str, Silence]] = {}
        self.replace_all(silences)

    def replace_all(self, silences: Iterable[Silence]) -> None:
        """Take the store's current silences (the notifier refreshes them periodically)."""
        fresh: dict[str, dict[str, Silence]] = {}
        for s in silences:
            fresh.setdefault(s.tenant, {})[s.id] = s
        self._by_tenant = fresh

    def add(self, silence: Silence) -> None:
        """Add or replace a silence."""
        self._by_tenant.setdefault(silence.tenant, {})[silence.id] = silence

    def get(self, tenant: str, silence_id: str) -> Silence:
        """A silence of the tenant; another tenant's id is "not found" like an unknown one."""
        found = self._by_tenant.get(tenant, {}).get(silence_id)
        if found is None:
            msg = f"silence {silence_id} not found for tenant {tenant}"
            raise SilenceError(msg)
        return found

    def expire(self, tenant: str, silence_id: str, now: float) -> Silence:
        """End a silence now."""
        expired = expire_silence(self.get(tenant, silence_id), now)
        self.add(expired)
        return expired

    def for_tenant(
        self, tenant: str, now: float, *, include_expired: bool = False
    ) -> list[Silence]:
        """The tenant's silences, soonest end first."""
        found = self._by_tenant.get(tenant, {}).values()
        chosen = [s for s in found if include_expired or s.state(now) != "expired"]
        return sorted(chosen, key=lambda s: (s.ends_at, s.id))

    def muting(
        self, tenant: str, labels: dict[str, str], tags: Sequence[str], now: float
    ) -> list[str]:
        """Ids of the tenant's active silences that mute an alert with these labels."""
        found = self._by_tenant.get(tenant)
        if not found:
            return []
        return [s.id for s in found.values() if s.mutes(labels, tags, now)]

    def gc(self, now: float, *, keep_expired_s: float = 86_400.0) -> int:
        """Forget silences expired more than ``keep_expired_s`` ago; returns how many."""
        dropped = 0
        for tenant, found in list(self._by_tenant.items()):
            for sid in [i for i, s in found.items() if s.ends_at + keep_expired_s <= now]:
                del found[sid]
                dropped += 1
            if not found:
                del self._by_tenant[tenant]
        return dropped

    def snapshot(self) -> list[dict[str, Any]]:
        """Plain data."""
        return [s.to_state() for found in self._by_tenant.values() for s in found.values()]

    @classmethod
    def restore(cls, state: list[dict[str, Any]]) -> Silences:
        """The inverse of :meth:`snapshot`."""
        return cls(Silence.from_state(s) for s in state)
