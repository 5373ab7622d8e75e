"""Read and re-drive the event dead-letter stream.

The pipeline writes every rejected, late or poison event to ``dead_letter_stream`` (see
:meth:`rayworker.ingest.redis_streams.StreamConsumer.dead_letter`) with its reason and its
original bytes. This module is the operator's side of that stream: list the records with
filters, count them, and *re-drive* chosen ones once their cause is fixed (a producer's clock,
a rule, a raised lateness): their payloads go back into the input stream as new entries and
their records leave the dead-letter stream, each record in one server-side script, so a record
is never re-driven without being removed, removed without being re-driven, or re-driven twice.

A re-driven event is judged like any other: one now more than the allowed lateness behind its
tenant's newest events is late and comes back with reason ``late``. It keeps its bytes, so its
derived id is unchanged, and an event the detector still holds in a window is recognised as a
redelivery instead of being counted twice.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from rayworker.ingest.redis_streams import IngestError

__all__ = ["DeadLetter", "DeadLetterFilter", "DeadLetterStream", "payload_fields"]

_PAGE: Final = 500

# KEYS: the dead-letter stream, the input stream. ARGV: MAXLEN ("" for none), then record ids.
# Moves each record that still exists: its payload becomes a one-event entry (field "event",
# as StreamProducer writes it) of the input stream, and the record is deleted.
_REDRIVE: Final = """
local moved = 0
for i = 2, #ARGV do
  local found = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #found == 1 then
    local fields = found[1][2]
    for j = 1, #fields, 2 do
      if fields[j] == 'payload' then
        if ARGV[1] == '' then
          redis.call('XADD', KEYS[2], '*', 'event', fields[j + 1])
        else
          redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'event', fields[j + 1])
        end
        redis.call('XDEL', KEYS[1], ARGV[i])
        moved = moved + 1
        break
      end
    end
  end
end
return moved
"""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of the dead-letter stream."""

    id: str
    """The record's id in the dead-letter stream."""
    reason: str
    field: str
    message: str
    tenant: str
    entry: str
    """The input stream entry it came from ("" when unknown)."""
    at: str
    payload: bytes

    @classmethod
    def from_fields(cls, record_id: str, fields: dict[bytes, bytes]) -> DeadLetter:
        """A record from its stream fields (missing fields read as empty)."""

        def text(name: bytes) -> str:
            return fields.get(name, b"").decode("utf-8", "replace")

        return cls(
            id=record_id,
            reason=text(b"reason"),
            field=text(b"field"),
            message=text(b"message"),
            tenant=text(b"tenant"),
            entry=text(b"entry"),
            at=text(b"at"),
            payload=fields.get(b"payload", b""),
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready data; the payload as text when it is UTF-8, else as base64."""
        data: dict[str, Any] = {
            "id": self.id,
            "reason": self.reason,
            "field": self.field or None,
            "message": self.message,
            "tenant": self.tenant or None,
            "entry": self.entry or None,
            "at": self.at,
        }
        data.update(payload_fields(self.payload))
        return data


def payload_fields(raw: bytes) -> dict[str, str]:
    """An event's original bytes for a JSON record: ``payload`` text when they are UTF-8,
    else ``payload_base64``, so that no byte is lost to re-encoding."""
    try:
        return {"payload": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"payload_base64": base64.b64encode(raw).decode("ascii")}


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which records: every given condition must hold (none given: every record)."""

    tenant: str | None = None
    reason: str | None = None
    ids: frozenset[str] | None = None
    before_ms: int | None = None
    """Only records added before this time (milliseconds since the epoch, as in their ids)."""

    def __call__(self, letter: DeadLetter) -> bool:
        """Whether the record matches."""
        return (
            (self.tenant is None or letter.tenant == self.tenant)
            and (self.reason is None or letter.reason == self.reason)
            and (self.ids is None or letter.id in self.ids)
            and (self.before_ms is None or _position(letter.id)[0] < self.before_ms)
        )


class DeadLetterStream:
    """The dead-letter stream ``key`` on ``client`` (which belongs to the caller)."""

    def __init__(self, client: aioredis.Redis, key: str) -> None:
        self._client = client
        self.key = key

    async def scan(
        self, matches: DeadLetterFilter | None = None, *, limit: int | None = None
    ) -> AsyncIterator[DeadLetter]:
        """The matching records, oldest first, at most ``limit`` of them."""
        matches = matches or DeadLetterFilter()
        left = limit
        async for page in self._candidates(matches):
            for letter in page:
                if matches(letter):
                    yield letter
                    left = None if left is None else left - 1
                    if left == 0:
                        return

    async def _candidates(self, matches: DeadLetterFilter) -> AsyncIterator[list[DeadLetter]]:
        if matches.ids is None:
            end = "+" if matches.before_ms is None else f"({matches.before_ms}-0"
            async for page in self._pages(end):
                yield page
            return
        # Known ids: read exactly those instead of the whole stream.
        for record_id in sorted(matches.ids, key=_position):
            yield await self._range(record_id, record_id, 1)

    async def _pages(self, end: str) -> AsyncIterator[list[DeadLetter]]:
        """Every record up to ``end`` (an XRANGE end), oldest first, ``_PAGE`` at a time."""
        start = "-"
        while True:
            page = await self._range(start, end, _PAGE)
            yield page
            if len(page) < _PAGE:
                return
            start = "(" + page[-1].id

    async def counts(self) -> Counter[tuple[str, str]]:
        """How many records there are per (tenant, reason); "" is an unknown tenant."""
        found: Counter[tuple[str, str]] = Counter()
        async for letter in self.scan():
            found[(letter.tenant, letter.reason)] += 1
        return found

    async def redrive(self, ids: Sequence[str], *, stream: str, maxlen: int | None = None) -> int:
        """Append the payload of each record in ``ids`` to ``stream`` as a one-event entry and
        delete the record; returns how many were moved.

        Each record moves in one server-side script, so it is re-driven exactly once: a
        record already gone (another operator re-drove it meanwhile) is skipped, never
        appended twice. Records are moved in order, ``_PAGE`` per round trip.
        """
        moved = 0
        ordered = sorted(dict.fromkeys(ids), key=_position)
        for start in range(0, len(ordered), _PAGE):
            chunk = ordered[start : start + _PAGE]
            try:
                moved += int(
                    await self._client.eval(
                        _REDRIVE,
                        2,
                        self.key,
                        stream,
                        "" if maxlen is None else str(maxlen),
                        *chunk,
                    )
                )
            except (RedisError, OSError) as exc:
                msg = (
                    f"re-driving dead letters from {self.key!r} to {stream!r} failed after "
                    f"{moved} of {len(ordered)} ({type(exc).__name__}: {exc}); the rest are "
                    "still dead letters: run the command again"
                )
                raise IngestError(msg) from exc
        return moved

    async def delete(self, ids: Sequence[str]) -> int:
        """Delete the records in ``ids``; returns how many existed."""
        deleted = 0
        ordered = list(dict.fromkeys(ids))
        for start in range(0, len(ordered), _PAGE):
            chunk = ordered[start : start + _PAGE]
            try:
                deleted += int(await self._client.xdel(self.key, *chunk))
            except (RedisError, OSError) as exc:
                msg = (
                    f"deleting dead letters from {self.key!r} failed after {deleted} "
                    f"({type(exc).__name__}: {exc}); run the command again for the rest"
                )
                raise IngestError(msg) from exc
        return deleted

    async def count_before(self, cutoff_ms: int) -> int:
        """How many records were added before ``cutoff_ms`` (milliseconds since the epoch)."""
        n = 0
        async for page in self._pages(f"({cutoff_ms}-0"):
            n += len(page)
        return n

    async def trim_before(self, cutoff_ms: int) -> int:
        """Delete every record added before ``cutoff_ms``; returns how many went."""
        try:
            return int(
                await self._client.xtrim(self.key, minid=f"{cutoff_ms}-0", approximate=False)
            )
        except (RedisError, OSError) as exc:
            msg = f"trimming {self.key!r} failed ({type(exc).__name__}: {exc}); run it again"
            raise IngestError(msg) from exc

    async def _range(self, start: str, end: str, count: int) -> list[DeadLetter]:
        try:
            records: Any = await self._client.xrange(self.key, start, end, count=count)
        except (RedisError, OSError) as exc:
            msg = f"cannot read the dead-letter stream {self.key!r} ({type(exc).__name__}: {exc})"
            raise IngestError(msg) from exc
        return [
            DeadLetter.from_fields(rid.decode() if isinstance(rid, bytes) else rid, fields)
            for rid, fields in records
        ]


def _position(record_id: str) -> tuple[int, int]:
    ms, _, seq = record_id.partition("-")
    return (int(ms), int(seq or 0))
