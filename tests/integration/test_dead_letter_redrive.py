"""`rayworker dead-letters`: the operator's view of the event dead-letter stream, on real Redis.

Records are written by the pipeline's own writer (``StreamConsumer.dead_letter``), then listed,
counted and re-driven through the command line, as an operator would.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from rayworker.cli import main
from rayworker.events import Rejection, RejectReason
from rayworker.ingest.dead_letters import DeadLetterFilter, DeadLetterStream
from rayworker.ingest.redis_streams import StreamConsumer

pytestmark = pytest.mark.integration

_LINES = {
    "t1-bad": (b'{"broken', RejectReason.MALFORMED_JSON, "t1"),
    "t1-future": (
        b'{"organizationId":"t1","timestamp":"2099-01-01T00:00:00Z"}',
        RejectReason.FUTURE_TIMESTAMP,
        "t1",
    ),
    "t2-future": (
        b'{"organizationId":"t2","timestamp":"2099-01-01T00:00:00Z"}',
        RejectReason.FUTURE_TIMESTAMP,
        "t2",
    ),
    "t2-binary": (b'{"organizationId":"t2","x":"\xff"}', RejectReason.MALFORMED_JSON, "t2"),
}


@pytest.fixture
def streams(live_redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Fresh input and dead-letter streams named in the environment, deleted afterwards."""
    token = secrets.token_hex(5)
    names = {"input": f"rwtest:{token}:events", "dead": f"rwtest:{token}:dead"}
    monkeypatch.setenv("RAYWORKER_STREAM_URL", live_redis_url)
    monkeypatch.setenv("RAYWORKER_STREAM_KEY", names["input"])
    monkeypatch.setenv("RAYWORKER_DEAD_LETTER_STREAM", names["dead"])

    async def seed() -> None:
        client = aioredis.Redis.from_url(live_redis_url)
        try:
            consumer = StreamConsumer(
                client,
                stream=names["input"],
                group="g",
                consumer="c",
                dead_letter_stream=names["dead"],
            )
            rejections = [
                Rejection(reason, None, f"{name} is bad", raw, i, tenant)
                for i, (name, (raw, reason, tenant)) in enumerate(_LINES.items())
            ]
            await consumer.dead_letter(rejections, source_entries=["1-0", "2-0", "3-0", "4-0"])
        finally:
            await client.aclose()

    asyncio.run(seed())
    yield names

    async def clean() -> None:
        client = aioredis.Redis.from_url(live_redis_url)
        try:
            await client.delete(names["input"], names["dead"])
        finally:
            await client.aclose()

    asyncio.run(clean())


def _redis(url: str, work: Any) -> Any:
    async def run() -> Any:
        client = aioredis.Redis.from_url(url)
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(run())


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_list_filters_by_tenant_and_reason_and_keeps_payload_bytes(
    streams: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`list --tenant` shows that tenant's records only, oldest first, with reason, entry and
    the exact payload (base64 when it is not UTF-8); `--reason` narrows further."""
    assert main(["dead-letters", "list", "--tenant", "t2", "--json"]) == 0
    records = _json_lines(capsys.readouterr().out)
    assert [r["tenant"] for r in records] == ["t2", "t2"]
    assert [r["entry"] for r in records] == ["3-0", "4-0"]
    assert records[0]["payload"] == _LINES["t2-future"][0].decode()
    assert "payload" not in records[1]
    assert main(["dead-letters", "list", "--reason", "malformed_json", "--json"]) == 0
    malformed = _json_lines(capsys.readouterr().out)
    assert [r["message"] for r in malformed] == ["t1-bad is bad", "t2-binary is bad"]


def test_stats_counts_records_by_tenant_and_reason(
    streams: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`stats --json` gives one count per (tenant, reason)."""
    assert main(["dead-letters", "stats", "--json"]) == 0
    counts = {(r["tenant"], r["reason"]): r["count"] for r in _json_lines(capsys.readouterr().out)}
    assert counts == {
        ("t1", "malformed_json"): 1,
        ("t1", "future_timestamp"): 1,
        ("t2", "future_timestamp"): 1,
        ("t2", "malformed_json"): 1,
    }


def test_redrive_moves_one_tenants_records_back_and_leaves_the_others(
    streams: dict[str, str], live_redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`redrive --tenant t2` appends exactly t2's two payloads to the input stream as
    one-event entries and deletes their records; t1's records stay; a dry run moves nothing."""
    assert main(["dead-letters", "redrive", "--tenant", "t2", "--dry-run"]) == 0
    assert "would re-drive 2" in capsys.readouterr().out
    assert _redis(live_redis_url, lambda c: c.xlen(streams["input"])) == 0
    assert main(["dead-letters", "redrive", "--tenant", "t2"]) == 0
    assert "re-drove 2 dead letters" in capsys.readouterr().out
    entries = _redis(live_redis_url, lambda c: c.xrange(streams["input"]))
    assert [fields for _, fields in entries] == [
        {b"event": _LINES["t2-future"][0]},
        {b"event": _LINES["t2-binary"][0]},
    ]
    left = _redis(live_redis_url, lambda c: c.xrange(streams["dead"]))
    assert [fields[b"tenant"] for _, fields in left] == [b"t1", b"t1"]


def test_a_record_is_redriven_once_even_when_asked_twice(
    streams: dict[str, str], live_redis_url: str
) -> None:
    """Re-driving the same record twice (two operators, say) appends its event once."""

    async def twice(client: aioredis.Redis) -> tuple[int, int, int]:
        stream = DeadLetterStream(client, streams["dead"])
        [first] = [letter async for letter in stream.scan(DeadLetterFilter(tenant="t1"), limit=1)]
        a = await stream.redrive([first.id], stream=streams["input"])
        b = await stream.redrive([first.id, first.id], stream=streams["input"])
        return a, b, await client.xlen(streams["input"])

    assert _redis(live_redis_url, twice) == (1, 0, 1)


def test_redrive_without_a_choice_is_a_usage_error(streams: dict[str, str]) -> None:
    """A bare `redrive` (which would move everything) exits 2 and moves nothing."""
    assert main(["dead-letters", "redrive"]) == 2
    assert main(["dead-letters", "redrive", "--all", "--tenant", "t1"]) == 2


def test_drop_deletes_the_chosen_records_and_redrives_nothing(
    streams: dict[str, str], live_redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`drop --reason malformed_json` deletes those two records only and adds nothing to the
    input stream; its dry run deletes nothing."""
    assert main(["dead-letters", "drop", "--reason", "malformed_json", "--dry-run"]) == 0
    assert "would delete 2 dead letters" in capsys.readouterr().out
    assert _redis(live_redis_url, lambda c: c.xlen(streams["dead"])) == 4
    assert main(["dead-letters", "drop", "--reason", "malformed_json"]) == 0
    assert "deleted 2 dead letters" in capsys.readouterr().out
    left = _redis(live_redis_url, lambda c: c.xrange(streams["dead"]))
    assert [fields[b"reason"] for _, fields in left] == [b"future_timestamp"] * 2
    assert _redis(live_redis_url, lambda c: c.xlen(streams["input"])) == 0


def test_trim_deletes_records_older_than_the_age_only(
    streams: dict[str, str], live_redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`trim --older-than 1d` deletes a record added long ago and keeps two fresh ones; its
    dry run counts the old one and deletes nothing."""

    async def old_then_new(client: aioredis.Redis) -> None:
        dead = streams["dead"]
        await client.delete(dead)
        # An id is the time a record was added: 1 ms after the epoch is surely older than 1d.
        await client.xadd(dead, {"reason": "late", "payload": b"{}"}, id="1-0")
        for _ in range(2):
            await client.xadd(dead, {"reason": "late", "payload": b"{}"})

    _redis(live_redis_url, old_then_new)
    assert main(["dead-letters", "trim", "--older-than", "1d", "--dry-run"]) == 0
    assert "would delete 1 dead letter added before" in capsys.readouterr().out
    assert _redis(live_redis_url, lambda c: c.xlen(streams["dead"])) == 3
    assert main(["dead-letters", "trim", "--older-than", "1d"]) == 0
    assert "deleted 1 dead letter added before" in capsys.readouterr().out
    assert _redis(live_redis_url, lambda c: c.xlen(streams["dead"])) == 2


def test_older_than_chooses_records_by_when_they_were_added(
    streams: dict[str, str], live_redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`list --older-than` shows only the records added before then, and `redrive
    --older-than --tenant` moves only that tenant's old ones back to the input stream."""

    async def old_then_new(client: aioredis.Redis) -> None:
        # Ids are the time a record was added: the first two are from 1 ms after the epoch.
        dead = streams["dead"]
        await client.delete(dead)
        for seq, tenant in enumerate(("t1", "t2")):
            fields = {"reason": "late", "tenant": tenant, "payload": f'{{"o":"{tenant}"}}'}
            await client.xadd(dead, fields, id=f"1-{seq + 1}")
        for tenant in ("t1", "t2"):
            await client.xadd(dead, {"reason": "late", "tenant": tenant, "payload": b"{}"})

    _redis(live_redis_url, old_then_new)
    capsys.readouterr()
    assert main(["dead-letters", "list", "--older-than", "1d", "--json"]) == 0
    assert [r["id"] for r in _json_lines(capsys.readouterr().out)] == ["1-1", "1-2"]

    redrive = ["dead-letters", "redrive", "--older-than", "1d", "--tenant", "t2"]
    assert main(redrive) == 0
    moved = _redis(live_redis_url, lambda c: c.xrange(streams["input"]))
    assert [fields[b"event"] for _, fields in moved] == [b'{"o":"t2"}']
    assert _redis(live_redis_url, lambda c: c.xlen(streams["dead"])) == 3
    assert main(["dead-letters", "drop", "--older-than", "1d"]) == 0
    assert _redis(live_redis_url, lambda c: c.xlen(streams["dead"])) == 2
    assert main(["dead-letters", "drop", "--all", "--older-than", "1d"]) == 2


def test_trim_refuses_an_age_it_cannot_read(capsys: pytest.CaptureFixture[str]) -> None:
    """An age without a unit is a usage error that shows the accepted forms."""
    assert main(["dead-letters", "trim", "--older-than", "30"]) == 2
    assert "30d, 12h, 90m" in capsys.readouterr().err


def test_a_malformed_record_id_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """`--id` that is not a stream id exits 2 showing what one looks like."""
    assert main(["dead-letters", "redrive", "--id", "abc"]) == 2
    assert "a record id looks like" in capsys.readouterr().err


def test_list_prints_each_record_on_its_own_lines(
    streams: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --json, each record is a heading line (id, time, tenant, reason, source entry),
    then its message and its payload, unfolded on an 80-column terminal."""
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["dead-letters", "list", "--tenant", "t1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    assert lines[0].endswith("  t1  malformed_json  from entry 1-0")
    assert lines[1:3] == ["    t1-bad is bad", '    {"broken']
    assert lines[3].endswith("  t1  future_timestamp  from entry 2-0")
