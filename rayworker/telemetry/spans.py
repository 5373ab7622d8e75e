"""Span helpers for library code (OpenTelemetry API only).

Span names follow ``rayworker.<stage>``: ``ingest`` (a source batch, in the driver),
``validate`` and ``route`` (the router), ``detect`` (a shard batch), ``alert`` (one alert
raised or updated), ``persist`` (a sink task), ``ack`` (acknowledging finished entries).
Attributes are counts, ids the pipeline made (tickets, shards, alert ids, rule ids) and
tenants; never event payload (principals, IPs, group values) unless
``telemetry.record_payload`` allows it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from opentelemetry import trace
from opentelemetry.trace import Link, Tracer

from rayworker.telemetry.propagation import link_of

__all__ = ["SCOPE", "links", "tracer"]

SCOPE: Final = "rayworker"
"""The instrumentation scope of every rayworker span."""


def tracer() -> Tracer:
    """The rayworker tracer of the current provider (a no-op one until the SDK is set up)."""
    return trace.get_tracer(SCOPE)


def links(carriers: Iterable[Mapping[str, str] | None], limit: int) -> list[Link]:
    """Links to the spans the carriers hold, at most ``limit`` (the rest are not linked)."""
    out: list[Link] = []
    for carrier in carriers:
        if len(out) >= limit:
            break
        link = link_of(carrier)
        if link is not None:
            out.append(link)
    return out
