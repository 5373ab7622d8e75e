"""Ingest adapters: where audit events enter the pipeline (Redis Streams)."""

from __future__ import annotations

from rayworker.ingest.redis_streams import (
    BAD_ENTRY,
    ConsumerHealth,
    IngestError,
    StreamConsumer,
    StreamEntry,
    StreamLag,
    StreamProducer,
)

__all__ = [
    "BAD_ENTRY",
    "ConsumerHealth",
    "IngestError",
    "StreamConsumer",
    "StreamEntry",
    "StreamLag",
    "StreamProducer",
]
