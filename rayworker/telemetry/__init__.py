"""Traces, metrics and logs for the pipeline.

Library code (router, shards, sinks, sources) uses only the OpenTelemetry *API* through
:mod:`rayworker.telemetry.propagation` and :mod:`rayworker.telemetry.spans`; without a
configured SDK every span is a cheap no-op. Entry points (``rayworker run`` and ``demo``, the
Serve app, each actor's and sink worker's start-up) configure the SDK once per process with
:func:`~rayworker.telemetry.setup.setup_process`, from
:class:`~rayworker.settings.TelemetrySettings`.

Contextvars do not cross Ray processes, so a trace context travels explicitly as a small
W3C carrier dict (``{"traceparent": ..., "tracestate": ...}``) in every router->shard and
shard/router->sink call.
"""

from rayworker.telemetry.propagation import Carrier, carrier_of, context_of, trace_id_of
from rayworker.telemetry.setup import flush_tracing, setup_process, tracing_enabled

__all__ = [
    "Carrier",
    "carrier_of",
    "context_of",
    "flush_tracing",
    "setup_process",
    "trace_id_of",
    "tracing_enabled",
]
