"""Which events carry a producer's trace context, and the trace context of one batch.

A stream entry may carry a W3C ``traceparent`` (and ``tracestate``): the producer's trace,
which the pipeline continues. The pipeline does not start a span per event (at 100k events/s
that would cost more than detection): a batch's spans *link* to the sampled events' contexts,
and only an alert, when it fires, gets a span of its own inside the trace of the event that
fired it. To find that event a shard needs the ids of the traced events, computed here for
those events only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

from rayworker.events import derive_event_id
from rayworker.telemetry.propagation import Carrier, span_context_of

__all__ = ["BatchTrace", "choose_parent", "event_ids", "sampled_lines"]


class _IdOnly(msgspec.Struct):
    id: str | None = None


_ID_DECODER = msgspec.json.Decoder(_IdOnly)


@dataclass(slots=True)
class BatchTrace:
    """The trace context a routed batch travels with (a few hundred bytes pickled)."""

    parent: Carrier
    """The context of the batch's first ticket: its ``detect`` span's parent."""
    links: list[Carrier] = field(default_factory=list)
    """The contexts of the batch's other tickets, linked rather than parented."""
    events: dict[str, Carrier] = field(default_factory=dict)
    """Event id -> the producer's context, for the batch's events that carried a sampled one."""


def event_ids(lines: Sequence[bytes], indexes: Iterable[int]) -> dict[int, str]:
    """The event ids of ``lines[i]`` for ``i`` in ``indexes`` (the producer's ``id``, or the
    derived one); lines that are not JSON objects are left out (they will be rejected)."""
    out: dict[int, str] = {}
    for i in indexes:
        raw = lines[i]
        try:
            given = _ID_DECODER.decode(raw).id
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        out[i] = given if given is not None else derive_event_id(raw)
    return out


def choose_parent(carriers: Sequence[Carrier]) -> tuple[Carrier | None, list[Carrier]]:
    """The producer context a batch continues, and the sampled others it links to.

    The batch continues the first *sampled* producer trace; a batch whose producers all
    decided not to sample continues the first of them (so its spans are dropped with that
    trace); a batch with no producer context starts a trace of its own (None).
    """
    sampled = [
        c for c in carriers if (sc := span_context_of(c)) is not None and sc.trace_flags.sampled
    ]
    if sampled:
        return sampled[0], sampled[1:]
    return (carriers[0] if carriers else None), []


def sampled_lines(traces: Iterable[tuple[int, Carrier]]) -> dict[int, Carrier]:
    """Line index -> context, for the lines whose producer context is sampled.

    Lines of one stream entry share one carrier object, so each is parsed once.
    """
    verdict: dict[int, bool] = {}
    out: dict[int, Carrier] = {}
    for i, carrier in traces:
        key = id(carrier)
        sampled = verdict.get(key)
        if sampled is None:
            span_context = span_context_of(carrier)
            sampled = verdict[key] = span_context is not None and span_context.trace_flags.sampled
        if sampled:
            out[i] = carrier
    return out
