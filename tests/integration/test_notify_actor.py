"""The notifier Ray actor on the session cluster delivers to a local receiver, reads its
silences from the alert database and never blocks its callers."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from pathlib import Path

import pytest
import ray
from pydantic import SecretStr

from rayworker.cli import main
from rayworker.errors import ConfigError
from rayworker.pipeline.notifier import NOTIFIER_ACTOR, notifier_handle, start_notifier
from rayworker.settings import Settings
from rayworker.sinks.migrate import migrate_sqlite
from rayworker.sinks.sqlite_alerts import SqliteAlertStore
from tests.integration.test_notify_receivers import HttpReceiver, notify_config, route, webhook
from tests.unit.test_notify_dispatch import make_alert, make_alert_object


def test_notifier_actor_delivers_to_a_local_receiver(ray_cluster: str, tmp_path: Path) -> None:
    """enqueue.remote returns at once; the actor groups the alerts and POSTs one webhook;
    drain reports the delivery; the actor is found by name."""
    db = tmp_path / "alerts.db"
    conn = sqlite3.connect(db, isolation_level=None)
    migrate_sqlite(conn)
    conn.close()
    namespace = f"notify-test-{secrets.token_hex(4)}"
    settings = Settings(alerts_dsn=SecretStr(f"sqlite:///{db}"), ray_namespace=namespace)
    server = HttpReceiver()
    handle = None
    try:
        cfg = notify_config(
            {"org-1": {"receivers": [webhook(server.url)], "routes": [route("hook")]}}
        )
        handle = start_notifier(settings, cfg)
        assert ray.get(handle.ready.remote(), timeout=60)
        assert notifier_handle(namespace) is not None
        assert notifier_handle(f"{namespace}-none") is None
        with pytest.raises(ConfigError, match="already running"):
            start_notifier(settings, cfg)
        start = time.time()
        # Both forms are accepted: Alert objects (what the router holds) and their JSON.
        as_alerts = [make_alert_object(i, first_seen_s=start) for i in range(10)]
        as_json = [make_alert(i, first_seen_s=start) for i in range(10, 20)]
        accepted = ray.get(
            [handle.enqueue.remote(as_alerts), handle.enqueue.remote(as_json)], timeout=30
        )
        assert accepted == [True, True]
        deadline = time.monotonic() + 30
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = ray.get(handle.drain.remote(5.0), timeout=30)
    finally:
        if handle is not None:
            ray.kill(handle)
        server.close()
    assert len(server.requests) == 1
    body = server.requests[0].json()
    assert len(body["alerts"]) == 20
    assert stats["receivers"]["org-1"]["hook"]["delivered"] == 1
    assert stats["dropped"] == {}
    assert NOTIFIER_ACTOR == "rayworker-notifier"


def test_resolving_from_the_cli_notifies_the_running_notifier(
    ray_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rayworker alerts resolve` tells the pipeline's notifier at once, so a route with
    send_resolved sends the resolution without waiting for resolve_timeout."""
    db = tmp_path / "alerts.db"
    namespace = f"notify-test-{secrets.token_hex(4)}"
    settings = Settings(alerts_dsn=SecretStr(f"sqlite:///{db}"), ray_namespace=namespace)
    alert = make_alert_object(1, first_seen_s=time.time())

    async def store_alert() -> None:
        store = SqliteAlertStore(str(db))
        await store.open(migrate=True)
        try:
            await store.upsert([alert])
        finally:
            await store.close()

    asyncio.run(store_alert())
    server = HttpReceiver()
    handle = None
    try:
        cfg = notify_config(
            {
                "org-1": {
                    "receivers": [webhook(server.url)],
                    "routes": [route("hook", send_resolved=True)],
                }
            },
            resolve_timeout="1h",
        )
        handle = start_notifier(settings, cfg)
        assert ray.get(handle.ready.remote(), timeout=60)
        assert ray.get(handle.enqueue.remote([alert]), timeout=30)
        deadline = time.monotonic() + 30
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(server.requests) == 1
        monkeypatch.setenv("RAY_ADDRESS", ray_cluster)
        monkeypatch.setenv("RAYWORKER_RAY_NAMESPACE", namespace)
        code = main(
            [
                "alerts",
                "resolve",
                "--tenant",
                "org-1",
                alert.id,
                "--by",
                "analyst",
                "--alerts-dsn",
                f"sqlite:///{db}",
            ]
        )
        assert code == 0
        deadline = time.monotonic() + 30
        while len(server.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if handle is not None:
            ray.kill(handle)
        server.close()
    assert len(server.requests) == 2
    resolved = server.requests[1].json()
    assert resolved["status"] == "resolved"
    assert (resolved["firing"], resolved["resolved"]) == (0, 1)
    assert [(a["id"], a["status"]) for a in resolved["alerts"]] == [(alert.id, "resolved")]
