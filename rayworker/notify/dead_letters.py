"""Where notifications that still fail go, with their reason: a Redis stream in production,
a local JSONL file in the embedded mode, or memory (tests and notebooks).

A record holds the tenant, receiver, reason (``retries_exhausted``, ``circuit_open``,
``rejected``, ``shutdown``), the last error (scrubbed of secrets), the attempts, the alert
ids, the idempotency key and the notification as it would have been sent (already
redacted), so it can be inspected and re-driven.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio as aioredis
from pydantic import SecretStr

from rayworker.notify.config import DeadLetterConfig

__all__ = [
    "DeadLetterSink",
    "FileDeadLetters",
    "MemoryDeadLetters",
    "RedisDeadLetters",
    "dead_letter_sink",
]


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

    def _append(self, line: str) -> None:
        with self.path.open("a", encoding="utf-8") as out:
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
