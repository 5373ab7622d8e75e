"""`rayworker failed-notifications`: notifications the notifier could not deliver, re-sent to
a real HTTP receiver from a real Redis stream or a local file, with the same body and
idempotency key, each record deleted only once its receiver took it."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from rayworker.cli import main
from rayworker.clock import Clock, FixedClock, SystemClock
from rayworker.errors import SinkError
from rayworker.health import Status
from rayworker.notify import NotifyConfig, parse_notify_config
from rayworker.notify.dead_letters import (
    FileDeadLetters,
    dead_letter_sink,
    notification_of,
    notification_record,
)
from rayworker.notify.delivery import Deliverer
from rayworker.notify.failed import FailedFile, FailedFilter, FailedStream, failed_store, redrive
from rayworker.notify.model import Notification
from rayworker.notify.receivers import build_sender
from rayworker.pipeline.app import Pipeline
from rayworker.serve_app import build_probes
from rayworker.settings import load_settings
from tests.integration.http_receiver import HttpReceiver
from tests.integration.test_notify_receivers import SECRET
from tests.unit.test_notify_dispatch import make_alert

NOW = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables print whole lines, so messages can be matched."""
    monkeypatch.setenv("COLUMNS", "300")


def notification(tenant: str, i: int, *, resolved: int = 0) -> Notification:
    """A notification of one firing alert (and ``resolved`` resolved ones) for ``tenant``."""
    return Notification(
        tenant=tenant,
        receiver="hook",
        route=0,
        group_key=f"{tenant}-grp-{i}",
        group_labels={"rule_id": "failed_auth"},
        firing=(make_alert(i, tenant=tenant),),
        resolved=tuple(make_alert(100 + k, tenant=tenant) for k in range(resolved)),
        idempotency_key=f"{tenant}-key-{i}",
        flush_id=i,
        created_at=NOW.timestamp(),
    )


def config_data(url: str, dead_letter: dict[str, Any], hook: str = "hook") -> dict[str, Any]:
    """Two tenants whose webhooks post to ``url``/<tenant>, one attempt each, quick timeouts."""
    tenants = {
        tenant: {
            "receivers": [
                {"name": hook, "type": "webhook", "url": f"{url}/{tenant}", "secret": SECRET}
            ],
            "routes": [{"receivers": [hook]}],
        }
        for tenant in ("org-1", "org-2")
    }
    return {
        "tenants": tenants,
        "delivery": {"timeout": "2s", "max_attempts": 1, "breaker_failures": 100},
        "dead_letter": dead_letter,
    }


@pytest.fixture(params=["file", "redis"])
def dead_letter(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The notifier's dead-letter store: a local file, or a fresh stream on the real Redis."""
    if request.param == "file":
        yield {"path": str(tmp_path / "failed.jsonl")}
        return
    url = request.getfixturevalue("live_redis_url")
    stream = f"rayworker:test-failed-notifications:{secrets.token_hex(4)}"
    yield {"redis_url": url, "stream": stream}

    async def clean() -> None:
        client = aioredis.Redis.from_url(url)
        try:
            keys = [k async for k in client.scan_iter(match=f"{stream}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    asyncio.run(clean())


def fail_to_deliver(
    cfg: NotifyConfig, notifications: list[Notification], clock: Clock | None = None
) -> None:
    """Deliver through the real delivery path; the receiver refuses, so each is dead-lettered
    (at ``clock``'s time, else now)."""

    async def run() -> None:
        sink = dead_letter_sink(cfg.dead_letter)
        async with httpx.AsyncClient() as client:

            def sender(tenant: str, receiver: str) -> Any:
                own = cfg.for_tenant(tenant)
                assert own is not None
                return build_sender(own.receiver(receiver), client, 2.0)

            deliverer = Deliverer(cfg, sender, sink, clock or SystemClock())
            for n in notifications:
                assert not await deliverer.deliver(n)
        await sink.close()

    asyncio.run(run())


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """The config as the CLI reads it."""
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def listed(config_file: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> list[Any]:
    """`failed-notifications list --json`, parsed."""
    capsys.readouterr()
    assert (
        main(["failed-notifications", "list", "--notify", str(config_file), "--json", *extra]) == 0
    )
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_record_holds_the_notification_whole() -> None:
    """A dead-letter record gives back the very notification that failed."""
    n = notification("org-1", 1, resolved=2)
    record = {
        "tenant": n.tenant,
        "receiver": n.receiver,
        "idempotency_key": n.idempotency_key,
        "group_key": n.group_key,
        "alert_ids": n.alert_ids,
        "notification": notification_record(n),
    }
    assert notification_of(json.loads(json.dumps(record))) == n


def test_older_records_are_read_when_unambiguous() -> None:
    """A record without firing_ids is read when every alert is carried in full, and refused
    with a fix when some are named by id only (firing or resolved: it cannot tell)."""
    n = notification("org-1", 1, resolved=1)
    body = notification_record(n)
    del body["firing_ids"], body["resolved_ids"], body["route"], body["flush_id"]
    record = {
        "tenant": "org-1",
        "receiver": "hook",
        "idempotency_key": n.idempotency_key,
        "group_key": n.group_key,
        "alert_ids": n.alert_ids,
        "notification": body,
    }
    back = notification_of(record)
    assert (back.firing_ids, back.resolved_ids) == (n.firing_ids, n.resolved_ids)
    record["alert_ids"] = [*n.alert_ids, "alert-not-carried"]
    with pytest.raises(SinkError, match="drop it"):
        notification_of(record)
    with pytest.raises(SinkError, match="whole notification"):
        notification_of({"tenant": "org-1"})


def test_redrive_sends_the_same_body_once_and_deletes_only_that_record(
    http_receiver: Callable[..., HttpReceiver],
    dead_letter: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Re-driving org-1 sends org-1's notification once more, byte for byte as it first
    failed (same idempotency key), deletes its record, and leaves org-2's alone."""
    receiver = http_receiver([503, 503])
    data = config_data(receiver.url, dead_letter)
    cfg = parse_notify_config(data)
    fail_to_deliver(cfg, [notification("org-1", 1), notification("org-2", 2)])
    first = {r.path: r.body for r in receiver.requests}
    config_file = write_config(tmp_path / "notify.json", data)

    records = listed(config_file, capsys)
    assert [(r["tenant"], r["reason"]) for r in records] == [
        ("org-1", "retries_exhausted"),
        ("org-2", "retries_exhausted"),
    ]
    dry = ["failed-notifications", "redrive", "--notify", str(config_file), "--tenant", "org-1"]
    assert main([*dry, "--dry-run"]) == 0
    assert len(receiver.requests) == 2

    assert main(dry) == 0
    assert "sent 1 failed notification again" in capsys.readouterr().out
    again = receiver.requests[2:]
    assert [r.path for r in again] == ["/org-1"]
    assert again[0].body == first["/org-1"]
    assert again[0].headers["Idempotency-Key"] == "org-1-key-1"
    assert [r["tenant"] for r in listed(config_file, capsys)] == ["org-2"]


def test_a_receiver_still_down_keeps_every_record_and_is_tried_once(
    http_receiver: Callable[..., HttpReceiver],
    dead_letter: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """When the receiver fails again, the record stays, the run exits 1 naming the error,
    and the receiver's other records are skipped rather than each waiting for it."""
    receiver = http_receiver([503] * 10)
    data = config_data(receiver.url, dead_letter)
    fail_to_deliver(parse_notify_config(data), [notification("org-1", i) for i in range(3)])
    config_file = write_config(tmp_path / "notify.json", data)
    before = len(receiver.requests)

    assert main(["failed-notifications", "redrive", "--notify", str(config_file), "--all"]) == 1
    out = capsys.readouterr().out
    assert "503" in out
    assert "failed earlier" in out
    assert len(receiver.requests) == before + 1
    assert len(listed(config_file, capsys)) == 3


def test_a_record_that_fails_again_counts_its_failed_redrives_and_becomes_the_newest(
    http_receiver: Callable[..., HttpReceiver],
    dead_letter: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each failed re-drive adds one to the record's redrive_failures with its error and time,
    keeps the notifier's own error and failed_at, and moves it after the other records (under
    the id the command printed), so health warns of a fresh failure and says it was re-driven."""
    receiver = http_receiver([503, 503, 500, 502])
    data = config_data(receiver.url, dead_letter)
    fail_to_deliver(parse_notify_config(data), [notification("org-1", 1), notification("org-2", 2)])
    config_file = write_config(tmp_path / "notify.json", data)
    first, second = listed(config_file, capsys)
    redrive_first = ["failed-notifications", "redrive", "--notify", str(config_file), "--tenant"]

    assert main([*redrive_first, "org-1"]) == 1
    printed = capsys.readouterr().out
    after = listed(config_file, capsys)
    assert [r["idempotency_key"] for r in after] == ["org-2-key-2", "org-1-key-1"]
    again = after[1]
    assert again["id"] != first["id"]
    assert again["id"] in printed
    assert again["redrive_failures"] == 1
    assert "500" in again["last_error"]
    assert (again["error"], again["failed_at"]) == (first["error"], first["failed_at"])
    assert again["last_failed_at"] >= first["failed_at"]
    assert after[0] == second

    assert main([*redrive_first, "org-1"]) == 1
    capsys.readouterr()
    twice = listed(config_file, capsys)[1]
    assert twice["redrive_failures"] == 2
    assert "502" in twice["last_error"]
    assert main(["failed-notifications", "list", "--notify", str(config_file)]) == 0
    assert "2 re-drives failed, the last at" in capsys.readouterr().out

    async def newest() -> str | None:
        store = failed_store(parse_notify_config(data).dead_letter)
        try:
            found = (await store.summary()).newest
            return None if found is None else found.id
        finally:
            await store.close()

    assert asyncio.run(newest()) == twice["id"]
    settings = load_settings(None, notify_path=config_file, source="jsonl")
    health = asyncio.run(build_probes(settings)["failed_notifications"]())
    assert health.status is Status.WARNING
    assert "tenant org-1, receiver hook, 2 re-drives failed" in health.message


def test_a_receiver_gone_from_the_config_keeps_the_record(
    http_receiver: Callable[..., HttpReceiver],
    dead_letter: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A record whose receiver no longer exists is not sent anywhere else: it stays, and the
    message says how to deal with it."""
    receiver = http_receiver([503])
    fail_to_deliver(
        parse_notify_config(config_data(receiver.url, dead_letter)), [notification("org-1", 1)]
    )
    config_file = write_config(
        tmp_path / "notify.json", config_data(receiver.url, dead_letter, hook="renamed")
    )
    assert main(["failed-notifications", "redrive", "--notify", str(config_file), "--all"]) == 1
    assert "no receiver named hook" in capsys.readouterr().out
    assert len(receiver.requests) == 1
    assert len(listed(config_file, capsys)) == 1


def test_drop_deletes_only_the_chosen_records(
    http_receiver: Callable[..., HttpReceiver],
    dead_letter: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`drop --id` deletes that record without sending it; `stats` counts what is left."""
    receiver = http_receiver([503, 503, 503])
    data = config_data(receiver.url, dead_letter)
    fail_to_deliver(
        parse_notify_config(data),
        [notification("org-1", 1), notification("org-1", 2), notification("org-2", 3)],
    )
    config_file = write_config(tmp_path / "notify.json", data)
    first = listed(config_file, capsys)[0]

    args = ["failed-notifications", "drop", "--notify", str(config_file), "--id", first["id"]]
    assert main(args) == 0
    assert "deleted 1 failed notification" in capsys.readouterr().out
    assert main(["failed-notifications", "stats", "--notify", str(config_file), "--json"]) == 0
    counts = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted((c["tenant"], c["count"]) for c in counts) == [("org-1", 1), ("org-2", 1)]
    assert len(receiver.requests) == 3


def test_older_than_chooses_records_by_when_they_failed(
    http_receiver: Callable[..., HttpReceiver],
    dead_letter: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`list --older-than` shows only records that failed before then, `trim --older-than`
    deletes exactly those, and `redrive --older-than` sends only the old ones left."""
    receiver = http_receiver([503] * 4 + [200])
    data = config_data(receiver.url, dead_letter)
    cfg = parse_notify_config(data)
    now = datetime.now(UTC)
    fail_to_deliver(cfg, [notification("org-1", 1)], FixedClock(now - timedelta(days=10)))
    fail_to_deliver(cfg, [notification("org-2", 2)], FixedClock(now - timedelta(days=3)))
    fail_to_deliver(cfg, [notification("org-1", 3), notification("org-2", 4)])
    config_file = write_config(tmp_path / "notify.json", data)

    old = listed(config_file, capsys, "--older-than", "2d")
    assert [r["idempotency_key"] for r in old] == ["org-1-key-1", "org-2-key-2"]
    trim = ["failed-notifications", "trim", "--notify", str(config_file), "--older-than"]
    assert main([*trim, "7d", "--dry-run"]) == 0
    assert "would delete 1 failed notification (dry run)" in capsys.readouterr().out
    assert main([*trim, "7d"]) == 0
    assert "deleted 1 failed notification that failed before" in capsys.readouterr().out
    assert [r["idempotency_key"] for r in listed(config_file, capsys)] == [
        "org-2-key-2",
        "org-1-key-3",
        "org-2-key-4",
    ]

    redrive_old = ["failed-notifications", "redrive", "--notify", str(config_file)]
    assert main([*redrive_old, "--older-than", "1d"]) == 0
    assert json.loads(receiver.requests[-1].body)["idempotency_key"] == "org-2-key-2"
    assert [r["idempotency_key"] for r in listed(config_file, capsys)] == [
        "org-1-key-3",
        "org-2-key-4",
    ]
    assert main([*trim, "soon"]) == 2
    assert "give an age such as 30d" in capsys.readouterr().err


def test_two_redrives_at_once_send_each_record_once(
    http_receiver: Callable[..., HttpReceiver], live_redis_url: str
) -> None:
    """Two operators re-driving the same stream at once: every record reaches the receiver
    exactly once, because each is claimed before it is sent."""
    receiver = http_receiver([503] * 8)
    stream = f"rayworker:test-failed-notifications:{secrets.token_hex(4)}"
    cfg = parse_notify_config(
        config_data(receiver.url, {"redis_url": live_redis_url, "stream": stream})
    )
    fail_to_deliver(cfg, [notification(f"org-{1 + i % 2}", i) for i in range(8)])

    async def run() -> tuple[int, int]:
        stores = [failed_store(cfg.dead_letter), failed_store(cfg.dead_letter)]
        try:
            chosen = [await s.scan(FailedFilter()) for s in stores]
            reports = await asyncio.gather(
                *(redrive(s, c, cfg) for s, c in zip(stores, chosen, strict=True))
            )
            left = await stores[0].scan(FailedFilter())
        finally:
            for s in stores:
                await s.close()
            client = aioredis.Redis.from_url(live_redis_url)
            keys = [k async for k in client.scan_iter(match=f"{stream}*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()
        return sum(len(r.sent) for r in reports), len(left)

    sent, left = asyncio.run(run())
    assert (sent, left) == (8, 0)
    assert len(receiver.requests) == 16
    assert sorted(r.headers["Idempotency-Key"] for r in receiver.requests[8:]) == sorted(
        f"org-{1 + i % 2}-key-{i}" for i in range(8)
    )


def test_a_second_redrive_of_the_same_file_is_refused(tmp_path: Path) -> None:
    """While one re-drive holds a file store, another says so instead of sending twice."""
    path = tmp_path / "failed.jsonl"
    path.write_text(json.dumps({"tenant": "org-1", "receiver": "hook"}) + "\n")

    async def run() -> None:
        first, second = FailedFile(path), FailedFile(path)
        try:
            assert await first.claim("x", 1.0)
            with pytest.raises(SinkError, match="another re-drive"):
                await second.claim("x", 1.0)
        finally:
            await first.close()
            await second.close()

    asyncio.run(run())


def test_records_appended_while_the_file_is_rewritten_are_kept(tmp_path: Path) -> None:
    """A running notifier appending while the operator deletes records loses nothing: the
    writer and the rewrite share the file's lock."""
    path = tmp_path / "failed.jsonl"
    old = [{"tenant": "org-1", "receiver": "hook", "n": i} for i in range(200)]
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in old))

    def append() -> None:
        async def run() -> None:
            sink = FileDeadLetters(path)
            for i in range(300):
                await sink.put({"tenant": "org-2", "receiver": "hook", "n": i})

        asyncio.run(run())

    async def delete_old() -> None:
        store = FailedFile(path)
        for failed in await store.scan(FailedFilter(tenant="org-1")):
            await store.remove([failed.id])

    writer = threading.Thread(target=append)
    writer.start()
    asyncio.run(delete_old())
    writer.join()
    left = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["n"] for r in left if r["tenant"] == "org-2") == list(range(300))
    assert not [r for r in left if r["tenant"] == "org-1"]


def test_unreadable_lines_are_counted_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A torn line in the file is reported by `stats` and survives a drop of everything."""
    path = tmp_path / "failed.jsonl"
    good = json.dumps({"tenant": "org-1", "receiver": "hook", "reason": "shutdown"})
    path.write_text(f"{good}\n{{torn\n")
    config_file = write_config(
        tmp_path / "notify.json", config_data("http://127.0.0.1:9", {"path": str(path)})
    )
    assert main(["failed-notifications", "stats", "--notify", str(config_file)]) == 0
    assert "1 entries are not records" in capsys.readouterr().out
    assert main(["failed-notifications", "drop", "--notify", str(config_file), "--all"]) == 0
    assert path.read_text() == "{torn\n"


def test_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bare redrive or drop exits 2; without any notification config the command exits 1
    saying where to give one."""
    monkeypatch.delenv("RAYWORKER_NOTIFY_PATH", raising=False)
    monkeypatch.delenv("RAYWORKER_CONFIG", raising=False)
    assert main(["failed-notifications", "redrive", "--notify", "x.json"]) == 2
    assert main(["failed-notifications", "drop", "--all", "--tenant", "org-1"]) == 2
    capsys.readouterr()
    assert main(["failed-notifications", "list"]) == 1
    assert "pass --notify FILE" in capsys.readouterr().err


def test_stream_store_reads_by_id(live_redis_url: str) -> None:
    """`--id` reads the named entries straight away, and a malformed id matches nothing."""
    stream = f"rayworker:test-failed-notifications:{secrets.token_hex(4)}"

    async def run() -> tuple[list[str], list[str]]:
        client = aioredis.Redis.from_url(live_redis_url)
        store = FailedStream(client, stream)
        try:
            ids = [
                (await client.xadd(stream, {"record": json.dumps({"tenant": f"org-{i}"})})).decode()
                for i in range(3)
            ]
            found = await store.scan(FailedFilter(ids=frozenset([ids[2], ids[0]])))
            none = await store.scan(FailedFilter(ids=frozenset(["not-an-id"])))
            await client.delete(stream)
        finally:
            await store.close()
        return [f.tenant for f in found], [f.id for f in none]

    assert asyncio.run(run()) == (["org-0", "org-2"], [])


def test_pipeline_and_cli_find_a_relative_file_store_in_the_same_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative dead_letter.path is resolved where rayworker runs, before the notifier actor
    (whose working directory may differ) gets it, so the CLI run there finds its records."""
    monkeypatch.chdir(tmp_path)
    config_file = write_config(
        tmp_path / "notify.json", config_data("http://127.0.0.1:9", {"path": "failed.jsonl"})
    )
    pipeline = Pipeline(load_settings(None, notify_path=config_file))
    assert pipeline.notify_config is not None
    assert pipeline.notify_config.dead_letter.path == tmp_path / "failed.jsonl"
    store = failed_store(parse_notify_config(json.loads(config_file.read_text())).dead_letter)
    assert Path(store.where).resolve() == tmp_path / "failed.jsonl"


def test_health_grades_failed_notifications_by_their_newest(
    http_receiver: Callable[..., HttpReceiver], dead_letter: dict[str, Any], tmp_path: Path
) -> None:
    """/readyz's failed_notifications: OK while the store is empty; WARNING naming tenant,
    receiver and reason right after a notification fails; OK again (with the count) once
    the newest is older than dead_letter_recent_s."""
    receiver = http_receiver([503])
    data = config_data(receiver.url, dead_letter)
    config_file = write_config(tmp_path / "notify.json", data)
    settings = load_settings(None, notify_path=config_file, source="jsonl")
    probe = build_probes(settings)["failed_notifications"]
    assert asyncio.run(probe()).status is Status.OK

    fail_to_deliver(parse_notify_config(data), [notification("org-2", 1)])
    recent = asyncio.run(probe())
    assert recent.status is Status.WARNING
    assert "tenant org-2, receiver hook" in recent.message
    assert recent.detail["length"] == 1

    later = load_settings(
        None, notify_path=config_file, source="jsonl", health={"dead_letter_recent_s": 0.001}
    )
    old = asyncio.run(build_probes(later)["failed_notifications"]())
    assert (old.status, old.detail["length"]) == (Status.OK, 1)


def test_redrive_all_sends_every_record_and_empties_the_store(
    http_receiver: Callable[..., HttpReceiver],
    dead_letter: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`redrive --all` with the receiver back: every record is sent once, in order, and the
    store is left empty."""
    receiver = http_receiver([503] * 5)
    data = config_data(receiver.url, dead_letter)
    fail_to_deliver(parse_notify_config(data), [notification("org-1", i) for i in range(5)])
    config_file = write_config(tmp_path / "notify.json", data)

    assert main(["failed-notifications", "redrive", "--notify", str(config_file), "--all"]) == 0
    assert "sent 5 failed notifications again" in capsys.readouterr().out
    keys = [r.headers["Idempotency-Key"] for r in receiver.requests[5:]]
    assert keys == [f"org-1-key-{i}" for i in range(5)]
    assert listed(config_file, capsys) == []


def test_an_interrupted_redrive_still_deletes_what_it_delivered(
    http_receiver: Callable[..., HttpReceiver], dead_letter: dict[str, Any]
) -> None:
    """A re-drive stopped after two deliveries (Ctrl-C) deletes those two records and keeps
    the rest, so the next run sends only what was not delivered."""
    receiver = http_receiver([503] * 4)
    cfg = parse_notify_config(config_data(receiver.url, dead_letter))
    fail_to_deliver(cfg, [notification("org-1", i) for i in range(4)])

    class StopRequestedError(Exception):
        """Stands for the operator's Ctrl-C."""

    async def run() -> list[str]:
        store = failed_store(cfg.dead_letter)
        calls = 0
        async with httpx.AsyncClient() as client:
            own = cfg.for_tenant("org-1")
            assert own is not None
            real = build_sender(own.receiver("hook"), client, 2.0)

            class Stopping:
                async def send(self, n: Notification) -> None:
                    nonlocal calls
                    calls += 1
                    if calls == 3:
                        raise StopRequestedError
                    await real.send(n)

            try:
                chosen = await store.scan(FailedFilter())
                with pytest.raises(StopRequestedError):
                    await redrive(store, chosen, cfg, senders=lambda t, r: Stopping())
                left = await store.scan(FailedFilter())
            finally:
                await store.close()
        return [str(f.record["idempotency_key"]) for f in left]

    assert asyncio.run(run()) == ["org-1-key-2", "org-1-key-3"]
    assert len(receiver.requests) == 4 + 2


def test_list_prints_each_record_on_two_lines(
    http_receiver: Callable[..., HttpReceiver],
    dead_letter: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without --json, a record is a heading (id, time to the second, tenant -> receiver,
    reason) and its alert count and error, unfolded on an 80-column terminal."""
    receiver = http_receiver([503])
    data = config_data(receiver.url, dead_letter)
    fail_to_deliver(parse_notify_config(data), [notification("org-1", 1, resolved=1)])
    config_file = write_config(tmp_path / "notify.json", data)
    monkeypatch.setenv("COLUMNS", "80")
    capsys.readouterr()
    assert main(["failed-notifications", "list", "--notify", str(config_file)]) == 0
    heading, error = capsys.readouterr().out.splitlines()
    assert heading.endswith("Z  org-1 -> hook  retries_exhausted")
    assert error == f"    2 alerts: webhook hook ({receiver.url}/org-1): HTTP 503"
