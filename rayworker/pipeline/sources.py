"""Sources for :meth:`~rayworker.pipeline.app.Pipeline.pump`: Redis Streams, files, synthetic.

Each yields :class:`~rayworker.pipeline.app.Batch` objects; a stream batch carries the entry
ids that acknowledge it and the producers' trace contexts of its events. Sources yield an
empty batch when idle so the pump keeps acknowledging finished work while no new events
arrive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence

from rayworker.detect import LateEvent
from rayworker.events import Rejection, RejectReason
from rayworker.ingest.redis_streams import IngestError, StreamConsumer
from rayworker.pipeline.app import Batch
from rayworker.telemetry.propagation import Carrier, carrier_from_fields
from rayworker.telemetry.ray_metrics import PipelineMetrics

__all__ = ["StreamBatches", "paced_batches"]

_LAG_EVERY_S = 5.0


class StreamBatches:
    """Batches read from a consumer group; ack and dead-letter adapters for the pump."""

    def __init__(self, consumer: StreamConsumer, stop: asyncio.Event) -> None:
        self.consumer = consumer
        self.stop = stop
        # The entry of each line of the latest batch: the pump dead-letters a batch's rejects
        # right after submitting it, before the next read.
        self._latest: tuple[list[bytes], list[str]] = ([], [])
        self._lag_at = 0.0

    async def __aiter__(self) -> AsyncIterator[Batch]:
        while not self.stop.is_set():
            entries = await self.consumer.read()
            lines: list[bytes] = []
            owners: list[str] = []
            traces: list[tuple[int, Carrier]] = []
            for entry in entries:
                if entry.traceparent is not None:
                    carrier = carrier_from_fields(entry.traceparent, entry.tracestate)
                    if carrier is not None:
                        traces.extend((len(lines) + i, carrier) for i in range(len(entry.lines)))
                lines.extend(entry.lines)
                owners.extend([entry.entry_id] * len(entry.lines))
            ids = [entry.entry_id for entry in entries]
            self._latest = (lines, owners)
            await self._report_lag()
            yield Batch(lines, ids or None, traces)

    async def _report_lag(self) -> None:
        """Set the consumer-lag gauge of Ray's metrics every few seconds."""
        now = time.monotonic()
        if now - self._lag_at < _LAG_EVERY_S:
            return
        self._lag_at = now
        try:
            lag = await self.consumer.lag()
        except IngestError:
            return
        if lag.total is not None:
            PipelineMetrics.get().lag(self.consumer.stream, self.consumer.group, lag.total)

    async def ack(self, tokens: Sequence[list[str]]) -> None:
        """Acknowledge the entries of finished batches."""
        await self.consumer.ack([entry for token in tokens for entry in token])

    async def dead_letter(
        self, rejections: Sequence[Rejection], late: Sequence[LateEvent], lines: list[bytes]
    ) -> None:
        """Write rejected and late events, with the entry each came from, to the dead letters."""
        latest, owners = self._latest
        if latest is not lines:
            owners = []
        records = list(rejections) + [_late_record(event, lines) for event in late]
        entries = [owners[r.index] if 0 <= r.index < len(owners) else None for r in records]
        await self.consumer.dead_letter(records, source_entries=entries)


def _late_record(event: LateEvent, lines: list[bytes]) -> Rejection:
    raw = lines[event.index] if 0 <= event.index < len(lines) else b""
    lateness_s = (event.watermark_us - event.timestamp_us) / 1e6
    message = (
        f"event is {lateness_s:,.1f} s older than its tenant's watermark; it was counted as "
        "late and not detected on (raise the allowed lateness if this is normal)"
    )
    return Rejection(RejectReason.LATE, "timestamp", message, raw, event.index, event.tenant)


async def paced_batches(
    batches: Iterable[list[bytes]], *, rate: float | None = None, stop: asyncio.Event | None = None
) -> AsyncIterator[Batch]:
    """Batches from an iterable of line lists, at most ``rate`` events/s when given."""
    started = time.perf_counter()
    sent = 0
    for lines in batches:
        if stop is not None and stop.is_set():
            return
        if rate:
            ahead = sent / rate - (time.perf_counter() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        sent += len(lines)
        yield Batch(lines)
