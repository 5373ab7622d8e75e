"""Where notifications that still fail go, with their reason: a Redis stream in production,
a local JSONL file in the embedded mode, or memory (tests and notebooks).

A record holds the tenant, receiver, reason (``retries_exhausted``, ``circuit_open``,
``rejected``, ``shutdown``), the last error (scrubbed of secrets), the attempts, the alert
ids, the idempotency key and the notification as it would have been sent (already
redacted), so it can be inspected and re-driven (``rayworker failed-notifications``, with
:mod:`rayworker.notify.failed`): :func:`notification_record` writes a notification into a
record and :func:`notification_of` reads it back, with the same idempotency key.

The file store takes ``<file>.lock`` (filelock) around every append, and the re-driver takes it
around every rewrite, so records appended by a running notifier while an operator re-drives
others are never lost.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio as aioredis
from filelock import FileLock
from pydantic import SecretStr

from rayworker.errors import SinkError
from rayworker.notify.config import DeadLetterConfig
from rayworker.notify.model import Notification

__all__ = [
    "DeadLetterSink",
    "FileDeadLetters",
    "MemoryDeadLetters",
    "RedisDeadLetters",
    "dead_letter_sink",
    "lock_of",
    "notification_of",
    "notification_record",
]


def notification_record(n: Notification) -> dict[str, Any]:
    """The notification as a dead-letter record keeps it (see :func:`notification_of`)."""
    return {
        "status": n.status,
        "route": n.route,
        "flush_id": n.flush_id,
        "group_labels": n.group_labels,
        "firing": list(n.firing),
        "resolved": list(n.resolved),
        "firing_ids": list(n.firing_ids),
        "resolved_ids": list(n.resolved_ids),
        "created_at": n.created_at,
    }


def notification_of(record: dict[str, Any]) -> Notification:
    """The notification a dead-letter record holds, as it was to be sent.

    Raises :class:`~rayworker.errors.SinkError` for a record that does not hold one whole.
    Records written before ``firing_ids`` was kept name their alerts only in ``alert_ids``;
    they are read when every alert is carried in full (at most 1,000), and refused otherwise.
    """
    try:
        body = record["notification"]
        firing = tuple(dict(a) for a in body["firing"])
        resolved = tuple(dict(a) for a in body["resolved"])
        if "firing_ids" in body:
            firing_ids = tuple(str(i) for i in body["firing_ids"])
            resolved_ids = tuple(str(i) for i in body["resolved_ids"])
        else:
            alert_ids = [str(i) for i in record["alert_ids"]]
            if len(alert_ids) != len(firing) + len(resolved):
                # The alerts named by id only could be firing or resolved (the resolved are
                # cut first), and the message would say the wrong thing about them.
                msg = (
                    "it names more alerts than it carries, and it was written before records "
                    "kept which of those were firing; drop it and check the alerts with "
                    "`rayworker alerts`"
                )
                raise SinkError(msg)
            firing_ids = tuple(alert_ids[: len(alert_ids) - len(resolved)])
            resolved_ids = tuple(alert_ids[len(alert_ids) - len(resolved) :])
        return Notification(
            tenant=str(record["tenant"]),
            receiver=str(record["receiver"]),
            route=int(body.get("route", -1)),
            group_key=str(record["group_key"]),
            group_labels={str(k): str(v) for k, v in body["group_labels"].items()},
            firing=firing,
            resolved=resolved,
            idempotency_key=str(record["idempotency_key"]),
            flush_id=int(body.get("flush_id", -1)),
            created_at=float(body["created_at"]),
            firing_ids=firing_ids,
            resolved_ids=resolved_ids,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        msg = f"the record does not hold a whole notification ({type(exc).__name__}: {exc})"
        raise SinkError(msg) from None


def lock_of(path: Path) -> FileLock:
    """The lock a file store's writers and its re-driver share (``<file>.lock``)."""
    return FileLock(f"{path}.lock", thread_local=False)


class DeadLetterSink(Protocol):
    """Keeps failed notifications."""

    async def put(self, record: dict[str, Any]) -> None:
        """Store one record (raise on failure; the caller counts it)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class MemoryDeadLetters:
    """The latest ``maxlen`` records in memory."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self.records: deque[dict[str, Any]] = deque(maxlen=maxlen)

    async def put(self, record: dict[str, Any]) -> None:
        """Keep the record."""
        self.records.append(record)

    async def close(self) -> None:
        """Nothing to release."""


class FileDeadLetters:
    """One JSON object per line appended to a local file (the embedded default)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()
        self._file_lock = lock_of(path)

    def _append(self, line: str) -> None:
        # Under the shared lock: a re-drive that rewrites the file cannot lose this line.
        with self._file_lock, self.path.open("a", encoding="utf-8") as out:
            out.write(line)

    async def put(self, record: dict[str, Any]) -> None:
        """Append the record (off the event loop)."""
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        async with self._lock:
            await asyncio.to_thread(self._append, line)

    async def close(self) -> None:
        """Nothing to release."""


class RedisDeadLetters:
    """XADD to a stream, trimmed to about ``maxlen`` entries."""

    def __init__(self, url: SecretStr, stream: str, maxlen: int) -> None:
        self.stream = stream
        self.maxlen = maxlen
        self._client = aioredis.Redis.from_url(url.get_secret_value(), socket_timeout=5)

    async def put(self, record: dict[str, Any]) -> None:
        """Add the record as one stream entry."""
        fields: dict[bytes | bytearray | memoryview[int] | str | int | float, Any] = {
            "tenant": str(record.get("tenant", "")),
            "receiver": str(record.get("receiver", "")),
            "reason": str(record.get("reason", "")),
            "record": json.dumps(record, separators=(",", ":"), default=str),
        }
        await self._client.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def dead_letter_sink(config: DeadLetterConfig) -> DeadLetterSink:
    """The sink the configuration names: Redis when ``redis_url`` is set, else the file."""
    if config.redis_url is not None:
        return RedisDeadLetters(config.redis_url, config.stream, config.maxlen)
    return FileDeadLetters(config.path)
