"""W3C trace context across processes: carriers in, carriers out (OpenTelemetry API only).

A *carrier* is the plain ``dict[str, str]`` the W3C Trace Context propagator reads and writes
(``traceparent``, optionally ``tracestate``). It pickles in a few bytes, so it rides along
every Ray call; ``None`` stands for "no context" (tracing off, or nothing to continue).
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "Carrier",
    "carrier_from_fields",
    "carrier_of",
    "context_of",
    "link_of",
    "span_context_of",
    "trace_id_hex",
    "trace_id_of",
]

Carrier = dict[str, str]

_W3C = TraceContextTextMapPropagator()


def carrier_of(context: Context | None = None) -> Carrier | None:
    """The carrier of ``context`` (default: the current one); None when it has no valid span."""
    carrier: Carrier = {}
    _W3C.inject(carrier, context)
    return carrier or None


def context_of(carrier: Mapping[str, str] | None) -> Context | None:
    """The context a carrier holds, for ``start_as_current_span(context=...)``; None if none."""
    if not carrier:
        return None
    context = _W3C.extract(carrier)
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context


def span_context_of(carrier: Mapping[str, str] | None) -> SpanContext | None:
    """The (remote) span context a carrier holds; None when missing or malformed."""
    context = context_of(carrier)
    if context is None:
        return None
    return trace.get_current_span(context).get_span_context()


def link_of(carrier: Mapping[str, str] | None) -> Link | None:
    """A span link to the carrier's span; None when it holds none."""
    span_context = span_context_of(carrier)
    return None if span_context is None else Link(span_context)


def carrier_from_fields(traceparent: str | None, tracestate: str | None = None) -> Carrier | None:
    """A carrier from a producer's ``traceparent``/``tracestate``; None unless it is valid W3C.

    A malformed header is ignored (the event is still processed, in a trace of its own), as
    the W3C specification asks of a receiver.
    """
    if not traceparent:
        return None
    carrier: Carrier = {"traceparent": traceparent.strip()}
    if tracestate:
        carrier["tracestate"] = tracestate.strip()
    if span_context_of(carrier) is None:
        return None
    return carrier


def trace_id_hex(span_context: SpanContext) -> str:
    """The 32-hex-digit trace id, as tracing back ends show and search it."""
    return trace.format_trace_id(span_context.trace_id)


def trace_id_of(carrier: Mapping[str, str] | None, *, sampled_only: bool = True) -> str | None:
    """The trace id a carrier names; None when it has none (or, by default, is not sampled:
    an unsampled trace was never recorded, so there is nothing to go to)."""
    span_context = span_context_of(carrier)
    if span_context is None or (sampled_only and not span_context.trace_flags.sampled):
        return None
    return trace_id_hex(span_context)
