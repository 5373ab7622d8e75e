"""Sources for :meth:`~rayworker.pipeline.app.Pipeline.pump`: Redis Streams, files, synthetic.

Each yields :class:`~rayworker.pipeline.app.Batch` objects; a stream batch carries the entry
ids that acknowledge it and the producers' trace contexts of its events. Sources yield an
empty batch when idle so the pump keeps acknowledging finished work while no new events
arrive.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from rayworker.checkpoint import stream_position
from rayworker.detect import LateEvent
from rayworker.errors import ConfigError
from rayworker.events import Rejection, RejectReason
from rayworker.ingest.dead_letters import payload_fields
from rayworker.ingest.redis_streams import IngestError, StreamConsumer, StreamEntry
from rayworker.pipeline.app import Batch
from rayworker.telemetry.propagation import Carrier, carrier_from_fields
from rayworker.telemetry.ray_metrics import PipelineMetrics

__all__ = ["FileDeadLetters", "StreamBatches", "file_batches", "paced_batches"]

_LAG_EVERY_S = 5.0
_log = logging.getLogger("rayworker.ingest")


class StreamBatches:
    """Batches read from a consumer group; ack and dead-letter adapters for the pump.

    ``observe``, when given, is called with the entries of every read, as they come and
    before they are batched (a fault drill records what the pipeline was given with it).
    """

    def __init__(
        self,
        consumer: StreamConsumer,
        stop: asyncio.Event,
        *,
        poison_attempts: int = 3,
        observe: Callable[[Sequence[StreamEntry]], None] | None = None,
    ) -> None:
        self.consumer = consumer
        self.stop = stop
        self.poison_attempts = poison_attempts
        self.observe = observe
        self.replay_entries = max(consumer.count, 1)
        self.poisoned = 0
        self.poisoned_entries: list[str] = []
        """Ids of the entries dead-lettered as poison, in the order they were set aside."""
        # Rejections of entries up to here were dead-lettered already: a replay after a
        # recovery screens them again, identically, and must not write them twice.
        self._dead_lettered_upto = 0
        self._lag_at = 0.0

    async def __aiter__(self) -> AsyncIterator[Batch]:
        while not self.stop.is_set():
            entries = await self.consumer.read()
            if entries and self.observe is not None:
                self.observe(entries)
            await self._report_lag()
            yield self._batch(entries)

    def _batch(self, entries: Sequence[StreamEntry], *, isolated: bool = False) -> Batch:
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
        position = max((stream_position(i) for i in ids), default=None)
        return Batch(lines, ids or None, traces, position, owners, isolated)

    async def replay(self, after: int, failures: Mapping[str, list[str]]) -> AsyncIterator[Batch]:
        """After a recovery: every pending entry above ``after``, in stream order.

        Entries at or below ``after`` are covered by the checkpoint and acknowledged here.
        An entry that failed before comes alone (``isolated``), so a further failure is
        attributable to it; after ``poison_attempts`` failures it goes to the dead-letter
        stream with its history (reason ``poison``) and is acknowledged, so the rest flows.
        """
        await self.consumer.claim_all()
        cursor = "0"
        group: list[StreamEntry] = []
        while True:
            entries = await self.consumer.read_pending(after=cursor)
            if not entries:
                break
            cursor = entries[-1].entry_id
            covered = [e.entry_id for e in entries if stream_position(e.entry_id) <= after]
            if covered:
                await self.consumer.ack(covered)
            for entry in entries:
                if stream_position(entry.entry_id) <= after:
                    continue
                history = failures.get(entry.entry_id, [])
                if not history:
                    group.append(entry)
                    if len(group) >= self.replay_entries:
                        yield self._batch(group)
                        group = []
                    continue
                if group:
                    yield self._batch(group)
                    group = []
                if len(history) >= self.poison_attempts:
                    await self._dead_letter_poison(entry, history)
                else:
                    yield self._batch([entry], isolated=True)
            if group:
                yield self._batch(group)
                group = []

    async def _dead_letter_poison(self, entry: StreamEntry, history: list[str]) -> None:
        message = (
            f"processing failed {len(history)} times ({', '.join(history)}); the entry was "
            "set aside so the stream flows on: inspect it (rayworker dead-letters list "
            "--reason poison), fix the cause and re-drive it (rayworker dead-letters redrive)"
        )
        records = [
            Rejection(RejectReason.POISON, None, message, line, index, None)
            for index, line in enumerate(entry.lines)
        ]
        await self.consumer.dead_letter(records, source_entries=[entry.entry_id] * len(records))
        await self.consumer.ack([entry.entry_id])
        self.poisoned += 1
        self.poisoned_entries.append(entry.entry_id)
        _log.warning(
            "poison entry dead-lettered",
            extra={"entry": entry.entry_id, "attempts": len(history), "events": len(records)},
        )

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
        self, rejections: Sequence[Rejection], late: Sequence[LateEvent], batch: Batch
    ) -> None:
        """Write rejected and late events, with the entry each came from, to the dead letters.

        Batches come in the order they were read (the pump takes receipts in order)."""
        owners = batch.owners or []
        records, entries = _with_entries(rejections, late, batch)
        upto = self._dead_lettered_upto
        if upto:
            fresh = [i for i, e in enumerate(entries) if e is None or stream_position(e) > upto]
            records = [records[i] for i in fresh]
            entries = [entries[i] for i in fresh]
        if records:
            await self.consumer.dead_letter(records, source_entries=entries)
        if owners:
            self._dead_lettered_upto = max(upto, *(stream_position(e) for e in set(owners)))


def _with_entries(
    rejections: Sequence[Rejection], late: Sequence[LateEvent], batch: Batch
) -> tuple[list[Rejection], list[str | None]]:
    """A batch's rejected and late events as dead-letter records, and the source entry of
    each (None where the batch does not say)."""
    owners = batch.owners or []
    records = list(rejections) + [_late_record(event, batch.lines) for event in late]
    entries = [owners[r.index] if 0 <= r.index < len(owners) else None for r in records]
    return records, entries


def _late_record(event: LateEvent, lines: list[bytes]) -> Rejection:
    raw = lines[event.index] if 0 <= event.index < len(lines) else b""
    lateness_s = (event.watermark_us - event.timestamp_us) / 1e6
    message = (
        f"event is {lateness_s:,.1f} s older than its tenant's watermark; it was counted as "
        "late and not detected on (raise the allowed lateness if this is normal)"
    )
    return Rejection(RejectReason.LATE, "timestamp", message, raw, event.index, event.tenant)


async def paced_batches(
    batches: Iterable[list[bytes] | Batch],
    *,
    rate: float | None = None,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[Batch]:
    """Batches from an iterable of line lists (or batches), at most ``rate`` events/s when
    given."""
    started = time.perf_counter()
    sent = 0
    for item in batches:
        if stop is not None and stop.is_set():
            return
        batch = item if isinstance(item, Batch) else Batch(item)
        if rate:
            ahead = sent / rate - (time.perf_counter() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        sent += len(batch.lines)
        yield batch


def file_batches(path: Path, *, batch_size: int = 2000) -> Iterator[Batch]:
    """The non-blank lines of a JSONL file in batches, each line owned by ``NAME:LINE``
    (1-based), so that a dead letter says where its event came from."""
    from rayworker.sources.jsonl import iter_line_batches  # noqa: PLC0415 - the CLI's lazy import

    number = 0
    for lines in iter_line_batches(path, batch_size=batch_size):
        kept: list[bytes] = []
        owners: list[str] = []
        for line in lines:
            number += 1
            if line.strip():
                kept.append(line)
                owners.append(f"{path.name}:{number}")
        yield Batch(kept, owners=owners)


class FileDeadLetters:
    """The dead letters of a file source: one JSON object per rejected or late event,
    appended to a local JSONL file (a file source has no dead-letter stream).

    A record holds what a stream's dead-letter record holds: ``reason``, ``field``,
    ``message``, ``tenant``, ``entry`` (``NAME:LINE`` of the input), ``at`` and the event's
    original bytes, as ``payload`` text when they are UTF-8 and as ``payload_base64``
    otherwise, so nothing is lost to re-encoding.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written = 0
        # Checked now, so that an unwritable path fails at start-up; created on the first
        # dead letter, so that a clean run leaves no empty file behind.
        problem = None
        if path.is_dir():
            problem = "it is a directory"
        elif not path.parent.is_dir():
            problem = f"its directory {str(path.parent)!r} does not exist"
        elif not os.access(path if path.exists() else path.parent, os.W_OK):
            problem = "no write permission there"
        if problem is not None:
            msg = (
                f"cannot write the dead-letter file {str(path)!r}: {problem}; "
                "pass --dead-letters with a file path in a writable directory"
            )
            raise ConfigError(msg)
        self._file: BinaryIO | None = None

    async def __call__(
        self, rejections: Sequence[Rejection], late: Sequence[LateEvent], batch: Batch
    ) -> None:
        """Append the batch's rejected and late events (the pump's dead-letter callback)."""
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        out = [
            msgspec.json.encode(_file_record(record, entry, at)) + b"\n"
            for record, entry in zip(*_with_entries(rejections, late, batch), strict=True)
        ]
        if not out:
            return
        if self._file is None:
            self._file = self.path.open("ab")
        self._file.write(b"".join(out))
        self._file.flush()
        self.written += len(out)

    def close(self) -> None:
        """Close the file (if a dead letter opened it)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _file_record(record: Rejection, entry: str | None, at: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        "reason": str(record.reason),
        "field": record.field,
        "message": record.message,
        "tenant": record.tenant,
        "entry": entry,
        "at": at,
    }
    data.update(payload_fields(record.raw))
    return data
