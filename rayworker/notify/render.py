"""How a notification reads on each receiver: webhook JSON and its signature, the ntfy push,
and the email's subject, plain-text and HTML bodies.

Every text made here comes from alerts, whose fields a tenant's input can influence: header
values lose control characters (no header injection) and are RFC 2047-encoded when not
ASCII; HTML is escaped.

Pure: standard library only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
from dataclasses import dataclass
from typing import Any, Final

from rayworker.notify.model import Notification, from_epoch_s

__all__ = [
    "IDEMPOTENCY_HEADER",
    "SIGNATURE_HEADER",
    "EmailContent",
    "NtfyPush",
    "email_content",
    "ntfy_push",
    "sign",
    "webhook_body",
]

SIGNATURE_HEADER: Final = "X-Rayworker-Signature"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
MAX_LISTED: Final = 50
MAX_EVIDENCE_LISTED: Final = 20
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_RANK: Final = {"INFO": 0, "LOW": 1, "MEDIUM": 2, "HIGH": 3, "CRITICAL": 4}


def _iso(seconds: float) -> str:
    return from_epoch_s(seconds).isoformat().replace("+00:00", "Z")


def webhook_body(n: Notification) -> bytes:
    """The webhook's JSON body: the notification with its alerts and their evidence."""
    body = {
        "version": "1",
        "idempotency_key": n.idempotency_key,
        "tenant_id": n.tenant,
        "receiver": n.receiver,
        "status": n.status,
        "group_key": n.group_key,
        "group_labels": n.group_labels,
        "created_at": _iso(n.created_at),
        "firing": len(n.firing_ids),
        "resolved": len(n.resolved_ids),
        "alerts": list(n.alerts),
        "truncated_alerts": n.omitted,
        "truncated_alert_ids": n.alert_ids[len(n.alerts) :],
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value: ``sha256=`` and the hex HMAC-SHA256 of the exact body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def header_value(text: str) -> str:
    """A safe HTTP header value: control characters removed, RFC 2047 when not ASCII."""
    clean = _CONTROL.sub(" ", text).strip()[:1000]
    if clean.isascii():
        return clean
    return "=?UTF-8?B?" + base64.b64encode(clean.encode()).decode() + "?="


def _top(n: Notification) -> dict[str, Any]:
    alerts = n.firing or n.resolved
    return max(alerts, key=lambda a: _RANK.get(str(a.get("severity")), 0))


def _count(n: Notification) -> int:
    """How many alerts of the message's status (firing, else resolved) there are."""
    return len(n.firing_ids) or len(n.resolved_ids)


def _title(n: Notification) -> str:
    alerts = n.firing or n.resolved
    prefix = "" if n.firing else "[RESOLVED] "
    if _count(n) == 1:
        return prefix + str(alerts[0].get("title", ""))
    titles = sorted({str(a.get("title", "")) for a in alerts})
    more = f" (+{len(titles) - 1} more kinds)" if len(titles) > 1 else ""
    return f"{prefix}{_count(n)} alerts: {titles[0]}{more}"


@dataclass(frozen=True, slots=True)
class NtfyPush:
    """An ntfy request: the body and headers (the URL is ``{url}/{tenant}``)."""

    body: str
    headers: dict[str, str]


def ntfy_push(n: Notification) -> NtfyPush:
    """The push the original sent: the description as body, ``Title`` and ``Tags`` headers,
    ``Priority: 5`` for CRITICAL; a group lists one description per line."""
    alerts = n.firing or n.resolved
    top = _top(n)
    if _count(n) == 1:
        body = str(alerts[0].get("description", ""))
    else:
        lines = [f"- {a.get('description', '')}" for a in alerts[:MAX_LISTED]]
        if _count(n) > MAX_LISTED:
            lines.append(f"... and {_count(n) - MAX_LISTED} more")
        body = "\n".join(lines)
    status = "active" if n.firing else "resolved"
    tags = ",".join(
        [
            "warning",
            str(top.get("type", "")),
            str(top.get("severity", "")),
            str(top.get("source", "")),
            status,
        ]
    )
    headers = {"Title": header_value(_title(n)), "Tags": header_value(tags)}
    if any(a.get("severity") == "CRITICAL" for a in n.firing):
        headers["Priority"] = "5"
    return NtfyPush(body=body, headers=headers)


@dataclass(frozen=True, slots=True)
class EmailContent:
    """An email's subject and its two bodies."""

    subject: str
    text: str
    html: str


def _group_text(alert: dict[str, Any]) -> str:
    group = alert.get("group") or {}
    if not isinstance(group, dict) or not group:
        return "-"
    return ", ".join(f"{k}={v}" for k, v in group.items())


def _evidence(alert: dict[str, Any]) -> list[str]:
    ids = alert.get("evidence") or []
    return [str(i) for i in ids] if isinstance(ids, list) else []


def _facts(alert: dict[str, Any]) -> list[tuple[str, str]]:
    evidence = _evidence(alert)
    shown = ", ".join(evidence[:MAX_EVIDENCE_LISTED])
    if len(evidence) > MAX_EVIDENCE_LISTED:
        shown += f" (+{len(evidence) - MAX_EVIDENCE_LISTED} more)"
    return [
        ("status", str(alert.get("notification_status", ""))),
        ("severity", str(alert.get("severity", ""))),
        ("rule", str(alert.get("rule_id", ""))),
        ("group", _group_text(alert)),
        ("first seen", str(alert.get("first_seen", ""))),
        ("last seen", str(alert.get("last_seen", ""))),
        ("occurrences", str(alert.get("occurrences", ""))),
        ("alert id", str(alert.get("id", ""))),
        ("evidence", shown or "-"),
    ]


def email_content(n: Notification, *, subject_prefix: str) -> EmailContent:
    """Subject, plain text and HTML of a notification email."""
    listed = list(n.alerts)[:MAX_LISTED]
    more = n.total - len(listed)
    state = "FIRING" if n.firing_ids else "RESOLVED"
    # The email library encodes non-ASCII subjects itself; only control characters go.
    subject = _CONTROL.sub(" ", f"{subject_prefix} [{state}:{n.total}] {_title(n)}").strip()
    head = (
        f"Tenant {n.tenant}: {len(n.firing_ids)} firing, {len(n.resolved_ids)} resolved "
        f"(group {n.group_key}, sent {_iso(n.created_at)})."
    )
    text_parts = [head, ""]
    html_parts = [
        '<!DOCTYPE html><html><body style="font-family:sans-serif">',
        f"<p>{html.escape(head)}</p>",
    ]
    for alert in listed:
        title = str(alert.get("title", ""))
        description = str(alert.get("description", ""))
        facts = _facts(alert)
        text_parts += [f"{title}", f"  {description}"]
        text_parts += [f"  {name}: {value}" for name, value in facts]
        text_parts.append("")
        rows = "".join(
            f'<tr><th align="left">{html.escape(name)}</th><td>{html.escape(value)}</td></tr>'
            for name, value in facts
        )
        html_parts.append(
            f"<h3>{html.escape(title)}</h3><p>{html.escape(description)}</p>"
            f'<table cellpadding="3">{rows}</table>'
        )
    if more:
        text_parts.append(f"... and {more} more alerts (see rayworker alerts list)")
        html_parts.append(f"<p>... and {more} more alerts (see rayworker alerts list)</p>")
    footer = f"Idempotency key: {n.idempotency_key}"
    text_parts.append(footer)
    html_parts.append(f'<p style="color:#777">{html.escape(footer)}</p></body></html>')
    return EmailContent(
        subject=subject, text="\n".join(text_parts) + "\n", html="".join(html_parts)
    )
