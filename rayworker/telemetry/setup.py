"""The OpenTelemetry SDK and logging, set up once per process by the entry points.

Only entry points call :func:`setup_process`: the driver of ``rayworker run``/``demo``, the
Serve app, and each actor or sink worker when it starts (Ray starts them as processes of
their own, which inherit nothing from the driver). Everything else uses the API.

Sampling is ``ParentBased(TraceIdRatioBased(sample_ratio))``: a new trace is kept with
probability ``sample_ratio`` (decided from its trace id, so every process agrees), and every
span of a continued trace follows its parent's decision, so a trace is kept or dropped whole.
Spans leave through a :class:`~opentelemetry.sdk.trace.export.BatchSpanProcessor` (export
never blocks the pipeline; the OTLP exporters retry transient failures with back-off) and
:func:`flush_tracing` exports what is queued: the pipeline calls it on every process before
stopping, and the SDK's exit hook does it again at interpreter exit.
"""

from __future__ import annotations

import logging
import os
import socket
from importlib import metadata
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased

from rayworker.settings import TelemetrySettings
from rayworker.telemetry.logs import configure_logging

__all__ = ["build_exporter", "flush_tracing", "setup_process", "tracing_enabled"]

_EXPORT_DELAY_MS = 1000
"""How long finished spans may wait before an export batch leaves (the SDK default is 5 s)."""

_state: dict[str, Any] = {"provider": None, "key": None}


def tracing_enabled(settings: TelemetrySettings) -> bool:
    """Whether spans are exported at all (``exporter`` is not ``none``)."""
    return settings.exporter != "none"


def build_exporter(settings: TelemetrySettings) -> SpanExporter | None:
    """The span exporter the settings name; None for ``none``."""
    if settings.exporter == "none":
        return None
    if settings.exporter == "console":
        return ConsoleSpanExporter()
    headers = {k: v.get_secret_value() for k, v in settings.otlp_headers.items()}
    if settings.otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415 - gRPC loads only when asked for
            OTLPSpanExporter as GrpcExporter,
        )

        insecure = None
        if settings.otlp_endpoint is not None:
            insecure = settings.otlp_endpoint.startswith("http://")
        return GrpcExporter(
            endpoint=settings.otlp_endpoint,
            insecure=insecure,
            headers=headers or None,
            timeout=settings.otlp_timeout_s,
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415 - loads only when asked for
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter(
        endpoint=settings.otlp_endpoint, headers=headers or None, timeout=settings.otlp_timeout_s
    )


def _resource(
    settings: TelemetrySettings, component: str, shard: int | None, node: str | None
) -> Resource:
    try:
        version = metadata.version("rayworker")
    except metadata.PackageNotFoundError:
        version = "0"
    attributes: dict[str, str | int] = {
        "service.name": settings.service_name,
        "service.version": version,
        "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
        "host.name": socket.gethostname(),
        "process.pid": os.getpid(),
        "rayworker.component": component,
    }
    if node is not None:
        attributes["rayworker.node"] = node
    if shard is not None:
        attributes["rayworker.shard"] = shard
    attributes.update(settings.resource_attributes)
    return Resource.create(attributes)


def setup_process(
    settings: TelemetrySettings,
    *,
    component: str,
    shard: int | None = None,
    node: str | None = None,
    exporter: SpanExporter | None = None,
    logs: bool = True,
) -> bool:
    """Configure logging and (unless tracing is off) the tracer provider of this process.

    Idempotent: a process already set up with the same settings keeps its provider (a Ray
    worker process runs many sink tasks). ``exporter`` replaces the configured exporter
    (tests pass an in-memory one; it is exported synchronously). ``logs`` False leaves the
    process's logging alone. Returns whether tracing is on.
    """
    if logs:
        configure_logging(settings, component=component, shard=shard)
    enabled = exporter is not None or tracing_enabled(settings)
    key = (settings.model_dump_json(), component, shard, id(exporter))
    if _state["key"] == key:
        return enabled
    _state["key"] = key
    if not enabled:
        if _state["provider"] is not None:
            _install(TracerProvider(sampler=ALWAYS_OFF))
        return False
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        resource=_resource(settings, component, shard, node),
        span_limits=SpanLimits(max_links=settings.max_links),
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        configured = build_exporter(settings)
        if configured is not None:
            provider.add_span_processor(
                BatchSpanProcessor(configured, schedule_delay_millis=_EXPORT_DELAY_MS)
            )
    _install(provider)
    logging.getLogger(__name__).info(
        "tracing on",
        extra={
            "exporter": settings.exporter if exporter is None else type(exporter).__name__,
            "sample_ratio": settings.sample_ratio,
        },
    )
    return True


def _install(provider: TracerProvider) -> None:
    current = _state["provider"]
    if current is None:
        _state["provider"] = _Delegating(provider)
        trace.set_tracer_provider(_state["provider"])
    else:
        # The global provider can be set only once per process; re-configuring (tests, a
        # worker process reused with other settings) swaps what the global one delegates to.
        current.target.shutdown()
        current.target = provider


class _Delegating(trace.TracerProvider):
    """The process's one global provider, pointing at the current SDK provider.

    OpenTelemetry lets a process set its global provider once; tests (and a process that
    is set up again with other settings) need to swap it, so the global one delegates.
    """

    def __init__(self, target: TracerProvider) -> None:
        self.target = target

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return self.target.get_tracer(*args, **kwargs)


def flush_tracing(timeout_ms: int = 5000) -> bool:
    """Export every finished span of this process now; False if the exporter timed out."""
    provider = _state["provider"]
    if provider is None:
        return True
    return bool(provider.target.force_flush(timeout_ms))
