"""Receivers: the generic signed webhook, the ntfy-compatible push and SMTP email.

HTTP goes through one shared :class:`httpx.AsyncClient` (httpx: async, typed, per-request
timeouts, connection pooling; already the test client of the project). Email goes through
aiosmtplib (asyncio SMTP with STARTTLS, implicit TLS and AUTH). A failure raises
:class:`DeliveryError` saying whether a retry can help: timeouts, connection errors, HTTP
408/425/429/5xx and SMTP 4xx replies are transient; other HTTP 4xx and SMTP 5xx replies are
not. Error messages name the receiver and the URL without its query or credentials, and
every secret of the receiver is scrubbed from them.
"""

from __future__ import annotations

import email.policy
import ssl
from collections.abc import Iterable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Protocol
from urllib.parse import quote, urlsplit

import aiosmtplib
import httpx

from rayworker.errors import SinkError
from rayworker.notify.config import EmailReceiver, NtfyReceiver, WebhookReceiver
from rayworker.notify.model import Notification
from rayworker.notify.render import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    email_content,
    ntfy_push,
    sign,
    webhook_body,
)

__all__ = [
    "DeliveryError",
    "EmailSender",
    "NtfySender",
    "Sender",
    "WebhookSender",
    "build_sender",
    "safe_url",
    "scrub",
]

USER_AGENT = "rayworker-notify/1"
# Long header lines are legal up to 998 characters; the stdlib's folding at 78 would put a
# subject starting with "[" on a continuation line, which some clients show with a blank.
_MAIL_POLICY = email.policy.SMTP.clone(max_line_length=998)
_TRANSIENT_HTTP = frozenset({408, 425, 429})


class DeliveryError(SinkError):
    """Raised when a receiver cannot be reached or refuses a notification.

    ``transient``: a later attempt may succeed (retry); otherwise the notification is
    dead-lettered at once. ``breaker_open``: the attempt was refused by the circuit breaker.
    """

    def __init__(self, message: str, *, transient: bool, breaker_open: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
        self.breaker_open = breaker_open


class Sender(Protocol):
    """Something that delivers one notification or raises :class:`DeliveryError`."""

    async def send(self, notification: Notification) -> None:
        """Deliver, or raise."""
        ...


def safe_url(url: str) -> str:
    """A URL fit for logs: scheme, host, port and path; no credentials, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every (non-trivial) secret replaced by ``***``."""
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


async def _post(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    what: str,
    timeout: float,
    secrets: list[str],
) -> None:
    try:
        response = await client.post(url, content=body, headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        msg = f"{what}: no answer within {timeout:g}s"
        raise DeliveryError(msg, transient=True) from None
    except httpx.HTTPError as exc:
        detail = scrub(str(exc), secrets) or type(exc).__name__
        msg = f"{what}: {type(exc).__name__}: {detail}"
        raise DeliveryError(msg, transient=True) from None
    status = response.status_code
    if status >= 300:
        transient = status >= 500 or status in _TRANSIENT_HTTP
        msg = f"{what}: HTTP {status}"
        raise DeliveryError(msg, transient=transient)


class WebhookSender:
    """A JSON POST signed with HMAC-SHA256 (``X-Rayworker-Signature: sha256=<hex>``)."""

    def __init__(self, config: WebhookReceiver, client: httpx.AsyncClient, timeout: float) -> None:
        self.config = config
        self.client = client
        self.timeout = timeout
        self._key = config.secret.get_secret_value()
        self._what = f"webhook {config.name} ({safe_url(config.url)})"

    async def send(self, notification: Notification) -> None:
        """POST the notification; the same idempotency key on every attempt."""
        body = webhook_body(notification)
        headers = {
            **{k: v.get_secret_value() for k, v in self.config.headers.items()},
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: sign(self._key.encode(), body),
            IDEMPOTENCY_HEADER: notification.idempotency_key,
        }
        await _post(
            self.client,
            self.config.url,
            body,
            headers,
            what=self._what,
            timeout=self.timeout,
            secrets=[
                self._key,
                self.config.url,
                *(v.get_secret_value() for v in self.config.headers.values()),
            ],
        )


class NtfySender:
    """POST ``{url}/{tenant}``: the description as body, ``Title``, ``Tags`` (and
    ``Priority: 5`` for CRITICAL), ``Authorization: Bearer`` when a token is configured."""

    def __init__(self, config: NtfyReceiver, client: httpx.AsyncClient, timeout: float) -> None:
        self.config = config
        self.client = client
        self.timeout = timeout
        self._token = config.token.get_secret_value() if config.token else None

    async def send(self, notification: Notification) -> None:
        """Push the notification to the tenant's topic."""
        push = ntfy_push(notification)
        url = f"{self.config.url}/{quote(notification.tenant, safe='')}"
        headers = {**push.headers, "User-Agent": USER_AGENT}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        await _post(
            self.client,
            url,
            push.body.encode(),
            headers,
            what=f"ntfy {self.config.name} ({safe_url(url)})",
            timeout=self.timeout,
            secrets=[s for s in (self._token, self.config.url) if s],
        )


class EmailSender:
    """An email with plain-text and HTML parts over SMTP (STARTTLS or implicit TLS, AUTH)."""

    def __init__(self, config: EmailReceiver, timeout: float) -> None:
        self.config = config
        self.timeout = timeout
        self._password = config.password.get_secret_value() if config.password else None
        self._what = f"email {config.name} (smtp://{config.host}:{config.port})"
        self._tls: ssl.SSLContext | None = None
        if config.tls != "none":
            cafile = str(config.ca_file) if config.ca_file else None
            self._tls = ssl.create_default_context(cafile=cafile)

    def message(self, notification: Notification) -> EmailMessage:
        """The email (its Message-ID derives from the idempotency key)."""
        content = email_content(notification, subject_prefix=self.config.subject_prefix)
        msg = EmailMessage(policy=_MAIL_POLICY)
        msg["Subject"] = content.subject
        msg["From"] = self.config.sender
        msg["To"] = ", ".join(self.config.to)
        msg["Date"] = formatdate(notification.created_at, usegmt=True)
        msg["Message-ID"] = make_msgid(idstring=notification.idempotency_key, domain="rayworker")
        msg["X-Rayworker-Idempotency-Key"] = notification.idempotency_key
        msg.set_content(content.text)
        msg.add_alternative(content.html, subtype="html")
        return msg

    async def send(self, notification: Notification) -> None:
        """Send the email to every recipient."""
        cfg = self.config
        try:
            # Sent as bytes: aiosmtplib would flatten an EmailMessage again with its own
            # 78-column policy.
            await aiosmtplib.send(
                self.message(notification).as_bytes(),
                sender=cfg.sender,
                recipients=cfg.to,
                hostname=cfg.host,
                port=cfg.port,
                username=cfg.username,
                password=self._password,
                use_tls=cfg.tls == "implicit",
                start_tls=cfg.tls == "starttls",
                tls_context=self._tls,
                timeout=self.timeout,
            )
        except aiosmtplib.SMTPResponseException as exc:
            msg = f"{self._what}: SMTP {exc.code}: {scrub(exc.message, self._secrets())}"
            raise DeliveryError(msg, transient=400 <= exc.code < 500) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            detail = scrub(str(exc), self._secrets()) or type(exc).__name__
            msg = f"{self._what}: {type(exc).__name__}: {detail}"
            raise DeliveryError(msg, transient=True) from None

    def _secrets(self) -> list[str]:
        return [self._password] if self._password else []


def build_sender(
    receiver: WebhookReceiver | NtfyReceiver | EmailReceiver,
    client: httpx.AsyncClient,
    timeout: float,
) -> Sender:
    """The sender of a receiver's configuration."""
    if isinstance(receiver, WebhookReceiver):
        return WebhookSender(receiver, client, timeout)
    if isinstance(receiver, NtfyReceiver):
        return NtfySender(receiver, client, timeout)
    return EmailSender(receiver, timeout)
