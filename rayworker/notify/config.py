"""Notification configuration: receivers, per-tenant routes, delivery and dead letters.

A YAML (or JSON) file, validated strictly: an unknown key, a bad duration or a route naming
an unknown receiver fails at start-up with the tenant, route and field named. Secrets
(webhook keys, ntfy tokens, SMTP passwords, redaction keys) are :class:`~pydantic.SecretStr`
and may be given as ``env:NAME`` to read the environment variable ``NAME`` at load time, so
the file itself can be committed. They never appear in a repr, a log line or an error.

::

    delivery: {timeout: 10s, max_attempts: 5, backoff_initial: 500ms, backoff_max: 30s}
    dead_letter: {redis_url: "env:NOTIFY_DLQ_URL", stream: "rayworker:notify-dead-letter"}
    tenants:
      org-1:
        receivers:
          - {name: soc, type: webhook, url: "https://soc.example/hook", secret: "env:SOC_KEY"}
          - {name: phone, type: ntfy, url: "https://ntfy.example", token: "env:NTFY_TOKEN"}
        routes:
          - receivers: [soc, phone]
            match: {min_severity: HIGH}
            group_by: [rule_id]
            group_wait: 30s
            group_interval: 5m
            repeat_interval: 4h
            redact: {principal_ids: true, ips: true}
    default: {...}            # same shape as a tenant; used by tenants not listed above

Pure: no network client is imported here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from rayworker.errors import ConfigError
from rayworker.rules.model import Duration, Severity

__all__ = [
    "DeadLetterConfig",
    "DeliveryConfig",
    "EmailReceiver",
    "NotifyConfig",
    "NtfyReceiver",
    "ReceiverConfig",
    "RedactConfig",
    "RouteConfig",
    "RouteMatch",
    "TenantNotify",
    "WebhookReceiver",
    "load_notify_config",
    "parse_notify_config",
]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_ENV_PREFIX = "env:"


def _secret(value: object) -> object:
    """``env:NAME`` reads the environment variable; anything else is the secret itself."""
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if isinstance(raw, str) and raw.startswith(_ENV_PREFIX):
        name = raw[len(_ENV_PREFIX) :]
        found = os.environ.get(name)
        if not found:
            msg = f"environment variable {name} is not set (or empty); set it or give the value"
            raise ValueError(msg)
        return SecretStr(found)
    return value


Secret = Annotated[SecretStr, BeforeValidator(_secret)]
"""A secret given literally or as ``env:NAME``."""


def _http_url(value: object) -> object:
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+", value):
        # The value is never echoed: a URL may carry a token.
        msg = "not an http(s) URL; give one such as https://host/path"
        raise ValueError(msg)
    return value.rstrip("/")


HttpUrl = Annotated[str, BeforeValidator(_http_url)]
"""An http(s) URL without a trailing slash."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeliveryConfig(_Strict):
    """Timeouts, retries and the circuit breaker of every receiver (a receiver may override)."""

    timeout: Duration = Field(10.0, description="per attempt: connect, send and answer")
    max_attempts: int = Field(5, ge=1, le=20, description="attempts before dead-lettering")
    backoff_initial: Duration = Field(0.5, description="first retry delay (then doubles)")
    backoff_max: Duration = Field(30.0, description="longest delay between attempts")
    jitter: float = Field(0.5, ge=0, le=60, description="random seconds added to each delay")
    breaker_failures: int = Field(
        5, ge=1, le=1000, description="consecutive failed attempts that open the breaker"
    )
    breaker_reset: Duration = Field(
        60.0, description="how long an open breaker refuses before one probe"
    )
    concurrency: int = Field(4, ge=1, le=256, description="deliveries in flight per receiver")


class _Receiver(_Strict):
    name: str = Field(pattern=_NAME, description="unique within the tenant")
    delivery: DeliveryConfig | None = Field(None, description="overrides the global delivery")


class WebhookReceiver(_Receiver):
    """A JSON POST of the notification, its alerts and their evidence, signed with HMAC."""

    type: Literal["webhook"]
    url: HttpUrl = Field(max_length=2048, description="http(s) URL to POST to")
    secret: Secret = Field(description="HMAC-SHA256 key of the X-Rayworker-Signature header")
    headers: dict[str, Secret] = Field(
        default_factory=dict, description="extra request headers (secret: may carry tokens)"
    )


class NtfyReceiver(_Receiver):
    """An ntfy-compatible push, as the original sent it: POST ``{url}/{tenant}``."""

    type: Literal["ntfy"]
    url: HttpUrl = Field(max_length=2048, description="server URL; the topic is the tenant")
    token: Secret | None = Field(None, description="sent as Authorization: Bearer")


class EmailReceiver(_Receiver):
    """Email over SMTP with STARTTLS (or implicit TLS) and authentication."""

    type: Literal["email"]
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(587, ge=1, le=65535)
    tls: Literal["starttls", "implicit", "none"] = Field(
        "starttls", description="none only for a relay on the same host"
    )
    username: str | None = None
    password: Secret | None = None
    ca_file: Path | None = Field(None, description="CA bundle for a private SMTP server")
    sender: str = Field(alias="from", min_length=3, max_length=320)
    to: list[str] = Field(min_length=1, max_length=100)
    subject_prefix: str = Field("[rayworker]", max_length=64)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _auth_pair(self) -> Self:
        if (self.username is None) != (self.password is None):
            msg = "give both username and password for SMTP authentication, or neither"
            raise ValueError(msg)
        if self.password is not None and self.tls == "none":
            msg = "SMTP authentication needs tls: starttls or implicit (a password in clear)"
            raise ValueError(msg)
        return self


ReceiverConfig = Annotated[
    WebhookReceiver | NtfyReceiver | EmailReceiver, Field(discriminator="type")
]


class RouteMatch(_Strict):
    """Which alerts a route takes: every given condition must hold."""

    min_severity: Severity = Field(Severity.INFO, description="this severity or higher")
    rule_ids: list[str] | None = Field(None, description="any of these rules (default: all)")
    tags: list[str] | None = Field(None, description="alerts carrying any of these tags")


class RedactConfig(_Strict):
    """What a route removes from its notifications before they leave."""

    principal_ids: bool = Field(default=False, description="principal ids, in fields and in text")
    ips: bool = Field(default=False, description="IPv4 and IPv6 addresses, in fields and in text")
    fields: list[str] = Field(
        default_factory=list, description="dotted paths into the alert, e.g. metadata.x"
    )
    principal_fields: list[str] = Field(
        default_factory=lambda: ["principalId", "principal", "principals", "source", "userId"],
        description="group and metadata keys whose values are principal ids",
    )
    key: Secret | None = Field(
        None, description="HMAC key: redacted values become stable pseudonyms"
    )

    @property
    def active(self) -> bool:
        """True when anything is redacted."""
        return self.principal_ids or self.ips or bool(self.fields)


class RouteConfig(_Strict):
    """A route: which alerts, to which receivers, grouped how (Alertmanager semantics)."""

    receivers: list[str] = Field(min_length=1, description="receiver names of this tenant")
    match: RouteMatch = Field(default_factory=RouteMatch)
    group_by: list[str] = Field(
        default_factory=list,
        description="labels that split groups; [] = one group, ['...'] = every alert alone",
    )
    group_wait: Duration = Field(30.0, description="wait before a new group's first message")
    group_interval: Duration = Field(300.0, description="wait before sending a group's changes")
    repeat_interval: Duration = Field(14400.0, description="re-send an unchanged group")
    send_resolved: bool = Field(default=False, description="also notify when alerts resolve")
    redact: RedactConfig = Field(default_factory=RedactConfig)
    continue_: bool = Field(
        default=False, alias="continue", description="keep matching later routes"
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("group_by")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        if "..." in value and len(value) > 1:
            msg = "'...' groups by every label and must be alone in group_by"
            raise ValueError(msg)
        for name in value:
            if name != "..." and not _LABEL.match(name):
                msg = f'Got "{name}" in group_by; use a label such as rule_id, severity, group.x'
                raise ValueError(msg)
        return value


class TenantNotify(_Strict):
    """One tenant's receivers and routes."""

    receivers: list[ReceiverConfig] = Field(default_factory=list)
    routes: list[RouteConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names(self) -> Self:
        names = [r.name for r in self.receivers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            msg = f"receiver names must be unique; repeated: {', '.join(dupes)}"
            raise ValueError(msg)
        for i, route in enumerate(self.routes):
            unknown = [n for n in route.receivers if n not in names]
            if unknown:
                msg = (
                    f"routes[{i}] names unknown receiver(s) {', '.join(unknown)}; "
                    f"define them under receivers (known: {', '.join(names) or 'none'})"
                )
                raise ValueError(msg)
        return self

    def receiver(self, name: str) -> WebhookReceiver | NtfyReceiver | EmailReceiver:
        """The receiver of that name (validated to exist for every route)."""
        return next(r for r in self.receivers if r.name == name)


class DeadLetterConfig(_Strict):
    """Where notifications that still fail go: a Redis stream, else a local JSONL file."""

    redis_url: Secret | None = Field(None, description="redis://host:6379/0")
    stream: str = Field("rayworker:notify-dead-letter", min_length=1, max_length=256)
    maxlen: int = Field(100_000, ge=1, description="approximate stream length kept")
    path: Path = Field(
        Path("rayworker-notify-dead-letter.jsonl"),
        description="the local store when no redis_url is given (embedded mode)",
    )


class NotifyConfig(_Strict):
    """The whole notification configuration."""

    tenants: dict[str, TenantNotify] = Field(default_factory=dict)
    default: TenantNotify | None = Field(None, description="for tenants not listed")
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    dead_letter: DeadLetterConfig = Field(default_factory=DeadLetterConfig)
    queue_size: int = Field(10_000, ge=1, le=10_000_000, description="alert batches queued")
    resolve_timeout: Duration = Field(
        300.0, description="an alert with no update for this long counts as resolved"
    )
    silence_refresh: Duration = Field(5.0, description="how often silences are re-read")
    tick: Duration = Field(0.05, description="how often due groups are checked")

    def for_tenant(self, tenant: str) -> TenantNotify | None:
        """The tenant's own configuration, else the default, else None (no notifications)."""
        own = self.tenants.get(tenant)
        return own if own is not None else self.default

    def delivery_for(
        self, receiver: WebhookReceiver | NtfyReceiver | EmailReceiver
    ) -> DeliveryConfig:
        """The receiver's delivery settings (its own, else the global ones)."""
        return receiver.delivery or self.delivery


def parse_notify_config(data: Mapping[str, Any], *, source: str = "notify config") -> NotifyConfig:
    """Validate plain data; a problem raises :class:`ConfigError` naming the field path."""
    try:
        return NotifyConfig.model_validate(dict(data))
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function"))
            problem = error["msg"]
            if error["type"] == "extra_forbidden":
                problem = "is not a known key; check the spelling"
            lines.append(f"{source}: {where}: {problem}")
        raise ConfigError("invalid notification config:\n  " + "\n  ".join(lines)) from None


def load_notify_config(path: Path | str) -> NotifyConfig:
    """Read and validate a YAML or JSON notification config file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"cannot read the notification config {file}: {exc.strerror}"
        raise ConfigError(msg) from None
    try:
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        msg = f"notification config {file} is not valid YAML/JSON: {exc}"
        raise ConfigError(msg) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        msg = f"notification config {file} must hold a mapping (tenants, default, delivery, ...)"
        raise ConfigError(msg)
    return parse_notify_config(data, source=str(file))
