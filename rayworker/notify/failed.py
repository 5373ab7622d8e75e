"""The operator's side of failed notifications: list, count, re-drive and drop them.

The notifier writes a notification it could not deliver (retries exhausted, circuit open,
rejected, or still in flight at shutdown) to its dead-letter store, with the notification as it
was to be sent (:mod:`rayworker.notify.dead_letters`). Once the receiver is back or its
configuration is fixed, :func:`redrive` sends chosen records once more and deletes each one
that is delivered; one that fails again stays, with the new error reported, and becomes the
newest record with its count of failed re-drives, the last error and when it failed
(``redrive_failures``, ``last_error``, ``last_failed_at``).

* **At least once, never twice at once.** A record is deleted only after its receiver took
  it (from a stream at once; from a file 100 at a time, and at the end of the run even when it
  is interrupted), so a crash in between sends it again on the next re-drive, with the same
  idempotency key (``Idempotency-Key`` and the body's ``idempotency_key``), which lets the
  receiver drop it.
  Two operators re-driving the same stream do not both send a record: each record is first
  claimed with ``SET NX`` on a key that expires (a Redis stream), or the whole re-drive holds
  ``<file>.redrive.lock`` (the file store).
* **Only the record's own tenant.** A record is sent to the receiver of that name in its own
  tenant's configuration (or the default one), never to another tenant's.
* **One attempt per record.** After a receiver fails transiently (a timeout, a 5xx, no
  connection), the rest of its records in the same run are skipped rather than each waiting
  for its timeout; they stay in the store for the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import httpx
import redis.asyncio as aioredis
from filelock import FileLock, Timeout
from xxhash import xxh3_64_hexdigest

from rayworker.clock import Clock, SystemClock
from rayworker.errors import SinkError
from rayworker.notify.config import (
    DeadLetterConfig,
    EmailReceiver,
    NotifyConfig,
    NtfyReceiver,
    WebhookReceiver,
)
from rayworker.notify.dead_letters import lock_of, notification_of
from rayworker.notify.model import epoch_s
from rayworker.notify.receivers import DeliveryError, Sender, build_sender

__all__ = [
    "FailedFile",
    "FailedFilter",
    "FailedNotification",
    "FailedStore",
    "FailedStream",
    "FailedSummary",
    "RedriveReport",
    "failed_store",
    "redrive",
]

_PAGE: Final = 500
_CLAIM_MARGIN_S: Final = 30.0  # a claim outlives one attempt's timeout by this much
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: the stream, the record's claim. ARGV: the claim's token, the record's id, then the new
# entry's fields. Only the claim's owner replaces it, and only while the record is there.
_REPLACE: Final = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return false end
redis.call('DEL', KEYS[2])
if redis.call('XDEL', KEYS[1], ARGV[2]) == 0 then return false end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
"""


@dataclass(frozen=True, slots=True)
class FailedNotification:
    """One record of the store: its id there and what the notifier wrote."""

    id: str
    record: dict[str, Any]
    added_at: float | None = None
    """When the store took it (epoch seconds), where the store knows (a stream's entry id)."""

    @property
    def failed_at(self) -> float | None:
        """When delivery gave up (epoch seconds): the record's ``failed_at``, else when the store
        took it, else None."""
        at = self._time("failed_at")
        return self.added_at if at is None else at

    @property
    def last_failed_at(self) -> float | None:
        """When it last failed (epoch seconds): its last failed re-drive, else :attr:`failed_at`."""
        at = self._time("last_failed_at")
        return self.failed_at if at is None else at

    def _time(self, key: str) -> float | None:
        """The record's timestamp ``key`` in epoch seconds; None when missing or unreadable."""
        try:
            return epoch_s(datetime.fromisoformat(str(self.record[key])))
        except (KeyError, ValueError):
            return None

    @property
    def redrive_failures(self) -> int:
        """How many re-drives tried it and failed."""
        try:
            return max(0, int(self.record.get("redrive_failures", 0)))
        except (TypeError, ValueError):
            return 0

    def failed_again(self, error: str, at: datetime) -> FailedNotification:
        """This record after one more failed re-drive: the count, the error and the time (its
        ``error`` and ``failed_at`` stay those of the notifier's own failure)."""
        record = {
            **self.record,
            "redrive_failures": self.redrive_failures + 1,
            "last_error": error,
            "last_failed_at": at.isoformat(),
        }
        return FailedNotification(self.id, record, self.added_at)

    @property
    def tenant(self) -> str:
        """The tenant whose notification it is."""
        return str(self.record.get("tenant", ""))

    @property
    def receiver(self) -> str:
        """The receiver's name in the tenant's configuration."""
        return str(self.record.get("receiver", ""))

    @property
    def reason(self) -> str:
        """Why it was dead-lettered (``retries_exhausted``, ``rejected``, ...)."""
        return str(self.record.get("reason", ""))

    def to_json(self) -> dict[str, Any]:
        """The record with its id, as ``list --json`` prints it."""
        return {"id": self.id, **self.record}


@dataclass(frozen=True, slots=True)
class FailedFilter:
    """Chooses records; every given criterion must match (none given: every record)."""

    tenant: str | None = None
    receiver: str | None = None
    reason: str | None = None
    ids: frozenset[str] | None = None
    before: float | None = None
    """Only records that failed before this time (epoch seconds); a record without a time
    never matches, so retention cannot delete what it cannot date."""

    def __call__(self, failed: FailedNotification) -> bool:
        """True when the record matches."""
        return (
            (self.tenant is None or failed.tenant == self.tenant)
            and (self.receiver is None or failed.receiver == self.receiver)
            and (self.reason is None or failed.reason == self.reason)
            and (self.ids is None or failed.id in self.ids)
            and (self.before is None or _failed_before(failed, self.before))
        )


def _failed_before(failed: FailedNotification, cutoff: float) -> bool:
    at = failed.failed_at
    return at is not None and at < cutoff


@dataclass(frozen=True, slots=True)
class FailedSummary:
    """How many records a store holds, and its newest one (for health and metrics)."""

    count: int
    newest_at: float | None = None
    """When the newest record was written (epoch seconds), None without records."""
    newest: FailedNotification | None = None


class FailedStore(Protocol):
    """Where the notifier's dead letters are, as the operator's tools need it."""

    where: str
    """The store, for messages (a stream key or a file path)."""
    removal_batch: int
    """How many delivered records :func:`redrive` deletes in one call."""

    async def scan(
        self, matches: FailedFilter, *, limit: int | None = None
    ) -> list[FailedNotification]:
        """The matching records, oldest first (at most ``limit``)."""
        ...

    async def unreadable(self) -> int:
        """How many entries are not records at all (never touched by re-drive or drop)."""
        ...

    async def summary(self) -> FailedSummary:
        """The record count and the newest record, cheaply."""
        ...

    async def claim(self, failed_id: str, ttl_s: float) -> bool:
        """Take the record for one re-drive attempt, until :meth:`settle` or :meth:`remove`
        (or the claim expires); False when another re-drive has it or it is gone."""
        ...

    async def remove(self, ids: Sequence[str]) -> int:
        """Delete the records; how many were still there."""
        ...

    async def settle(
        self, delivered: Sequence[str], failed_again: Sequence[FailedNotification]
    ) -> tuple[int, dict[str, FailedNotification]]:
        """After attempts: delete the ``delivered`` records, and put each record of
        ``failed_again`` (by its id, as :meth:`FailedNotification.failed_again` made it) in
        place of the stored one, as the newest record, giving back this re-drive's claims.
        Returns how many delivered records were still there, and the stored records by the
        ids they had (their ids change)."""
        ...

    async def close(self) -> None:
        """Release connections and locks."""
        ...


class FailedStream:
    """The Redis stream store (``dead_letter.redis_url`` and ``dead_letter.stream``)."""

    def __init__(self, client: aioredis.Redis, key: str) -> None:
        self.client = client
        self.key = key
        self.where = key
        # One by one: a record stays claimed until it is deleted, and claims expire.
        self.removal_batch = 1
        self._token = secrets.token_hex(8)
        self._claimed: set[str] = set()
        self._bad = 0

    async def scan(
        self, matches: FailedFilter, *, limit: int | None = None
    ) -> list[FailedNotification]:
        """The matching records, oldest first."""
        found: list[FailedNotification] = []
        self._bad = 0
        if matches.ids is not None:
            # Straight to the named entries rather than through the whole stream.
            for record_id in sorted(matches.ids, key=_position):
                records, _, _ = await self._range(record_id, record_id, 1)
                found.extend(f for f in records if matches(f))
            return found[:limit] if limit is not None else found
        start = "-"
        while True:
            records, read, last = await self._range(start, "+", _PAGE)
            for failed in records:
                if matches(failed):
                    found.append(failed)
                    if limit is not None and len(found) >= limit:
                        return found
            if read < _PAGE:
                return found
            start = "(" + last

    async def unreadable(self) -> int:
        """Entries of the last full :meth:`scan` without a readable record."""
        return self._bad

    async def summary(self) -> FailedSummary:
        """XLEN and the newest entry (its id starts with the milliseconds Redis added it at)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.xlen(self.key)
        pipe.xrevrange(self.key, "+", "-", count=1)
        length, top = await pipe.execute()
        if not top:
            return FailedSummary(int(length))
        entry_id = _text(top[0][0])
        records, _, _ = await self._records_of(top)
        return FailedSummary(
            int(length), _position(entry_id)[0] / 1000.0, records[0] if records else None
        )

    async def _range(
        self, start: str, end: str, count: int
    ) -> tuple[list[FailedNotification], int, str]:
        """The records in a range, how many entries it held, and the last entry's id."""
        try:
            page: Any = await self.client.xrange(self.key, start, end, count=count)
        except aioredis.ResponseError:  # not an entry id this stream could hold
            return [], 0, start
        return await self._records_of(page, start)

    async def _records_of(
        self, page: Any, start: str = "-"
    ) -> tuple[list[FailedNotification], int, str]:
        records: list[FailedNotification] = []
        last = start
        for raw_id, fields in page:
            last = _text(raw_id)
            raw = fields.get(b"record", fields.get("record"))
            try:
                record = json.loads(raw) if raw is not None else None
            except ValueError:
                record = None
            if isinstance(record, dict):
                records.append(FailedNotification(last, record, _position(last)[0] / 1000.0))
            else:
                self._bad += 1
        return records, len(page), last

    async def claim(self, failed_id: str, ttl_s: float) -> bool:
        """``SET NX`` on ``<stream>:claim:<id>``, expiring after ``ttl_s``; then the record
        must still be there (another re-drive may have sent and deleted it since our scan)."""
        claimed = await self.client.set(
            self._claim_key(failed_id), self._token, nx=True, px=int(ttl_s * 1000)
        )
        if not claimed:
            return False
        self._claimed.add(failed_id)
        if await self.client.xrange(self.key, failed_id, failed_id, count=1):
            return True
        await self.release(failed_id)
        return False

    async def release(self, failed_id: str) -> None:
        """Give up this re-drive's claim (only its own: a claim that expired and was taken
        by another re-drive stays theirs)."""
        if failed_id in self._claimed:
            self._claimed.discard(failed_id)
            await self.client.eval(_RELEASE, 1, self._claim_key(failed_id), self._token)

    def _claim_key(self, failed_id: str) -> str:
        return f"{self.key}:claim:{failed_id}"

    async def remove(self, ids: Sequence[str]) -> int:
        """XDEL the records, then give up this re-drive's claims on them."""
        if not ids:
            return 0
        deleted = int(await self.client.xdel(self.key, *ids))
        for failed_id in ids:
            await self.release(failed_id)
        return deleted

    async def settle(
        self, delivered: Sequence[str], failed_again: Sequence[FailedNotification]
    ) -> tuple[int, dict[str, FailedNotification]]:
        """XDEL the delivered; replace each failed-again record by a new entry (one script:
        only while this re-drive's claim holds and the record is there)."""
        removed = await self.remove(delivered)
        stored: dict[str, FailedNotification] = {}
        for failed in failed_again:
            if failed.id not in self._claimed:
                continue
            self._claimed.discard(failed.id)
            fields = [
                "tenant",
                failed.tenant,
                "receiver",
                failed.receiver,
                "reason",
                failed.reason,
                "record",
                json.dumps(failed.record, separators=(",", ":"), default=str),
            ]
            new_id = await self.client.eval(
                _REPLACE, 2, self.key, self._claim_key(failed.id), self._token, failed.id, *fields
            )
            if new_id is not None:
                entry_id = _text(new_id)
                stored[failed.id] = FailedNotification(
                    entry_id, failed.record, _position(entry_id)[0] / 1000.0
                )
        return removed, stored

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()


class FailedFile:
    """The local JSONL store (``dead_letter.path``, the embedded mode).

    A record's id is the xxh3-64 digest of its line, which does not change when other lines
    are removed; two identical lines share it and are re-driven or dropped together.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        # Each call rewrites the file; the run lock keeps other re-drives out meanwhile.
        self.removal_batch = 100
        self._lock = lock_of(path)
        self._run_lock = FileLock(f"{path}.redrive.lock", thread_local=False)
        self._bad = 0

    def _read(self) -> list[tuple[str, str, dict[str, Any] | None]]:
        """Each line with its id and record (None when the line is not one)."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            return []
        except OSError as exc:
            msg = f"cannot read failed notifications from {self.path}: {exc.strerror}"
            raise SinkError(msg) from None
        rows: list[tuple[str, str, dict[str, Any] | None]] = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            rows.append(
                (
                    xxh3_64_hexdigest(line.encode("utf-8", "surrogateescape")),
                    line,
                    (record if isinstance(record, dict) else None),
                )
            )
        return rows

    async def scan(
        self, matches: FailedFilter, *, limit: int | None = None
    ) -> list[FailedNotification]:
        """The matching records, in file order (oldest first)."""
        rows = await asyncio.to_thread(self._locked_read)
        self._bad = sum(1 for _, _, record in rows if record is None)
        found = [
            failed
            for record_id, _, record in rows
            if record is not None and matches(failed := FailedNotification(record_id, record))
        ]
        return found[:limit] if limit is not None else found

    def _locked_read(self) -> list[tuple[str, str, dict[str, Any] | None]]:
        with self._lock:
            return self._read()

    async def unreadable(self) -> int:
        """Lines of the last :meth:`scan` that are not records."""
        return self._bad

    async def summary(self) -> FailedSummary:
        """The records in the file; the newest is the last, written at its ``last_failed_at``
        or ``failed_at`` (else when the file last changed)."""
        rows = await asyncio.to_thread(self._locked_read)
        records = [FailedNotification(i, r) for i, _, r in rows if r is not None]
        if not records:
            return FailedSummary(0)
        newest = records[-1]
        at = newest.last_failed_at
        return FailedSummary(len(records), self.path.stat().st_mtime if at is None else at, newest)

    async def claim(self, failed_id: str, ttl_s: float) -> bool:
        """Hold ``<file>.redrive.lock`` for the rest of this re-drive (taken once)."""
        if not self._run_lock.is_locked:
            try:
                await asyncio.to_thread(self._run_lock.acquire, timeout=0)
            except Timeout:
                msg = f"another re-drive of {self.path} is running; wait for it to finish"
                raise SinkError(msg) from None
        return True

    async def remove(self, ids: Sequence[str]) -> int:
        """Rewrite the file without those records (atomically, under the writers' lock)."""
        if not ids:
            return 0
        removed, _ = await asyncio.to_thread(self._rewrite, frozenset(ids), ())
        return removed

    async def settle(
        self, delivered: Sequence[str], failed_again: Sequence[FailedNotification]
    ) -> tuple[int, dict[str, FailedNotification]]:
        """One rewrite: without the delivered, the failed-again records moved to the end."""
        if not delivered and not failed_again:
            return 0, {}
        return await asyncio.to_thread(self._rewrite, frozenset(delivered), failed_again)

    def _rewrite(
        self, removed_ids: frozenset[str], failed_again: Sequence[FailedNotification]
    ) -> tuple[int, dict[str, FailedNotification]]:
        """Drop ``removed_ids`` and move each of ``failed_again`` that is still there to the
        end with its new record; atomically, under the writers' lock."""
        again = {failed.id: failed for failed in failed_again}
        with self._lock:
            rows = self._read()
            kept: list[str] = []
            moved: list[str] = []
            stored: dict[str, FailedNotification] = {}
            removed = 0
            for record_id, line, _ in rows:
                if record_id in removed_ids:
                    removed += 1
                elif record_id in again and record_id not in stored:
                    record = again[record_id].record
                    new_line = json.dumps(record, separators=(",", ":"), default=str)
                    new_id = xxh3_64_hexdigest(new_line.encode("utf-8", "surrogateescape"))
                    stored[record_id] = FailedNotification(new_id, record)
                    moved.append(new_line)
                else:
                    kept.append(line)
            if removed or moved:
                temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                data = "".join(f"{line}\n" for line in [*kept, *moved])
                with temp.open("w", encoding="utf-8", errors="surrogateescape") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                # A crash before this leaves the old file whole; after, the new one.
                temp.replace(self.path)
            return removed, stored

    async def close(self) -> None:
        """Release the re-drive lock if this store took it."""
        if self._run_lock.is_locked:
            self._run_lock.release()


def failed_store(config: DeadLetterConfig, *, base: Path | None = None) -> FailedStore:
    """The store the notifier's configuration names: its Redis stream, else its file
    (a relative path is taken from ``base``, else the current directory)."""
    if config.redis_url is not None:
        client = aioredis.Redis.from_url(
            config.redis_url.get_secret_value(), socket_connect_timeout=5, socket_timeout=30
        )
        return FailedStream(client, config.stream)
    path = config.path if base is None or config.path.is_absolute() else base / config.path
    return FailedFile(path)


@dataclass
class RedriveReport:
    """What one re-drive did, record by record."""

    sent: list[FailedNotification] = field(default_factory=list)
    failed: list[tuple[FailedNotification, str]] = field(default_factory=list)
    skipped: list[tuple[FailedNotification, str]] = field(default_factory=list)
    """Not tried: their receiver failed earlier in the run (kept for the next one)."""
    busy: list[FailedNotification] = field(default_factory=list)
    """Not tried: another re-drive had claimed them, or sent and deleted them already."""
    gone: int = 0
    """Records delivered but already deleted meanwhile (by a drop)."""


SenderFor = Callable[[str, str], Sender]
"""``(tenant, receiver name) -> Sender``; raises :class:`SinkError` when there is none."""


async def redrive(
    store: FailedStore,
    chosen: Sequence[FailedNotification],
    config: NotifyConfig,
    *,
    senders: SenderFor | None = None,
    clock: Clock | None = None,
) -> RedriveReport:
    """Send each chosen record once to its tenant's receiver; delete the delivered ones, and
    note on each record that fails again its count of failed re-drives, the error and when."""
    report = RedriveReport()
    now = (clock or SystemClock()).now
    down: dict[tuple[str, str], str] = {}
    delivered: list[str] = []
    failed_again: list[FailedNotification] = []

    async def settle() -> None:
        if not delivered and not failed_again:
            return
        present, stored = await store.settle(delivered, failed_again)
        report.gone += len(delivered) - present
        delivered.clear()
        failed_again.clear()
        if stored:
            report.failed = [(stored.get(f.id, f), why) for f, why in report.failed]

    async with httpx.AsyncClient(follow_redirects=False) as client:
        sender_for = senders or _senders(config, client)
        try:
            for failed in chosen:
                outcome = await _redrive_one(store, failed, config, sender_for, down, report)
                if outcome is True:
                    delivered.append(failed.id)
                elif outcome is not None:
                    failed_again.append(failed.failed_again(outcome, now()))
                if len(delivered) + len(failed_again) >= store.removal_batch:
                    await settle()
        finally:
            # Even when interrupted: what was delivered is not sent again by the next run.
            await settle()
    return report


async def _redrive_one(
    store: FailedStore,
    failed: FailedNotification,
    config: NotifyConfig,
    sender_for: SenderFor,
    down: dict[tuple[str, str], str],
    report: RedriveReport,
) -> Literal[True] | str | None:
    """Send one record once (noted in ``report``): True when its receiver took it, the error
    when it was sent and failed (the record stays claimed until it is settled), None when it
    was not sent."""
    key = (failed.tenant, failed.receiver)
    if key in down:
        report.skipped.append((failed, f"receiver {failed.receiver} failed earlier"))
        return None
    try:
        n = notification_of(failed.record)
        receiver = _receiver(config, n.tenant, n.receiver)
        timeout = config.delivery_for(receiver).timeout
        sender = sender_for(n.tenant, n.receiver)
    except SinkError as exc:
        report.failed.append((failed, str(exc)))
        return None
    if not await store.claim(failed.id, timeout + _CLAIM_MARGIN_S):
        report.busy.append(failed)
        return None
    try:
        async with asyncio.timeout(timeout):
            await sender.send(n)
    except TimeoutError:
        error = f"receiver {n.receiver}: no answer within {timeout:g}s"
    except DeliveryError as exc:
        error = str(exc)
        if not exc.transient:
            report.failed.append((failed, error))
            return error
    else:
        report.sent.append(failed)
        return True
    down[key] = error
    report.failed.append((failed, error))
    return error


def _receiver(
    config: NotifyConfig, tenant: str, name: str
) -> WebhookReceiver | NtfyReceiver | EmailReceiver:
    own = config.for_tenant(tenant)
    if own is None:
        msg = f"tenant {tenant} has no notification configuration (and there is no default)"
        raise SinkError(msg)
    with contextlib.suppress(StopIteration):
        return own.receiver(name)
    msg = f"tenant {tenant} has no receiver named {name} any more; drop the record or add it"
    raise SinkError(msg)


def _senders(config: NotifyConfig, client: httpx.AsyncClient) -> SenderFor:
    made: dict[tuple[str, str], Sender] = {}

    def sender(tenant: str, name: str) -> Sender:
        found = made.get((tenant, name))
        if found is None:
            receiver = _receiver(config, tenant, name)
            timeout = config.delivery_for(receiver).timeout
            found = made[(tenant, name)] = build_sender(receiver, client, timeout)
        return found

    return sender


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _position(record_id: str) -> tuple[int, int]:
    ms, _, seq = record_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (0, 0)
