"""Notifications delivered to real receivers started by the tests: an HTTP server for
webhooks and ntfy pushes, an SMTP server (aiosmtpd, STARTTLS and AUTH) for email; silences
from a real SQLite or PostgreSQL database; dead letters to a real Redis stream."""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import hmac
import json
import secrets
import socket
import ssl
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from pydantic import SecretStr

from rayworker.notify import NotifyConfig, parse_notify_config
from rayworker.notify.dead_letters import MemoryDeadLetters, RedisDeadLetters
from rayworker.notify.service import Notifier
from rayworker.notify.silence_store import PostgresSilenceStore, SqliteSilenceStore
from rayworker.notify.silences import new_silence
from rayworker.sinks.migrate import migrate_postgres, migrate_sqlite
from tests.integration.http_receiver import HttpReceiver
from tests.unit.test_notify_dispatch import make_alert

SECRET = "webhook-secret-0123456789"
TOKEN = "ntfy-token-abcdef"


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def notify_config(tenants: dict[str, Any], **extra: Any) -> NotifyConfig:
    """A fast configuration: short waits and retries."""
    data: dict[str, Any] = {
        "tenants": tenants,
        "tick": "10ms",
        "delivery": {
            "timeout": "2s",
            "max_attempts": 3,
            "backoff_initial": "10ms",
            "backoff_max": "50ms",
            "jitter": 0.01,
        },
    }
    data.update(extra)
    return parse_notify_config(data)


def route(*receivers: str, **extra: Any) -> dict[str, Any]:
    """A route with short grouping times."""
    return {
        "receivers": list(receivers),
        "group_wait": "200ms",
        "group_interval": "1s",
        "repeat_interval": "1h",
        **extra,
    }


def webhook(url: str, name: str = "hook") -> dict[str, Any]:
    """A webhook receiver."""
    return {"name": name, "type": "webhook", "url": url, "secret": SECRET}


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll until the condition holds (fails the test after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the receiver")
        await asyncio.sleep(0.02)


def now_iso() -> float:
    """The current time in seconds (alerts start now, so group_wait applies)."""
    return time.time()


def test_webhook_and_ntfy_receive_signed_content(
    http_receiver: Callable[..., HttpReceiver],
) -> None:
    """The webhook gets the alerts and evidence, HMAC-signed with an idempotency key; ntfy gets
    the original's push on /{tenant} with Title, Tags, Priority and the Bearer token."""
    server = http_receiver()
    cfg = notify_config(
        {
            "org-1": {
                "receivers": [
                    webhook(server.url + "/hook"),
                    {"name": "phone", "type": "ntfy", "url": server.url, "token": TOKEN},
                ],
                "routes": [route("hook", "phone")],
            }
        }
    )

    sent = make_alert(1, severity="CRITICAL", first_seen_s=now_iso())

    async def run() -> dict[str, Any]:
        dead = MemoryDeadLetters()
        notifier = Notifier(cfg, dead_letters=dead)
        await notifier.start()
        assert notifier.enqueue([sent])
        await wait_until(lambda: len(server.requests) >= 2)
        stats = await notifier.drain(5)
        assert not dead.records
        return stats

    stats = asyncio.run(run())
    hook = next(r for r in server.requests if r.path == "/hook")
    expected = hmac.new(SECRET.encode(), hook.body, hashlib.sha256).hexdigest()
    assert hook.headers["X-Rayworker-Signature"] == f"sha256={expected}"
    assert hook.headers["Idempotency-Key"] == hook.json()["idempotency_key"]
    alert = hook.json()["alerts"][0]
    assert alert["id"] == sent["id"]
    assert alert["evidence"] == [f"ev-1-{k}" for k in range(5)]
    push = next(r for r in server.requests if r.path == "/org-1")
    assert push.body.decode() == sent["description"]
    assert push.headers["Title"] == "Suspicious Pattern Detected: FAILED_AUTH"
    assert push.headers["Tags"] == "warning,SECURITY,CRITICAL,rayworker,active"
    assert push.headers["Priority"] == "5"
    assert push.headers["Authorization"] == f"Bearer {TOKEN}"
    assert stats["receivers"]["org-1"]["hook"]["delivered"] == 1
    assert SECRET not in json.dumps(stats)
    assert TOKEN not in json.dumps(stats)


def test_receiver_answering_500_twice_then_200_gets_exactly_one_message(
    http_receiver: Callable[..., HttpReceiver],
) -> None:
    """Two 500s are retried with backoff; the third attempt succeeds; one message delivered,
    every attempt with the same idempotency key, nothing dead-lettered."""
    server = http_receiver([500, 500])
    cfg = notify_config({"org-1": {"receivers": [webhook(server.url)], "routes": [route("hook")]}})

    async def run() -> tuple[dict[str, Any], MemoryDeadLetters]:
        dead = MemoryDeadLetters()
        notifier = Notifier(cfg, dead_letters=dead)
        await notifier.start()
        notifier.enqueue([make_alert(1, first_seen_s=now_iso())])
        await wait_until(lambda: 200 in server.answers)
        await asyncio.sleep(0.3)  # nothing more may arrive
        return await notifier.drain(5), dead

    stats, dead = asyncio.run(run())
    assert server.answers == [500, 500, 200]
    assert len({r.headers["Idempotency-Key"] for r in server.requests}) == 1
    counts = stats["receivers"]["org-1"]["hook"]
    assert (counts["delivered"], counts["attempts"], counts["retried"]) == (1, 3, 1)
    assert not dead.records


def test_down_receiver_leads_to_a_dead_letter_while_alerts_keep_flowing() -> None:
    """A receiver nobody listens on: the notification is dead-lettered with its reason and
    counted; enqueueing never waits for it."""
    url = f"http://127.0.0.1:{free_port()}/hook"
    cfg = notify_config({"org-1": {"receivers": [webhook(url)], "routes": [route("hook")]}})

    async def run() -> tuple[dict[str, Any], MemoryDeadLetters, float]:
        dead = MemoryDeadLetters()
        notifier = Notifier(cfg, dead_letters=dead)
        await notifier.start()
        started = time.perf_counter()
        for i in range(100):
            assert notifier.enqueue([make_alert(i, first_seen_s=now_iso())])
        enqueue_s = time.perf_counter() - started
        await wait_until(lambda: bool(dead.records))
        return await notifier.drain(5), dead, enqueue_s

    stats, dead, enqueue_s = asyncio.run(run())
    record = dead.records[0]
    assert record["reason"] == "retries_exhausted"
    assert record["attempts"] == 3
    assert len(record["alert_ids"]) == 100
    assert "ConnectError" in record["error"]
    assert SECRET not in json.dumps(record)
    # Draining re-flushes the group once more; by then the breaker refuses at once.
    assert [r["reason"] for r in dead.records][1:] in ([], ["circuit_open"])
    assert stats["receivers"]["org-1"]["hook"]["dead_lettered"] == len(dead.records)
    assert enqueue_s < 0.5


def test_storm_of_50_alerts_arrives_as_one_webhook(
    http_receiver: Callable[..., HttpReceiver],
) -> None:
    """Fifty alerts enqueued in ten batches reach the webhook as one message listing them."""
    server = http_receiver()
    cfg = notify_config({"org-1": {"receivers": [webhook(server.url)], "routes": [route("hook")]}})

    async def run() -> None:
        notifier = Notifier(cfg, dead_letters=MemoryDeadLetters())
        await notifier.start()
        start = now_iso()
        for batch in range(10):
            notifier.enqueue([make_alert(batch * 5 + k, first_seen_s=start) for k in range(5)])
            await asyncio.sleep(0.005)
        await wait_until(lambda: bool(server.requests))
        await asyncio.sleep(0.5)
        await notifier.drain(5)

    asyncio.run(run())
    assert len(server.requests) == 1
    assert len(server.requests[0].json()["alerts"]) == 50


def test_tenant_a_routes_never_receive_tenant_b_alerts(
    http_receiver: Callable[..., HttpReceiver],
) -> None:
    """Each tenant's webhook receives only that tenant's alerts."""
    server = http_receiver()
    cfg = notify_config(
        {
            t: {"receivers": [webhook(f"{server.url}/{t}")], "routes": [route("hook")]}
            for t in ("org-a", "org-b")
        }
    )

    async def run() -> None:
        notifier = Notifier(cfg, dead_letters=MemoryDeadLetters())
        await notifier.start()
        start = now_iso()
        notifier.enqueue(
            [make_alert(i, tenant="org-a", first_seen_s=start) for i in range(3)]
            + [make_alert(i, tenant="org-b", first_seen_s=start) for i in range(2)]
        )
        await wait_until(lambda: len(server.requests) >= 2)
        await notifier.drain(5)

    asyncio.run(run())
    for request in server.requests:
        tenant = request.path.strip("/")
        body = request.json()
        assert body["tenant_id"] == tenant
        assert {a["tenant_id"] for a in body["alerts"]} == {tenant}
    assert sorted(len(r.json()["alerts"]) for r in server.requests) == [2, 3]


def sqlite_db(tmp_path: Path) -> str:
    """A migrated SQLite alert database; returns its path."""
    import sqlite3  # noqa: PLC0415 - only this helper needs it

    path = str(tmp_path / "alerts.db")
    conn = sqlite3.connect(path, isolation_level=None)
    migrate_sqlite(conn)
    conn.close()
    return path


def test_silence_in_the_database_suppresses_its_matches_and_nothing_else(
    http_receiver: Callable[..., HttpReceiver], tmp_path: Path
) -> None:
    """A silence stored in SQLite mutes the alerts it matches; the others are delivered."""
    server = http_receiver()
    cfg = notify_config({"org-1": {"receivers": [webhook(server.url)], "routes": [route("hook")]}})
    path = sqlite_db(tmp_path)

    async def run() -> None:
        store = SqliteSilenceStore(path)
        now = now_iso()
        await store.add(
            new_silence(
                "org-1",
                ["group.source=user-1"],
                starts_at=now - 1,
                ends_at=now + 3600,
                created_by="alice",
                comment="known scanner",
                now=now,
            )
        )
        notifier = Notifier(cfg, dead_letters=MemoryDeadLetters(), silence_source=store)
        await notifier.start()
        notifier.enqueue([make_alert(i, first_seen_s=now) for i in range(3)])
        await wait_until(lambda: bool(server.requests))
        stats = await notifier.drain(5)
        assert stats["dispatch"]["silenced"] >= 1  # once per flush that held it back

    asyncio.run(run())
    sources = sorted(a["group"]["source"] for a in server.requests[0].json()["alerts"])
    assert sources == ["user-0", "user-2"]


# --- email -------------------------------------------------------------------------------


class MailBox:
    """An aiosmtpd handler that keeps every message and the login that sent it."""

    def __init__(self) -> None:
        self.messages: list[tuple[str | None, EmailMessage]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd hook name
        """Keep the message."""
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        login = session.auth_data.login.decode() if session.auth_data else None
        self.messages.append((login, message))  # type: ignore[arg-type]
        return "250 OK"


def authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    """Accept one login."""
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"alerts",
        b"smtp-password-42",
    )
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


def test_email_over_starttls_with_auth_is_readable(tmp_path: Path) -> None:
    """A real SMTP server (STARTTLS required, AUTH required) receives a multipart email with
    a readable plain-text part and an escaped HTML part."""
    ca = trustme.CA()
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    box = MailBox()
    port = free_port()
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=port,
        tls_context=server_tls,
        require_starttls=True,
        auth_required=True,
        authenticator=authenticate,
    )
    controller.start()
    try:
        mail = {
            "name": "mail",
            "type": "email",
            "host": "127.0.0.1",
            "port": port,
            "tls": "starttls",
            "username": "alerts",
            "password": "smtp-password-42",
            "ca_file": str(cafile),
            "from": "rayworker@example.org",
            "to": ["soc@example.org"],
        }
        cfg = notify_config({"org-1": {"receivers": [mail], "routes": [route("mail")]}})

        async def run() -> MemoryDeadLetters:
            dead = MemoryDeadLetters()
            notifier = Notifier(cfg, dead_letters=dead)
            await notifier.start()
            start = now_iso()
            notifier.enqueue([make_alert(i, first_seen_s=start) for i in range(2)])
            await wait_until(lambda: bool(box.messages) or bool(dead.records))
            await notifier.drain(5)
            # A closed STARTTLS connection finishes its TLS shutdown in later loop callbacks;
            # let them run, or asyncio.run drops them and the socket is collected unclosed.
            await asyncio.sleep(0.2)
            return dead

        dead = asyncio.run(run())
    finally:
        controller.stop()
    assert not dead.records, dead.records
    login, message = box.messages[0]
    assert login == "alerts"
    assert message["Subject"].startswith("[rayworker] [FIRING:2] 2 alerts: Suspicious Pattern")
    assert message["To"] == "soc@example.org"
    plain = message.get_body(preferencelist=("plain",))
    rich = message.get_body(preferencelist=("html",))
    assert plain is not None
    assert rich is not None
    text = plain.get_content()
    assert "5 failed authentication attempts detected from user-0" in text
    assert "evidence: ev-0-0, ev-0-1" in text
    assert "<table" in rich.get_content()


def test_email_with_a_wrong_password_is_dead_lettered_without_the_password(tmp_path: Path) -> None:
    """SMTP refusing the login (535) is permanent: dead-lettered at once, password scrubbed."""
    ca = trustme.CA()
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    port = free_port()
    controller = Controller(
        MailBox(),
        hostname="127.0.0.1",
        port=port,
        tls_context=server_tls,
        require_starttls=True,
        auth_required=True,
        authenticator=authenticate,
    )
    controller.start()
    try:
        mail = {
            "name": "mail",
            "type": "email",
            "host": "127.0.0.1",
            "port": port,
            "username": "alerts",
            "password": "wrong-password-77",
            "ca_file": str(cafile),
            "from": "rayworker@example.org",
            "to": ["soc@example.org"],
        }
        cfg = notify_config({"org-1": {"receivers": [mail], "routes": [route("mail")]}})

        async def run() -> MemoryDeadLetters:
            dead = MemoryDeadLetters()
            notifier = Notifier(cfg, dead_letters=dead)
            await notifier.start()
            notifier.enqueue([make_alert(1, first_seen_s=now_iso())])
            await wait_until(lambda: bool(dead.records))
            await notifier.drain(5)
            # A closed STARTTLS connection finishes its TLS shutdown in later loop callbacks;
            # let them run, or asyncio.run drops them and the socket is collected unclosed.
            await asyncio.sleep(0.2)
            return dead

        dead = asyncio.run(run())
    finally:
        controller.stop()
    record = dead.records[0]
    assert (record["reason"], record["attempts"]) == ("rejected", 1)
    assert "535" in record["error"]
    assert "wrong-password-77" not in json.dumps(record)


# --- dead letters in Redis, silences in PostgreSQL ------------------------------------------


def test_dead_letters_go_to_a_redis_stream(live_redis_url: str) -> None:
    """With a Redis URL, a dead letter is one stream entry holding the full record."""
    stream = f"rayworker:test-notify-dlq:{secrets.token_hex(4)}"

    async def run() -> list[Any]:
        sink = RedisDeadLetters(SecretStr(live_redis_url), stream, 100)
        await sink.put({"tenant": "org-1", "receiver": "hook", "reason": "rejected", "x": 1})
        await sink.close()
        client = aioredis.Redis.from_url(live_redis_url)
        try:
            entries = await client.xrange(stream)
            await client.delete(stream)
        finally:
            await client.aclose()
        return list(entries)

    entries = asyncio.run(run())
    fields = entries[0][1]
    assert fields[b"tenant"] == b"org-1"
    assert fields[b"reason"] == b"rejected"
    assert json.loads(fields[b"record"])["x"] == 1


async def _pg_schema(dsn: str, schema: str, *, create: bool) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        template = "CREATE SCHEMA %I" if create else "DROP SCHEMA IF EXISTS %I CASCADE"
        sql = await conn.fetchval("SELECT format($1::text, $2::text)", template, schema)
        await conn.execute(sql)
        if create:
            await conn.execute(f"SET search_path TO {schema}")  # name made by this test
            await migrate_postgres(conn)
    finally:
        await conn.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_silence_store_contract(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Add, list, expire and load silences; another tenant's id is not found; injection
    strings are stored verbatim."""
    schema = f"rw_notify_{secrets.token_hex(5)}"
    dsn = ""
    if backend == "postgres":
        dsn = request.getfixturevalue("live_postgres_dsn")
        asyncio.run(_pg_schema(dsn, schema, create=True))

    async def run() -> None:
        store = (
            SqliteSilenceStore(sqlite_db(tmp_path))
            if backend == "sqlite"
            else PostgresSilenceStore(SecretStr(dsn), search_path=schema)
        )
        now = now_iso()
        hostile = "x'); DROP TABLE silences; --"
        s = new_silence(
            "org-1",
            [f"rule_id={hostile}"],
            starts_at=now,
            ends_at=now + 60,
            created_by=hostile,
            comment=hostile,
            now=now,
        )
        later = new_silence(
            "org-1",
            ["severity=LOW"],
            starts_at=now + 30,
            ends_at=now + 90,
            created_by="b",
            comment="pending",
            now=now,
        )
        try:
            await store.add(s)
            await store.add(later)
            listed = await store.for_tenant("org-1", now + 1)
            assert [x.id for x in listed] == [s.id, later.id]
            assert listed[0].comment == hostile
            assert listed[0].matchers[0].value == hostile
            assert await store.for_tenant("org-2", now + 1) == []
            with pytest.raises(Exception, match="not found for tenant org-2"):
                await store.expire("org-2", s.id, now + 2)
            expired = await store.expire("org-1", s.id, now + 2)
            assert expired.state(now + 2) == "expired"
            assert [x.id for x in await store.current(now + 3)] == [later.id]
            everything = await store.for_tenant("org-1", now + 3, include_expired=True)
            assert len(everything) == 2
        finally:
            await store.close()

    try:
        asyncio.run(run())
    finally:
        if backend == "postgres":
            asyncio.run(_pg_schema(dsn, schema, create=False))
