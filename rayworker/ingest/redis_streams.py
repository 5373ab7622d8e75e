"""Redis Streams ingest: a consumer-group reader, its dead-letter writer, and a producer.

Producers write audit events in one of two entry shapes; the consumer accepts both::

    XADD {stream} * event  <one JSON event>                   one event per entry
    XADD {stream} * events <JSON lines joined by "\\n">        a batch per entry (JSONL)

Either shape may add the producer's W3C trace context, ``traceparent`` (and ``tracestate``),
which the pipeline continues (:mod:`rayworker.telemetry`); it applies to every event of the
entry.

A batch costs one entry id, one pending-list slot and one XACK slot for many events, which is
where most of the per-event cost of Redis Streams goes (``bench/bench_streams.py`` measures
both shapes). The unit of delivery and acknowledgement is the *entry*: ack an entry only once
every event in it is done with (alerts stored, rejections dead-lettered).

Delivery is at least once, per consumer group:

* The first :meth:`StreamConsumer.read` after a start re-delivers this consumer's own pending
  entries (``XREADGROUP ... 0``), so a consumer restarted under the same name resumes where
  it stopped.
* About every ``claim_idle_ms / 2`` it takes over entries that other consumers left pending
  for longer than ``claim_idle_ms`` (``XAUTOCLAIM``): their consumer died or is stuck.
* Otherwise it reads new entries (``XREADGROUP ... >``) with ``COUNT`` and ``BLOCK``.

An entry that carries no usable events (neither or both of ``event`` and ``events``, or an
empty value) is not returned: it goes to the dead-letter stream with reason
:data:`BAD_ENTRY` and is acked at once, so it can neither stop the pipeline nor come back.
An entry deleted or trimmed while it was pending has nothing left to process and is acked.

Dead-letter records (:meth:`StreamConsumer.dead_letter`) are stream entries with the fields
``reason``, ``field``, ``message``, ``tenant`` (empty when unknown), ``payload`` (the original
bytes, verbatim), ``entry`` (the source entry id, empty when unknown) and ``at`` (ISO-8601
UTC). For a bad entry, ``payload`` is a JSON object of the entry's fields (values as UTF-8,
invalid bytes backslash-escaped) since there is no single event to keep.

Outages and restarts of Redis do not stop the consumer (:meth:`StreamConsumer.health` tells
how it fares):

* Connection lost: :meth:`~StreamConsumer.read` returns ``[]`` after a capped, growing pause,
  so the caller's loop goes on without spinning, and tries again on the next call;
  :meth:`~StreamConsumer.ack`, :meth:`~StreamConsumer.dead_letter`,
  :meth:`~StreamConsumer.read_pending` and :meth:`~StreamConsumer.deliveries` wait (retrying
  with the same backoff) until Redis answers, so nothing is acknowledged or dead-lettered by
  halves. redis-py's own reconnect retries (about 10 attempts, up to 1 s apart) come first.
* Group gone (``NOGROUP``: a Redis that keeps nothing on disk restarted, or the key was
  deleted): the group is recreated with ``MKSTREAM`` at id ``0``, so every entry producers
  wrote since is read. The entries this consumer had read and not acked are no longer pending
  anywhere: they are counted in ``lost_pending`` and logged at WARNING on
  ``rayworker.ingest``. The caller still holds them and may finish and ack them (acks of ids
  the group no longer knows return 0, they do not raise); what a crash would have re-delivered
  is what is lost, with whatever was written and not yet read before the restart, which no
  consumer can count. Entries whose ack was already waiting for Redis when it restarted
  (done, but no longer pending when the ack lands) are counted in ``acks_missed`` and logged
  at WARNING too: together with ``lost_pending`` they are the entries that were read and not
  acked when the group vanished.

Other failures (a wrong key type, missing permissions, an unreachable Redis in
:meth:`~StreamConsumer.ensure_group` at start-up) raise :class:`IngestError` naming the command
and what to check. The stream URL never appears in a message, a log line or a repr: it may
hold a password.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Self, TypeVar

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from rayworker.errors import ConfigError, InputError
from rayworker.events import Rejection
from rayworker.settings import Settings

__all__ = [
    "BAD_ENTRY",
    "ConsumerHealth",
    "IngestError",
    "StreamConsumer",
    "StreamEntry",
    "StreamLag",
    "StreamProducer",
]

BAD_ENTRY: Final = "bad_entry"
"""Dead-letter reason of a stream entry that carries no usable events."""

_EVENT: Final = b"event"
_EVENTS: Final = b"events"
_TRACEPARENT: Final = b"traceparent"
_TRACESTATE: Final = b"tracestate"
# XACK takes any number of ids, but one huge command blocks the server while it runs and
# needs one huge buffer; 10k ids keep each command short while still sending one round trip.
_ACK_CHUNK: Final = 10_000
# Commands per pipeline execute for the producer: bounds client memory for big inputs while
# keeping round trips rare.
_PIPELINE_CHUNK: Final = 1_000
# XAUTOCLAIM scans at most 10 * COUNT pending entries per call; ten calls bound the time one
# read() spends claiming even when the group's pending list is huge.
_CLAIM_PAGES: Final = 10
_START: Final = "0-0"

_log = logging.getLogger("rayworker.ingest")

_T = TypeVar("_T")
_Record = tuple[Any, Any]  # (entry id, fields) as redis-py parses a stream entry


class IngestError(InputError):
    """Raised when the Redis stream cannot be read, acknowledged or written to."""


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One stream entry: its id and the events it carries (JSON lines), in order."""

    entry_id: str
    lines: list[bytes]
    traceparent: str | None = None
    """The producer's W3C trace context (field ``traceparent``), which the pipeline continues."""
    tracestate: str | None = None
    """The producer's W3C ``tracestate`` field, passed on with ``traceparent``."""


@dataclass(frozen=True, slots=True)
class StreamLag:
    """How far a consumer group is behind its stream, in entries."""

    pending: int
    """Delivered to a consumer and not acked yet."""
    undelivered: int | None
    """Not delivered to any consumer yet; None when the server cannot tell (Redis < 7, or
    entries were deleted from the middle of the stream)."""

    @property
    def total(self) -> int | None:
        """Pending plus undelivered; None when the undelivered count is unknown, because a
        lower bound passed off as the lag would hide a consumer that is falling behind."""
        return None if self.undelivered is None else self.pending + self.undelivered


@dataclass(frozen=True, slots=True)
class ConsumerHealth:
    """How a consumer fares against Redis outages and restarts (:meth:`StreamConsumer.health`)."""

    connected: bool
    """False from a connection failure until Redis answers again."""
    last_error: str | None
    """The latest failure (command and error type, or the server's NOGROUP reply); kept after
    recovery so a report can say what happened."""
    down_since: float | None
    """Monotonic time the current outage began; None while connected."""
    resets: int
    """Times this consumer found its group gone and recreated it (a Redis restart that kept
    nothing, or a deleted key)."""
    reset_at: float | None
    """Monotonic time of the latest of those resets; None before the first."""
    lost_pending: int
    """Entries this consumer had read and not acked when its group vanished: no longer
    pending, so a crash before they are done would not re-deliver them."""
    in_flight: int
    """Entries read and not acked now."""
    acks_missed: int = 0
    """Entries this consumer had read and then acked, that the group no longer had pending
    (it vanished while they were processed, and the ack reached the recreated group): their
    work was done, but a crash before it would not have re-delivered them."""


@dataclass(frozen=True, slots=True)
class _DeadLetter:
    reason: str
    field: str
    message: str
    tenant: str
    payload: bytes
    entry: str


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_records(reply: Any) -> list[_Record]:
    # One stream was asked for, so a reply is [[stream, [(id, fields), ...]]] over RESP2 or
    # {stream: [[(id, fields), ...]]} over RESP3, and empty (or None) when nothing came.
    if not reply:
        return []
    records: list[_Record] = (
        next(iter(reply.values()))[0] if isinstance(reply, dict) else reply[0][1]
    )
    return records


def _failure(stream: str, what: str, exc: BaseException) -> IngestError:
    if isinstance(exc, ResponseError):
        # The server's reply names the problem (NOGROUP, WRONGTYPE, NOPERM...) and never
        # holds the URL, so it is safe and useful to show.
        detail = str(exc)
        hint = (
            "call ensure_group() first (or check the stream key and group name)"
            if detail.startswith("NOGROUP")
            else "check the stream key, its type and the Redis user's permissions"
        )
    else:
        # Connection errors can carry connection details; the type name is enough to act on.
        detail = type(exc).__name__
        hint = "check that Redis is up and reachable from this process (RAYWORKER_STREAM_URL)"
    msg = f"{what} on Redis stream {stream!r} failed ({detail}); {hint}"
    return IngestError(msg)


def _what(exc: IngestError) -> str:
    # _failure() starts every message with the command's name.
    return str(exc).split(" on Redis stream ", 1)[0]


def _is_outage(exc: BaseException) -> bool:
    """True when ``exc`` (an IngestError from _call/_execute) means Redis could not be reached."""
    cause = exc.__cause__
    return isinstance(cause, RedisConnectionError | RedisTimeoutError | OSError)


def _is_nogroup(exc: BaseException) -> bool:
    cause = exc.__cause__
    return isinstance(cause, ResponseError) and str(cause).startswith("NOGROUP")


def _check_client(client: aioredis.Redis) -> None:
    if client.connection_pool.connection_kwargs.get("decode_responses"):
        msg = (
            "the Redis client for the stream decodes responses to str; build it with"
            " decode_responses=False so events stay the bytes the producer sent"
        )
        raise ConfigError(msg)


def _bad_entry(
    entry_id: str, fields: Mapping[bytes, bytes], problem: str, field: str
) -> _DeadLetter:
    shown = {
        k.decode("utf-8", "backslashreplace"): v.decode("utf-8", "backslashreplace")
        for k, v in fields.items()
    }
    return _DeadLetter(
        reason=BAD_ENTRY,
        field=field,
        message=f"stream entry {entry_id} {problem}; write an 'event' or an 'events' field",
        tenant="",
        payload=msgspec.json.encode(shown),
        entry=entry_id,
    )


def _trace_fields(fields: Mapping[bytes, bytes]) -> tuple[str | None, str | None]:
    parent = fields.get(_TRACEPARENT)
    if parent is None:
        return None, None
    state = fields.get(_TRACESTATE)
    return (
        parent.decode("ascii", "replace"),
        None if state is None else state.decode("ascii", "replace"),
    )


def _decode_entry(entry_id: str, fields: Mapping[bytes, bytes]) -> StreamEntry | _DeadLetter:
    event = fields.get(_EVENT)
    events = fields.get(_EVENTS)
    if event is not None and events is None:
        if event.strip():
            return StreamEntry(entry_id, [event], *_trace_fields(fields))
        return _bad_entry(entry_id, fields, "has an empty 'event' field", "event")
    if events is not None and event is None:
        # Blank lines are not events (as in decode_lines); dropping them here keeps an
        # entry's line count equal to its event count.
        lines = [line for line in events.split(b"\n") if line.strip()]
        if lines:
            return StreamEntry(entry_id, lines, *_trace_fields(fields))
        return _bad_entry(entry_id, fields, "has an 'events' field with no lines", "events")
    if event is not None:
        return _bad_entry(entry_id, fields, "has both 'event' and 'events' fields", "events")
    names = ", ".join(sorted(k.decode("utf-8", "backslashreplace") for k in fields))
    return _bad_entry(
        entry_id, fields, f"has neither an 'event' nor an 'events' field (has: {names})", "event"
    )


class StreamConsumer:
    """One consumer of a Redis consumer group: reads entries, acks them, dead-letters events.

    ``client`` must be built with ``decode_responses=False`` and belongs to the caller
    (:meth:`close` leaves it open); :meth:`from_settings` builds a client the consumer owns.
    ``count`` is the most entries one XREADGROUP returns, ``block_ms`` how long it waits for
    new ones (0: it does not wait). Create the group with :meth:`ensure_group` before reading.
    While Redis is unreachable, calls pause ``retry_initial_s`` doubling up to ``retry_max_s``
    (with jitter) between attempts.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        stream: str,
        group: str,
        consumer: str,
        count: int = 100,
        block_ms: int = 200,
        claim_idle_ms: int = 60_000,
        dead_letter_stream: str,
        dead_letter_maxlen: int = 1_000_000,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 2.0,
        replays_pending: bool = False,
    ) -> None:
        """``replays_pending``: the caller re-reads pending entries itself, in stream order,
        with :meth:`claim_all` and :meth:`read_pending` (a recoverable pipeline does, after
        each recovery); :meth:`read` then returns new entries only, never pending ones, which
        would arrive out of order."""
        _check_options(stream, dead_letter_stream, count, block_ms, claim_idle_ms)
        _check_client(client)
        if dead_letter_maxlen < 1:
            msg = f"Got {dead_letter_maxlen} for dead_letter_maxlen. Use 1 or more entries."
            raise ConfigError(msg)
        if not 0 < retry_initial_s <= retry_max_s:
            msg = (
                f"Got retry_initial_s={retry_initial_s} and retry_max_s={retry_max_s}."
                " Use 0 < retry_initial_s <= retry_max_s."
            )
            raise ConfigError(msg)
        self._client = client
        self._owns_client = False
        self._stream = stream
        self._group = group
        self._consumer = consumer
        self._count = count
        # BLOCK 0 means "wait forever" to Redis; 0 here means "do not wait", so send no BLOCK.
        self._block: int | None = block_ms or None
        self._claim_idle_ms = claim_idle_ms
        self._claim_every_s = claim_idle_ms / 2000
        self._dead_letter_stream = dead_letter_stream
        self._dead_letter_maxlen = dead_letter_maxlen
        self._replays_pending = replays_pending
        self._draining = not replays_pending
        self._drain_from = _START
        self._claim_cursor = _START
        self._next_claim = 0.0
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        # Entries returned to the caller and not acked yet: what a vanished group takes along.
        self._delivered: set[str] = set()
        self._connected = True
        self._last_error: str | None = None
        self._down_since: float | None = None
        self._attempts = 0
        self._resets = 0
        self._reset_at: float | None = None
        self._lost_pending = 0
        self._acks_missed = 0
        # A NOGROUP before the group was ever there is a first start, not a loss.
        self._group_seen = False
        self._group_missing = False

    @classmethod
    def from_settings(cls, settings: Settings, *, replays_pending: bool = False) -> StreamConsumer:
        """A consumer of ``settings.stream_key`` with its own client, closed by :meth:`close`."""
        _check_options(
            settings.stream_key,
            settings.dead_letter_stream,
            settings.read_count,
            settings.block_ms,
            settings.claim_idle_ms,
        )
        try:
            client = aioredis.Redis.from_url(
                settings.stream_url.get_secret_value(),
                decode_responses=False,
                # A blocked XREADGROUP must not look like a dead socket.
                socket_timeout=settings.block_ms / 1000 + 10.0,
                socket_connect_timeout=10.0,
            )
        except ValueError:
            # The URL stays out of the message: it may hold a password.
            msg = (
                "RAYWORKER_STREAM_URL is not a valid Redis URL; use"
                " redis://[:password@]host:port/db, rediss://... or unix://..."
            )
            raise ConfigError(msg) from None
        consumer = cls(
            client,
            stream=settings.stream_key,
            group=settings.consumer_group,
            consumer=settings.consumer_name,
            count=settings.read_count,
            block_ms=settings.block_ms,
            claim_idle_ms=settings.claim_idle_ms,
            dead_letter_stream=settings.dead_letter_stream,
            dead_letter_maxlen=settings.dead_letter_maxlen,
            replays_pending=replays_pending,
        )
        consumer._owns_client = True
        return consumer

    def __repr__(self) -> str:
        return (
            f"StreamConsumer(stream={self._stream!r}, group={self._group!r},"
            f" consumer={self._consumer!r})"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def group(self) -> str:
        """The consumer group this consumer reads in."""
        return self._group

    @property
    def count(self) -> int:
        """Entries per read (``COUNT``)."""
        return self._count

    @property
    def stream(self) -> str:
        """The stream key this consumer reads."""
        return self._stream

    async def close(self) -> None:
        """Close the client if this consumer built it (:meth:`from_settings`)."""
        if self._owns_client:
            await self._client.aclose()

    async def _call(self, what: str, command: Awaitable[_T]) -> _T:
        try:
            return await command
        except (RedisError, OSError) as exc:
            raise _failure(self._stream, what, exc) from exc

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) at the stream's start, unless it exists.

        Raises :class:`IngestError` when Redis cannot be reached: call it at start-up, where
        a wrong URL should fail loudly.
        """
        await self._create_group()

    async def _create_group(self) -> None:
        try:
            await self._client.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise _failure(self._stream, "XGROUP CREATE", exc) from exc
        except (RedisError, OSError) as exc:
            raise _failure(self._stream, "XGROUP CREATE", exc) from exc
        self._group_seen = True
        self._group_missing = False

    def health(self) -> ConsumerHealth:
        """Connection state, outage start, group resets and entries lost from pending."""
        return ConsumerHealth(
            connected=self._connected,
            last_error=self._last_error,
            down_since=self._down_since,
            resets=self._resets,
            reset_at=self._reset_at,
            lost_pending=self._lost_pending,
            in_flight=len(self._delivered),
            acks_missed=self._acks_missed,
        )

    async def read(self) -> list[StreamEntry]:
        """The next entries for this consumer, oldest first; ``[]`` when none came in time.

        First this consumer's own pending entries (after a restart), then, about every
        ``claim_idle_ms / 2``, entries any consumer (this one included) left idle for
        ``claim_idle_ms``, else new entries. Bad entries are dead-lettered and acked here,
        never returned; an empty result does not mean the stream is exhausted. While Redis is
        unreachable, or its group was just recreated, the result is ``[]`` too (see the module
        docstring); :meth:`health` says which.
        """
        try:
            if self._group_missing:
                await self._create_group()
            entries = await self._read()
        except IngestError as exc:
            if _is_outage(exc):
                await self._pause(exc)
                return []
            if _is_nogroup(exc):
                await self._group_gone(exc)
                return []
            raise
        self._answered()
        return entries

    async def _read(self) -> list[StreamEntry]:
        if self._draining:
            reply = await self._call(
                "XREADGROUP 0",
                self._client.xreadgroup(
                    self._group,
                    self._consumer,
                    {self._stream: self._drain_from},
                    count=self._count,
                ),
            )
            records = _stream_records(reply)
            if records:
                # Pending entries stay pending until acked: read on from the last one seen,
                # or the same page would come back forever.
                self._drain_from = _text(records[-1][0])
                return await self._accept(records)
            self._draining = False
        if not self._replays_pending and time.monotonic() >= self._next_claim:
            claimed = await self._claim()
            if claimed:
                return claimed
        reply = await self._call(
            "XREADGROUP >",
            self._client.xreadgroup(
                self._group,
                self._consumer,
                {self._stream: ">"},
                count=self._count,
                block=self._block,
            ),
        )
        return await self._accept(_stream_records(reply))

    async def read_pending(self, after: str = "0", count: int | None = None) -> list[StreamEntry]:
        """This consumer's own pending entries (read, not acked) with ids above ``after``.

        In id order, at most ``count`` (None: all of them), read with ``XREADGROUP`` at an
        explicit id, which re-delivers without taking new entries and adds one to each
        entry's delivery count (:meth:`deliveries`). Bad and deleted entries are dead-lettered
        and acked, as in :meth:`read`. Waits while Redis is unreachable; ``[]`` when the group
        is gone (it is recreated, and nothing is pending in a new group).

        How it relates to :meth:`read`: ``read()`` also re-delivers this consumer's pending
        entries, once, on its first calls (the same ``XREADGROUP 0`` drain); a
        ``read_pending()`` that reaches the end of the pending list ends that drain, so replay
        with ``read_pending()`` first and the following ``read()`` calls do not return the
        same entries again. Independently, ``read()`` claims (``XAUTOCLAIM``) entries idle for
        ``claim_idle_ms`` from any consumer of the group, this one included: an entry the
        caller holds unacked for longer than that comes back from ``read()`` once more, so
        replay and claims can both deliver an entry and processing must tolerate repeats
        (alert ids and upserts do).
        """
        if count is not None and count < 1:
            msg = f"Got {count} for count. Use 1 or more entries, or None for all of them."
            raise ValueError(msg)
        entries: list[StreamEntry] = []
        cursor = after
        while count is None or len(entries) < count:
            page = self._count if count is None else min(self._count, count - len(entries))
            try:
                reply = await self._until_answered(self._history_page(cursor, page))
            except IngestError as exc:
                if not _is_nogroup(exc):
                    raise
                await self._group_gone(exc)
                return entries
            records = _stream_records(reply)
            if not records:
                self._draining = False
                break
            cursor = _text(records[-1][0])
            entries.extend(await self._accept(records))
        return entries

    def _history_page(self, after: str, count: int) -> Callable[[], Awaitable[Any]]:
        def command() -> Awaitable[Any]:
            return self._call(
                "XREADGROUP <id>",
                self._client.xreadgroup(
                    self._group, self._consumer, {self._stream: after}, count=count
                ),
            )

        return command

    async def claim_all(self, min_idle_ms: int = 0) -> int:
        """Take over every entry pending for other consumers of the group; returns how many.

        For recovery: afterwards :meth:`read_pending` replays the group's whole pending list
        (this consumer's and the taken-over entries) in id order. Pages through ``XPENDING``
        and moves other consumers' entries with ``XCLAIM ... JUSTID``, which leaves delivery
        counts as they were. ``min_idle_ms=0`` takes entries from live consumers too: use it
        only when this consumer is the group's only reader (the pipeline is a singleton);
        otherwise pass ``claim_idle_ms``. Waits while Redis is unreachable; 0 when the group
        is gone.
        """
        claimed = 0
        start = "-"
        while True:
            try:
                page = await self._until_answered(self._pending_page(start, min_idle_ms))
            except IngestError as exc:
                if not _is_nogroup(exc):
                    raise
                await self._group_gone(exc)
                return claimed
            if not page:
                return claimed
            start = "(" + _text(page[-1]["message_id"])
            theirs = [
                _text(d["message_id"]) for d in page if _text(d["consumer"]) != self._consumer
            ]
            if theirs:
                taken = await self._until_answered(self._xclaim(theirs, min_idle_ms))
                claimed += len(taken)
            if len(page) < _PIPELINE_CHUNK:
                return claimed

    def _pending_page(self, start: str, min_idle_ms: int) -> Callable[[], Awaitable[Any]]:
        def command() -> Awaitable[Any]:
            return self._call(
                "XPENDING",
                self._client.xpending_range(
                    self._stream,
                    self._group,
                    start,
                    "+",
                    _PIPELINE_CHUNK,
                    idle=min_idle_ms or None,
                ),
            )

        return command

    def _xclaim(self, entry_ids: list[str], min_idle_ms: int) -> Callable[[], Awaitable[Any]]:
        def command() -> Awaitable[Any]:
            return self._call(
                "XCLAIM",
                self._client.xclaim(
                    self._stream,
                    self._group,
                    self._consumer,
                    min_idle_time=min_idle_ms,
                    message_ids=entry_ids,  # type: ignore[arg-type]
                    justid=True,
                ),
            )

        return command

    async def deliveries(self, entry_ids: Sequence[str]) -> dict[str, int]:
        """How many times each entry was delivered, for entries pending in the group.

        From ``XPENDING`` (extended form), one pipelined query per id in one round trip. Ids
        not pending (acked, never read, or of a group that vanished) are left out. Counts
        grow with each :meth:`read_pending` / drain / claim of the entry: an entry that keeps
        coming back is likely poison. Waits while Redis is unreachable.
        """
        if isinstance(entry_ids, str):
            msg = "deliveries() takes a sequence of entry ids, not one id; use deliveries([id])"
            raise TypeError(msg)
        if not entry_ids:
            return {}
        counts: dict[str, int] = {}
        for start in range(0, len(entry_ids), _ACK_CHUNK):
            chunk = entry_ids[start : start + _ACK_CHUNK]
            try:
                replies = await self._until_answered(self._xpending_each(chunk))
            except IngestError as exc:
                if not _is_nogroup(exc):
                    raise
                await self._group_gone(exc)
                return {}
            for reply in replies:
                for detail in reply:
                    counts[_text(detail["message_id"])] = int(detail["times_delivered"])
        return counts

    def _xpending_each(self, entry_ids: Sequence[str]) -> Callable[[], Awaitable[list[Any]]]:
        def command() -> Awaitable[list[Any]]:
            pipe = self._client.pipeline(transaction=False)
            for entry_id in entry_ids:
                pipe.xpending_range(self._stream, self._group, entry_id, entry_id, 1)
            return self._execute(pipe, "XPENDING")

        return command

    async def _claim(self) -> list[StreamEntry]:
        records: list[_Record] = []
        for _ in range(_CLAIM_PAGES):
            reply = await self._call(
                "XAUTOCLAIM",
                self._client.xautoclaim(
                    self._stream,
                    self._group,
                    self._consumer,
                    min_idle_time=self._claim_idle_ms,
                    start_id=self._claim_cursor,
                    count=self._count,
                ),
            )
            self._claim_cursor = _text(reply[0])
            # Redis 6.2 reports a claimed-but-deleted entry as nil (parsed to (None, None));
            # Redis 7 drops it from the pending list itself and lists its id in reply[2].
            # Either way there is nothing to process or ack.
            records.extend(r for r in reply[1] if r[0] is not None)
            if self._claim_cursor == _START or len(records) >= self._count:
                break
        if self._claim_cursor == _START:
            self._next_claim = time.monotonic() + self._claim_every_s
        # Otherwise part of the pending list is unscanned: claim on from the cursor next read.
        return await self._accept(records)

    async def _accept(self, records: Sequence[_Record]) -> list[StreamEntry]:
        entries: list[StreamEntry] = []
        bad: list[_DeadLetter] = []
        gone: list[str] = []
        for raw_id, fields in records:
            entry_id = _text(raw_id)
            if not fields:
                # XADD needs a field, so no fields means the entry was deleted or trimmed
                # while pending: nothing is left to process.
                gone.append(entry_id)
                continue
            decoded = _decode_entry(entry_id, fields)
            if isinstance(decoded, StreamEntry):
                entries.append(decoded)
            else:
                bad.append(decoded)
        if bad or gone:
            await self._write_dead_letters(bad, ack_ids=[d.entry for d in bad] + gone)
        self._delivered.update(e.entry_id for e in entries)
        return entries

    async def ack(self, entry_ids: Sequence[str]) -> int:
        """Acknowledge entries (one round trip); returns how many were pending.

        Waits while Redis is unreachable, so an ack is never lost; ids the group no longer
        knows (it was recreated) count as not pending.
        """
        if isinstance(entry_ids, str):
            msg = "ack() takes a sequence of entry ids, not one id; use ack([entry_id])"
            raise TypeError(msg)
        if not entry_ids:
            return 0
        held = len(self._delivered.intersection(entry_ids))
        acked = sum(int(n) for n in await self._until_answered(self._xack(entry_ids)))
        # Held entries are pending in the group unless it vanished meanwhile.
        held = min(held, len(self._delivered.intersection(entry_ids)))
        self._delivered.difference_update(entry_ids)
        if held > acked:
            self._missed(held - acked)
        return acked

    def _missed(self, missed: int) -> None:
        self._acks_missed += missed
        _log.warning(
            "%d entries acked on Redis stream %r were no longer pending in group %r (Redis"
            " restarted without persistence, or the key was deleted, while they were being"
            " processed): they are done, but a crash before would not have re-delivered them."
            " Entries acked after their group vanished so far: %d",
            missed,
            self._stream,
            self._group,
            self._acks_missed,
        )

    def _xack(self, entry_ids: Sequence[str]) -> Callable[[], Awaitable[list[Any]]]:
        def command() -> Awaitable[list[Any]]:
            pipe = self._client.pipeline(transaction=False)
            for start in range(0, len(entry_ids), _ACK_CHUNK):
                pipe.xack(self._stream, self._group, *entry_ids[start : start + _ACK_CHUNK])
            return self._execute(pipe, "XACK")

        return command

    async def dead_letter(
        self, rejections: Sequence[Rejection], *, source_entries: Sequence[str | None] = ()
    ) -> None:
        """Append rejections to the dead-letter stream in one round trip.

        ``source_entries``, when given, holds the stream entry id each rejection came from,
        position for position (None where unknown). Waits while Redis is unreachable.
        """
        if source_entries and len(source_entries) != len(rejections):
            msg = (
                f"source_entries has {len(source_entries)} ids for {len(rejections)} rejections;"
                " give one id (or None) per rejection, or none at all"
            )
            raise ValueError(msg)
        records = [
            _DeadLetter(
                reason=str(r.reason),
                field=r.field or "",
                message=r.message,
                tenant=r.tenant or "",
                payload=r.raw,
                entry=(source_entries[i] or "") if source_entries else "",
            )
            for i, r in enumerate(rejections)
        ]
        if records:
            await self._write_dead_letters(records, ack_ids=())

    async def _write_dead_letters(
        self, records: Sequence[_DeadLetter], ack_ids: Sequence[str]
    ) -> None:
        at = datetime.now(UTC).isoformat(timespec="milliseconds")

        def command() -> Awaitable[list[Any]]:
            pipe = self._client.pipeline(transaction=False)
            for rec in records:
                pipe.xadd(
                    self._dead_letter_stream,
                    {
                        "reason": rec.reason,
                        "field": rec.field,
                        "message": rec.message,
                        "tenant": rec.tenant,
                        "payload": rec.payload,
                        "entry": rec.entry,
                        "at": at,
                    },
                    maxlen=self._dead_letter_maxlen,
                    approximate=True,
                )
            # In the same round trip as the dead-letter writes, so a crash between them can
            # only write a record twice, never ack an entry whose record was not written.
            for start in range(0, len(ack_ids), _ACK_CHUNK):
                pipe.xack(self._stream, self._group, *ack_ids[start : start + _ACK_CHUNK])
            return self._execute(pipe, "dead-letter XADD")

        # A retry after a lost reply may write a record twice, as a crash may; never none.
        await self._until_answered(command)

    async def _execute(self, pipe: Any, what: str) -> list[Any]:
        try:
            async with pipe:
                result: list[Any] = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise _failure(self._stream, what, exc) from exc
        return result

    async def _until_answered(self, command: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``command`` until Redis answers it, pausing between tries while it is down."""
        while True:
            try:
                result = await command()
            except IngestError as exc:
                if not _is_outage(exc):
                    raise
                await self._pause(exc)
                continue
            self._answered()
            return result

    async def _pause(self, exc: IngestError) -> None:
        """Record an outage and wait before the next try (growing, capped, jittered)."""
        cause = exc.__cause__
        # The error type only: a connection error's text can hold the host and port.
        self._last_error = f"{_what(exc)}: {type(cause).__name__}"
        self._attempts += 1
        if self._connected:
            self._connected = False
            self._down_since = time.monotonic()
            _log.warning(
                "Redis stream %r unreachable (%s); retrying until it answers, %d entries read"
                " and not acked meanwhile",
                self._stream,
                self._last_error,
                len(self._delivered),
            )
        delay = min(self._retry_max_s, self._retry_initial_s * 2 ** min(self._attempts - 1, 20))
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not secrets

    def _answered(self) -> None:
        if not self._connected:
            _log.info(
                "Redis stream %r answers again after %.1f s",
                self._stream,
                time.monotonic() - (self._down_since or time.monotonic()),
            )
        self._connected = True
        self._down_since = None
        self._attempts = 0

    async def _group_gone(self, exc: IngestError) -> None:
        """Count what a vanished group took along, then recreate it (once Redis answers)."""
        self._answered()  # NOGROUP is an answer
        if not self._group_missing:
            self._group_missing = True
            # Nothing is pending in the group it gets replaced by: no drain, no claim cursor.
            self._draining = False
            self._drain_from = _START
            self._claim_cursor = _START
            if self._group_seen:
                lost = len(self._delivered)
                self._resets += 1
                self._reset_at = time.monotonic()
                self._lost_pending += lost
                self._delivered.clear()
                self._last_error = f"{_what(exc)}: NOGROUP"
                _log.warning(
                    "consumer group %r of Redis stream %r is gone (Redis restarted without"
                    " persistence, or the key was deleted); recreating it from the stream's"
                    " start. %d entries this consumer had read and not acked are no longer"
                    " pending (a crash now would not re-deliver them); entries written and"
                    " not yet read before the loss cannot be counted. Resets so far: %d,"
                    " entries lost from pending so far: %d",
                    self._group,
                    self._stream,
                    lost,
                    self._resets,
                    self._lost_pending,
                )
        try:
            await self._create_group()
        except IngestError as failure:
            if not _is_outage(failure):
                raise
            await self._pause(failure)

    async def lag(self) -> StreamLag:
        """Pending and undelivered entries of this consumer's group."""
        try:
            groups: list[dict[str, Any]] = await self._client.xinfo_groups(self._stream)
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return StreamLag(pending=0, undelivered=0)
            # XINFO may be renamed or forbidden to this user; XPENDING still tells pending.
            return await self._lag_from_xpending()
        except (RedisError, OSError) as exc:
            raise _failure(self._stream, "XINFO GROUPS", exc) from exc
        for group in groups:
            if _text(group["name"]) == self._group:
                lag = group.get("lag")
                return StreamLag(
                    pending=int(group["pending"]),
                    undelivered=None if lag is None else int(lag),
                )
        # No group yet: every entry of the stream is still to be delivered.
        length = await self._call("XLEN", self._client.xlen(self._stream))
        return StreamLag(pending=0, undelivered=int(length))

    async def _lag_from_xpending(self) -> StreamLag:
        summary = await self._call("XPENDING", self._client.xpending(self._stream, self._group))
        return StreamLag(pending=int(summary["pending"]), undelivered=None)


def _check_options(
    stream: str, dead_letter_stream: str, count: int, block_ms: int, claim_idle_ms: int
) -> None:
    if stream == dead_letter_stream:
        msg = (
            f'Got "{dead_letter_stream}" for dead_letter_stream, the same key as the stream.'
            " Use another key, or rejected events would be read again as input."
        )
        raise ConfigError(msg)
    if count < 1:
        msg = f"Got {count} for count. Use 1 or more entries per read."
        raise ConfigError(msg)
    if block_ms < 0:
        msg = f"Got {block_ms} for block_ms. Use 0 (do not wait) or more milliseconds."
        raise ConfigError(msg)
    if claim_idle_ms < 1:
        msg = f"Got {claim_idle_ms} for claim_idle_ms. Use 1 or more milliseconds."
        raise ConfigError(msg)


class StreamProducer:
    """Writes audit events to a stream, one per entry or in JSONL batches.

    ``client`` belongs to the caller. ``maxlen``: trim the stream to about this many entries
    on each write (``MAXLEN ~``); None keeps everything.
    """

    def __init__(self, client: aioredis.Redis, *, stream: str, maxlen: int | None = None) -> None:
        if maxlen is not None and maxlen < 1:
            msg = f"Got {maxlen} for maxlen. Use 1 or more entries, or None for no trimming."
            raise ConfigError(msg)
        self._client = client
        self._stream = stream
        self._maxlen = maxlen

    def __repr__(self) -> str:
        return f"StreamProducer(stream={self._stream!r}, maxlen={self._maxlen!r})"

    async def add_events(self, lines: Sequence[bytes], *, per_entry: int = 1) -> list[str]:
        """Append events (compact JSON lines) in order; returns the new entry ids.

        ``per_entry=1`` writes each event as its own entry (field ``event``); more writes
        entries of up to that many events joined by newlines (field ``events``).
        """
        if per_entry < 1:
            msg = f"Got {per_entry} for per_entry. Use 1 or more events per entry."
            raise ValueError(msg)
        if per_entry > 1 and any(b"\n" in line for line in lines):
            # The consumer splits a batch on newlines; a newline inside an event would cut it
            # into fragments that each fail to decode.
            msg = "an event contains a newline; batch only compact JSON, one object per line"
            raise ValueError(msg)
        ids: list[str] = []
        pipe = self._client.pipeline(transaction=False)
        queued = 0
        for start in range(0, len(lines), per_entry):
            if per_entry == 1:
                fields: dict[bytes, bytes] = {_EVENT: lines[start]}
            else:
                fields = {_EVENTS: b"\n".join(lines[start : start + per_entry])}
            pipe.xadd(self._stream, fields, maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
            queued += 1
            if queued == _PIPELINE_CHUNK:
                ids.extend(_text(i) for i in await self._execute(pipe))
                pipe = self._client.pipeline(transaction=False)
                queued = 0
        if queued:
            ids.extend(_text(i) for i in await self._execute(pipe))
        return ids

    async def add_raw(self, fields: Mapping[str | bytes, bytes | str | int | float]) -> str:
        """Append one entry with exactly these fields (for tests and tools); returns its id."""
        try:
            entry_id = await self._client.xadd(
                self._stream,
                dict(fields),  # type: ignore[arg-type]
                maxlen=self._maxlen,
                approximate=True,
            )
        except (RedisError, OSError) as exc:
            raise _failure(self._stream, "XADD", exc) from exc
        return _text(entry_id)

    async def _execute(self, pipe: Any) -> list[Any]:
        try:
            async with pipe:
                result: list[Any] = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise _failure(self._stream, "XADD", exc) from exc
        return result
