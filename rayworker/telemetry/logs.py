"""Structured (JSON) logs: one object per line with tenant, shard, batch and trace ids.

Call sites pass ids through ``extra`` (``log.info("...", extra={"tenant": t, "batch": n})``);
the trace and span ids of the current span are added automatically. Only the keys in
:data:`FIELDS` are copied from ``extra``, so a stray object (an event, a DSN) cannot slip into
a line by accident; event payloads and secrets are never logged at INFO.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final

from opentelemetry import trace

from rayworker.settings import TelemetrySettings

__all__ = ["FIELDS", "JsonFormatter", "configure_logging"]

FIELDS: Final = (
    "tenant",
    "shard",
    "batch",
    "tickets",
    "events",
    "alerts",
    "alert_id",
    "rule",
    "severity",
    "component",
    "exporter",
    "sample_ratio",
    "error",
    "elapsed_ms",
)
"""The ``extra`` keys a log line may carry (``trace_id`` too, when no span is current)."""

_HANDLER_NAME = "rayworker-telemetry"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (see the module docstring)."""

    def __init__(self, *, component: str | None = None, shard: int | None = None) -> None:
        super().__init__()
        self.static: dict[str, Any] = {}
        if component is not None:
            self.static["component"] = component
        if shard is not None:
            self.static["shard"] = shard

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self.static,
        }
        for key in FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                line[key] = value
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            line["trace_id"] = trace.format_trace_id(span_context.trace_id)
            line["span_id"] = trace.format_span_id(span_context.span_id)
        elif (trace_id := record.__dict__.get("trace_id")) is not None:
            line["trace_id"] = trace_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(
    settings: TelemetrySettings, *, component: str, shard: int | None = None
) -> None:
    """Send the ``rayworker`` loggers to stderr in the configured format and level.

    Replaces only the handler this function installed before, so calling it again (another
    entry point in the same process) never duplicates lines.
    """
    logger = logging.getLogger("rayworker")
    logger.setLevel(settings.log_level)
    for handler in list(logger.handlers):
        if handler.get_name() == _HANDLER_NAME:
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter(component=component, shard=shard))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [" + component + "] %(message)s")
        )
    logger.addHandler(handler)
    logger.propagate = False
