"""Process settings: ``RAYWORKER_*`` environment variables, an optional config file, defaults.

Precedence, highest first: keyword arguments, environment variables, the TOML or YAML file
named by ``RAYWORKER_CONFIG`` (or passed as ``config_file``), then the embedded defaults. The
defaults run everything on one machine with no servers: a local Ray, SQLite alerts and
in-memory metrics. DSNs are :class:`~pydantic.SecretStr`, so they never appear in a repr, a
log line or an error message.

A bad value fails at start-up with :class:`~rayworker.errors.ConfigError`, naming the
environment variable and what to put there.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from rayworker.autoscale import AutoscalePolicy
from rayworker.balance import BalancePolicy
from rayworker.errors import ConfigError
from rayworker.integrity import IntegrityConfig, Policy

__all__ = [
    "ENV_PREFIX",
    "HealthThresholds",
    "IntegritySettings",
    "Settings",
    "TelemetrySettings",
    "load_settings",
    "redact_dsn",
]

ENV_PREFIX = "RAYWORKER_"
_ALERT_SCHEMES = ("postgresql", "postgres", "sqlite")
_METRIC_SCHEMES = ("redis", "rediss", "unix", "memory")


class HealthThresholds(BaseModel):
    """Warning and critical levels for ``/readyz`` (the original's defaults where it had them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_warn_ms: float = Field(2000.0, gt=0)
    latency_crit_ms: float = Field(5000.0, gt=0)
    error_rate_warn: float = Field(0.05, ge=0, le=1)
    error_rate_crit: float = Field(0.10, ge=0, le=1)
    lag_warn: int = Field(10_000, ge=0, description="pending + undelivered stream entries")
    lag_crit: int = Field(100_000, ge=0)
    dead_letter_recent_s: float = Field(
        900.0,
        gt=0,
        description=(
            "the dead-letter stream and the failed notifications are WARNING while their "
            "newest record is this recent"
        ),
    )
    check_timeout_s: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> HealthThresholds:
        for warn_name, crit_name in (
            ("latency_warn_ms", "latency_crit_ms"),
            ("error_rate_warn", "error_rate_crit"),
            ("lag_warn", "lag_crit"),
        ):
            warn, crit = getattr(self, warn_name), getattr(self, crit_name)
            if warn > crit:
                msg = f"{warn_name} ({warn}) is above {crit_name} ({crit}); make it <= {crit_name}"
                raise ValueError(msg)
        return self


class IntegritySettings(BaseModel):
    """Event integrity verification (:mod:`rayworker.integrity`): per-tenant policies and keys.

    Keys are the producers' HMAC secrets, as :class:`~pydantic.SecretStr`: never printed. They
    come from ``keys`` (e.g. ``RAYWORKER_INTEGRITY__KEYS='{"org-1": "..."}'``) and/or
    ``keys_file``, a YAML/JSON/TOML mapping of tenant to key (e.g. a mounted secret).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Policy = Field(
        Policy.OFF,
        description="every tenant's policy unless `tenants` names it: "
        "off, verify-if-present or require",
    )
    tenants: dict[str, Policy] = Field(default_factory=dict, description="per-tenant policy")
    keys: dict[str, SecretStr] = Field(
        default_factory=dict, description="per-tenant HMAC key (the producer's secret)"
    )
    keys_file: Path | None = Field(
        None, description="YAML, JSON or TOML file mapping tenant to HMAC key; merged with keys"
    )
    _file_keys: dict[str, SecretStr] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> IntegritySettings:
        for tenant, key in self.keys.items():
            if not tenant or not key.get_secret_value():
                msg = f"the key of tenant {tenant!r} is empty; give each tenant a non-empty key"
                raise ValueError(msg)
        if self.keys_file is not None:
            self._file_keys = _read_keys_file(self.keys_file)
            for tenant, key in self._file_keys.items():
                mine = self.keys.get(tenant)
                if mine is not None and mine.get_secret_value() != key.get_secret_value():
                    msg = (
                        f"tenant {tenant!r} has one key in keys and another in {self.keys_file}; "
                        "keep one of them"
                    )
                    raise ValueError(msg)
        try:
            self.config()
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def config(self) -> IntegrityConfig:
        """The pure configuration the detector and the router take (keys as bytes)."""
        keys = {**self._file_keys, **self.keys}
        return IntegrityConfig(
            default=self.policy,
            policies=dict(self.tenants),
            keys={t: k.get_secret_value().encode() for t, k in keys.items()},
        )


class TelemetrySettings(BaseModel):
    """Traces, Ray metrics and logs (:mod:`rayworker.telemetry`), set up by each entry point.

    Tracing is off (``exporter: none``) unless asked for. ``otlp_headers`` carry credentials
    (e.g. ``{"authorization": "Bearer ..."}``), so they are :class:`~pydantic.SecretStr`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    exporter: Literal["none", "console", "otlp"] = Field(
        "none", description="where spans go: none (tracing off), console (stdout) or otlp"
    )
    otlp_protocol: Literal["http", "grpc"] = Field(
        "http", description="OTLP over HTTP/protobuf (port 4318) or gRPC (port 4317)"
    )
    otlp_endpoint: str | None = Field(
        None,
        description="collector URL, e.g. http://otel-collector:4318/v1/traces (http) or "
        "http://otel-collector:4317 (grpc); unset: the OTEL_EXPORTER_OTLP_* environment",
    )
    otlp_headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="headers sent with every export (credentials)"
    )
    otlp_timeout_s: float = Field(10.0, gt=0, le=300, description="one export's time limit")
    sample_ratio: float = Field(
        0.01,
        ge=0,
        le=1,
        description="share of new traces kept; a continued trace follows "
        "its parent's decision, so a trace is kept or dropped whole",
    )
    service_name: str = Field("rayworker", min_length=1, max_length=128)
    resource_attributes: dict[str, str] = Field(
        default_factory=dict, description="extra resource attributes, e.g. deployment.environment"
    )
    max_links: int = Field(
        128, ge=0, le=10_000, description="span links per batch span (sampled events' contexts)"
    )
    record_payload: bool = Field(
        default=False,
        description="allow event-derived values (principal, IP, group values) in span "
        "attributes; off by default because they are personal data",
    )
    log_format: Literal["json", "text"] = Field("json", description="log line format")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            msg = f"got {value!r}; use an http:// or https:// URL of an OTLP collector"
            raise ValueError(msg)
        return value


def _read_keys_file(path: Path) -> dict[str, SecretStr]:
    """Tenant -> key from a YAML, JSON or TOML file; errors name the file, never a key."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"cannot read the integrity keys file {path}: {exc.strerror}; fix keys_file"
        raise ValueError(msg) from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError):
        # The parser's message may quote a line of the file, i.e. a key: leave it out.
        kind = "TOML" if path.suffix == ".toml" else "YAML/JSON"
        msg = f"the integrity keys file {path} is not valid {kind}"
        raise ValueError(msg) from None
    if not isinstance(data, dict) or not all(
        isinstance(t, str) and t and isinstance(k, str) and k for t, k in data.items()
    ):
        msg = f"the integrity keys file {path} must map each tenant id to a non-empty key string"
        raise ValueError(msg)
    return {t: SecretStr(k) for t, k in data.items()}


class Settings(BaseSettings):
    """Everything ``rayworker run`` and ``rayworker demo`` read at start-up."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    # --- Ray ---------------------------------------------------------------------------
    ray_address: str | None = Field(
        None,
        description="an existing cluster ('auto', 'ray://host:10001', 'host:port'); unset: local",
    )
    ray_namespace: str = "rayworker"
    shards: int = Field(2, ge=1, le=4096, description="detector shard actors")
    key_groups: int = Field(256, ge=1, le=65_536, description="fixed at cluster creation")
    assignment_path: Path | None = Field(
        None, description="load-aware key-group plan from `rayworker shards plan`"
    )
    flush_events: int = Field(2000, ge=1, description="router flushes a shard buffer at this size")
    linger_ms: float = Field(20.0, ge=0, description="...or when its oldest event waited this long")
    max_inflight: int = Field(4, ge=1, description="unanswered batches per shard (back-pressure)")
    shard_cpus: float = Field(0.5, ge=0)

    # --- recovery ----------------------------------------------------------------------
    checkpoint_interval_s: float = Field(
        2.0,
        ge=0,
        description=(
            "seconds between checkpoints of a stream pipeline's state (alerts_dsn's database);"
            " entries are acknowledged once a checkpoint covers them. 0: no checkpoints (a"
            " crash then loses window state)"
        ),
    )
    recovery_timeout_s: float = Field(
        120.0, gt=0, description="how long recovery waits for a restarted actor to answer"
    )
    autoscale: AutoscalePolicy = Field(
        default_factory=AutoscalePolicy,
        description="add or remove shards from the consumer lag (off by default)",
    )
    balance: BalancePolicy = Field(
        default_factory=BalancePolicy,
        description="move key groups between shards when the routed load is uneven",
    )
    poison_attempts: int = Field(
        3, ge=1, description="an entry whose processing failed this often is dead-lettered"
    )
    fault_poison: str | None = Field(
        None,
        min_length=1,
        description=(
            "fault injection for chaos tests: a shard fails every batch holding an event that"
            " contains this text. Leave unset in production"
        ),
    )

    # --- detection ---------------------------------------------------------------------
    rules_path: Path | None = None
    overrides_path: Path | None = None
    lateness_s: float = Field(60.0, ge=0)
    suppression_s: float = Field(300.0, gt=0)
    max_future_s: float | None = Field(300.0, gt=0)

    # --- sinks -------------------------------------------------------------------------
    alerts_dsn: SecretStr = SecretStr("sqlite:///rayworker-alerts.db")
    notify_path: Path | None = Field(
        None, description="notification routes, receivers and delivery (YAML/JSON); unset: off"
    )
    metrics_url: SecretStr = SecretStr("memory://")
    metrics_prefix: str = Field("rayworker", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    metrics_series_ttl_s: int = Field(7 * 86_400, gt=0)

    # --- ingest ------------------------------------------------------------------------
    source: Literal["redis", "synthetic", "jsonl"] = "redis"
    stream_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    stream_key: str = "rayworker:events"
    consumer_group: str = "rayworker"
    consumer_name: str = Field(default_factory=lambda: f"consumer-{os.getpid()}")
    dead_letter_stream: str = "rayworker:dead-letter"
    read_count: int = Field(100, ge=1, le=100_000, description="stream entries per XREADGROUP")
    block_ms: int = Field(200, ge=0)
    claim_idle_ms: int = Field(60_000, ge=1, description="XAUTOCLAIM entries idle this long")
    dead_letter_maxlen: int = Field(1_000_000, ge=1)

    # --- health ------------------------------------------------------------------------
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(8000, ge=1, le=65_535)
    health: HealthThresholds = Field(default_factory=HealthThresholds)

    # --- integrity ---------------------------------------------------------------------
    integrity: IntegritySettings = Field(default_factory=IntegritySettings)

    # --- telemetry ---------------------------------------------------------------------
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)

    @field_validator("alerts_dsn")
    @classmethod
    def _alerts_scheme(cls, value: SecretStr) -> SecretStr:
        _check_scheme(value, _ALERT_SCHEMES, "postgresql://user@host:5432/db or sqlite:///path")
        return value

    @field_validator("metrics_url", "stream_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr) -> SecretStr:
        _check_scheme(value, _METRIC_SCHEMES, "redis://host:6379/0 or memory://")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings

    # --- derived ---------------------------------------------------------------------------

    @property
    def alerts_backend(self) -> str:
        """``postgresql``, ``sqlite`` or ``memory``."""
        scheme = urlsplit(self.alerts_dsn.get_secret_value()).scheme
        return "postgresql" if scheme == "postgres" else scheme

    @property
    def metrics_backend(self) -> str:
        """``redis`` or ``memory``."""
        scheme = urlsplit(self.metrics_url.get_secret_value()).scheme
        return "memory" if scheme == "memory" else "redis"

    def public(self) -> dict[str, Any]:
        """The settings as plain data with every DSN's password removed, for logs and ``check``."""
        data = self.model_dump(mode="json")
        for name in ("alerts_dsn", "metrics_url", "stream_url"):
            data[name] = redact_dsn(getattr(self, name).get_secret_value())
        return data


def redact_dsn(dsn: str) -> str:
    """A DSN with its password replaced by ``***`` (user, host and database stay readable)."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _check_scheme(value: SecretStr, schemes: tuple[str, ...], example: str) -> None:
    scheme = urlsplit(value.get_secret_value()).scheme
    if scheme not in schemes:
        shown = scheme or "(none)"
        msg = f"scheme {shown!r} is not supported; use one of {', '.join(schemes)}, e.g. {example}"
        raise ValueError(msg)


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Settings from the file (``RAYWORKER_CONFIG`` if none is given), the environment and
    ``overrides``; a bad value raises :class:`ConfigError` naming the variable to fix."""
    path = config_file if config_file is not None else os.environ.get(f"{ENV_PREFIX}CONFIG")
    values: dict[str, Any] = _read_file(Path(path)) if path else {}
    env_names = {
        k[len(ENV_PREFIX) :].lower().split("__")[0] for k in os.environ if k.startswith(ENV_PREFIX)
    }
    # The environment wins over the file: drop file values the environment sets.
    values = {k: v for k, v in values.items() if k not in env_names}
    values.update(overrides)
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, path)) from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"cannot read the config file {path}: {exc.strerror}; fix RAYWORKER_CONFIG"
        raise ConfigError(msg) from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        msg = (
            f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {exc}"
        )
        raise ConfigError(msg) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        msg = f"config file {path} must hold a mapping of setting names to values"
        raise ConfigError(msg)
    return {str(k).lower(): v for k, v in data.items()}


def _explain(exc: ValidationError, path: Path | str | None) -> str:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = [str(p) for p in error["loc"]]
        env = ENV_PREFIX + "__".join(loc).upper()
        where = f"{env}" + (f" (or '{'.'.join(loc)}' in {path})" if path else "")
        problem = error["msg"]
        if error["type"] == "extra_forbidden":
            problem = "is not a setting; check the spelling (see `rayworker run --help`)"
        lines.append(f"setting {'.'.join(loc)}: {problem}; fix {where}")
    return "invalid settings:\n  " + "\n  ".join(lines)
