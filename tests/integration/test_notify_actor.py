"""The notifier Ray actor on the session cluster delivers to a local receiver, reads its
silences from the alert database and never blocks its callers."""

from __future__ import annotations

import secrets
import sqlite3
import time
from pathlib import Path

import pytest
import ray
from pydantic import SecretStr

from rayworker.errors import ConfigError
from rayworker.pipeline.notifier import NOTIFIER_ACTOR, notifier_handle, start_notifier
from rayworker.settings import Settings
from rayworker.sinks.migrate import migrate_sqlite
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
