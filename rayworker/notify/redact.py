"""Per-route redaction of principal ids, IP addresses and chosen fields before a notification
leaves (the original pushed raw principal ids and IPs out, reference defect 19).

* ``principal_ids``: the values of the group and metadata keys named in
  ``principal_fields`` are replaced wherever they appear: in those fields, and inside any
  text (title, description, metadata strings), where the detector's templates put them.
* ``ips``: every string that is an IPv4 or IPv6 address, and every address inside text.
* ``fields``: dotted paths into the alert (``metadata.resourceTypes``, ``group.source``)
  whose whole value is replaced.

A replaced value becomes ``[redacted]``, or with a route ``key`` a stable pseudonym
``[redacted:<12 hex of HMAC-SHA256>]``, so a receiver can still tell that two alerts concern
the same principal without learning who it is (an unkeyed hash of an IP would be reversible
by brute force, so no key means no pseudonym). Identity fields (ids, rule, severity, times)
and the evidence event ids are kept.

Pure: standard library only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from typing import Any, Final

from rayworker.notify.config import RedactConfig

__all__ = ["REDACTED", "redact_alert", "redact_labels"]

REDACTED: Final = "[redacted]"
_KEEP: Final = frozenset(
    {
        "id",
        "fingerprint",
        "tenant_id",
        "rule_id",
        "rule_version",
        "severity",
        "type",
        "status",
        "created_at",
        "first_seen",
        "last_seen",
        "occurrences",
        "count",
        "evidence",
        "evidence_window",
        "suppression_period",
    }
)
_IPV4: Final = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
_IPV6: Final = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"
)


_IPISH: Final = re.compile(r"[0-9A-Fa-f:.]{2,45}")


def _is_ip(text: str) -> bool:
    if _IPISH.fullmatch(text) is None:  # cheap refusal before the exception path
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_BOUNDARY: Final = frozenset("._@-")


def _is_boundary(text: str, index: int) -> bool:
    """True when ``text[index]`` (if any) cannot continue an identifier."""
    if index < 0 or index >= len(text):
        return True
    ch = text[index]
    return not (ch.isalnum() or ch in _BOUNDARY)


class _Redactor:
    def __init__(self, config: RedactConfig, principals: set[str]) -> None:
        self.config = config
        self.key = config.key.get_secret_value().encode() if config.key else None
        # Longest first, so "alice.smith" is replaced before "alice".
        self.principals = sorted(principals, key=len, reverse=True)
        self.principal_set = frozenset(principals)

    def token(self, value: str) -> str:
        if self.key is None:
            return REDACTED
        digest = hmac.new(self.key, value.encode(), hashlib.sha256).hexdigest()[:12]
        return f"[redacted:{digest}]"

    def _replace_whole_words(self, text: str, word: str) -> str:
        # A plain scan rather than a regex per principal: a storm has thousands of distinct
        # principals, and compiling a pattern for each costs a millisecond.
        out: list[str] = []
        start = 0
        at = text.find(word)
        while at >= 0:
            end = at + len(word)
            if _is_boundary(text, at - 1) and _is_boundary(text, end):
                out.append(text[start:at])
                out.append(self.token(word))
                start = end
            at = text.find(word, end if start == end else at + 1)
        out.append(text[start:])
        return "".join(out)

    def _ips(self, match: re.Match[str]) -> str:
        found = match.group(0)
        return self.token(found) if _is_ip(found) else found

    def text(self, value: str) -> str:
        if value in self.principal_set or (self.config.ips and _is_ip(value)):
            return self.token(value)
        for principal in self.principals:
            if principal in value:
                value = self._replace_whole_words(value, principal)
        if self.config.ips:
            if "." in value:
                value = _IPV4.sub(self._ips, value)
            if ":" in value:
                value = _IPV6.sub(self._ips, value)
        return value

    def walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.walk(v) for v in value]
        if isinstance(value, dict):
            return {k: self.walk(v) for k, v in value.items()}
        return value


def _principals(data: dict[str, Any], names: list[str]) -> set[str]:
    found: set[str] = set()
    for section in ("group", "metadata"):
        part = data.get(section)
        if not isinstance(part, dict):
            continue
        for name in names:
            value = part.get(name)
            values = value if isinstance(value, list) else [value]
            found.update(v for v in values if isinstance(v, str) and v)
    return found


def _blank_path(data: Any, parts: list[str]) -> Any:
    """``data`` with the value at ``parts`` replaced; containers on the path are copied, so
    the input is never changed."""
    if not isinstance(data, dict) or parts[0] not in data:
        return data
    copied = dict(data)
    copied[parts[0]] = REDACTED if len(parts) == 1 else _blank_path(data[parts[0]], parts[1:])
    return copied


def redact_alert(payload: dict[str, Any], config: RedactConfig) -> dict[str, Any]:
    """A redacted copy of an alert's JSON (the same object when nothing is redacted; the
    input is never changed)."""
    if not config.active:
        return payload
    data = payload
    for path in config.fields:
        data = _blank_path(data, path.split("."))
    principals = _principals(data, config.principal_fields) if config.principal_ids else set()
    principals.discard(REDACTED)
    if not principals and not config.ips:
        return dict(data)
    redactor = _Redactor(config, principals)
    return {k: v if k in _KEEP else redactor.walk(v) for k, v in data.items()}


def redact_labels(labels: dict[str, str], config: RedactConfig) -> dict[str, str]:
    """Group labels with the same redaction as the alerts (``group.x`` labels are group keys)."""
    if not config.active or not labels:
        return labels
    group = {k.removeprefix("group."): v for k, v in labels.items() if k.startswith("group.")}
    other = {k: v for k, v in labels.items() if not k.startswith("group.")}
    shown = redact_alert({"group": group, "labels": other}, config)
    result = {f"group.{k}": v for k, v in shown["group"].items()}
    result.update(shown["labels"])
    return {k: result[k] for k in labels}
