"""Delivery policy (retries, breaker, dead letters), the engine's bounded queue, and the
``rayworker silences`` command, with in-process fakes and an injected clock: no network."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rayworker.cli import main
from rayworker.clock import FixedClock
from rayworker.notify import Notification, parse_notify_config
from rayworker.notify.dead_letters import FileDeadLetters, MemoryDeadLetters
from rayworker.notify.delivery import Deliverer
from rayworker.notify.receivers import DeliveryError, Sender, safe_url, scrub
from rayworker.notify.service import Notifier
from tests.unit.test_notify_dispatch import make_alert

START = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


class ScriptedSender:
    """A receiver that fails as scripted, then succeeds; records what it got."""

    def __init__(self, failures: list[DeliveryError | None]) -> None:
        self.failures = list(failures)
        self.got: list[Notification] = []

    async def send(self, notification: Notification) -> None:
        """Fail with the next scripted error, if any."""
        self.got.append(notification)
        if self.failures:
            error = self.failures.pop(0)
            if error is not None:
                raise error


def config(**delivery: object) -> object:
    """One tenant, one webhook, instant grouping."""
    return parse_notify_config(
        {
            "tenants": {
                "org-1": {
                    "receivers": [
                        {
                            "name": "hook",
                            "type": "webhook",
                            "url": "http://x.test/?token=t0k3n-xyz",
                            "secret": "s3cret-key",
                        }
                    ],
                    "routes": [{"receivers": ["hook"], "group_wait": "1ms"}],
                }
            },
            "delivery": {
                "max_attempts": 3,
                "breaker_failures": 4,
                "breaker_reset": "60s",
                **delivery,
            },
        }
    )


def notification(i: int = 1) -> Notification:
    """A notification of one alert."""
    return Notification(
        tenant="org-1",
        receiver="hook",
        route=0,
        group_key="grp-1",
        group_labels={},
        firing=(make_alert(i),),
        resolved=(),
        idempotency_key=f"key-{i}",
        flush_id=i,
        created_at=START.timestamp(),
    )


def deliverer(
    sender: Sender, clock: FixedClock, dead: MemoryDeadLetters
) -> tuple[Deliverer, list[float]]:
    """A deliverer whose sleeps are recorded (and advance the clock) instead of waiting."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.set(clock.now() + timedelta(seconds=seconds))

    cfg = config()
    return Deliverer(cfg, lambda t, r: sender, dead, clock, sleep=sleep), slept  # type: ignore[arg-type]


def transient(what: str = "HTTP 500") -> DeliveryError:
    """A retryable failure."""
    return DeliveryError(what, transient=True)


def test_transient_failures_are_retried_with_growing_jittered_backoff() -> None:
    """Two 500s then success: delivered once, two sleeps, the second longer."""
    sender = ScriptedSender([transient(), transient()])
    clock, dead = FixedClock(START), MemoryDeadLetters()
    d, slept = deliverer(sender, clock, dead)
    assert asyncio.run(d.deliver(notification()))
    assert len(sender.got) == 3
    assert len(slept) == 2
    assert 0.5 <= slept[0] <= 1.0
    assert 1.0 <= slept[1] <= 1.5
    assert not dead.records
    assert d.stats()["org-1"]["hook"]["delivered"] == 1


def test_permanent_failure_is_dead_lettered_at_once() -> None:
    """A 4xx is not retried: one attempt, dead-lettered with reason rejected."""
    sender = ScriptedSender([DeliveryError("HTTP 400", transient=False)])
    clock, dead = FixedClock(START), MemoryDeadLetters()
    d, _ = deliverer(sender, clock, dead)
    assert not asyncio.run(d.deliver(notification()))
    assert (dead.records[0]["reason"], dead.records[0]["attempts"]) == ("rejected", 1)
    assert d.breaker("org-1", "hook").state == "closed"


def test_breaker_opens_and_refuses_without_calling_the_receiver() -> None:
    """After breaker_failures failed attempts the breaker opens; the next notification is
    refused without touching the receiver and dead-lettered as circuit_open; after the
    reset one probe goes through and its success closes the breaker."""
    sender = ScriptedSender([transient()] * 4)
    clock, dead = FixedClock(START), MemoryDeadLetters()
    d, _ = deliverer(sender, clock, dead)
    assert not asyncio.run(d.deliver(notification(1)))  # 3 attempts
    assert not asyncio.run(d.deliver(notification(2)))  # 4th attempt opens, then refused
    assert len(sender.got) == 4
    assert [r["reason"] for r in dead.records] == ["retries_exhausted", "circuit_open"]
    assert d.breaker("org-1", "hook").state == "open"
    clock.set(clock.now() + timedelta(seconds=61))
    assert asyncio.run(d.deliver(notification(3)))
    assert d.breaker("org-1", "hook").state == "closed"


def test_secrets_stay_out_of_logs_and_dead_letters(caplog: pytest.LogCaptureFixture) -> None:
    """The webhook secret and a token in the URL appear in no log line or dead letter."""
    url = "http://user:pw-9876@hooks.test:8443/path?token=t0k3n-xyz"
    assert safe_url(url) == "http://hooks.test:8443/path"
    assert scrub(f"failed {url}", [url]) == "failed ***"
    sender = ScriptedSender([transient(f"webhook hook ({safe_url(url)}): HTTP 503")] * 3)
    clock, dead = FixedClock(START), MemoryDeadLetters()
    d, _ = deliverer(sender, clock, dead)
    with caplog.at_level(logging.DEBUG):
        asyncio.run(d.deliver(notification()))
    text = caplog.text + json.dumps(list(dead.records))
    for secret in ("t0k3n-xyz", "pw-9876", "s3cret-key"):
        assert secret not in text


def test_file_dead_letters_append_json_lines(tmp_path: Path) -> None:
    """The embedded dead-letter store appends one JSON object per line."""
    path = tmp_path / "dead.jsonl"
    sink = FileDeadLetters(path)
    asyncio.run(sink.put({"reason": "rejected", "n": 1}))
    asyncio.run(sink.put({"reason": "shutdown", "n": 2}))
    assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == [1, 2]


def test_full_queue_drops_and_counts_and_never_blocks() -> None:
    """enqueue returns False on a full queue and counts the dropped alerts per tenant."""
    cfg = parse_notify_config({"queue_size": 2})
    notifier = Notifier(
        cfg, dead_letters=MemoryDeadLetters(), senders=lambda t, r: ScriptedSender([])
    )
    assert notifier.enqueue([make_alert(1)])
    assert notifier.enqueue([make_alert(2)])
    assert not notifier.enqueue([make_alert(3), make_alert(4, tenant="org-2")])
    assert notifier.stats()["dropped"] == {"org-1": 1, "org-2": 1}


def test_engine_groups_delivers_and_drains_with_an_injected_clock() -> None:
    """The engine routes, groups and delivers on its clock; drain flushes waiting groups."""
    cfg = parse_notify_config(
        {
            "tenants": {
                "org-1": {
                    "receivers": [
                        {
                            "name": "hook",
                            "type": "webhook",
                            "url": "http://x.test",
                            "secret": "k" * 8,
                        }
                    ],
                    "routes": [{"receivers": ["hook"], "group_wait": "30s"}],
                }
            },
        }
    )
    sender = ScriptedSender([])
    clock = FixedClock(START)
    notifier = Notifier(
        cfg, clock=clock, dead_letters=MemoryDeadLetters(), senders=lambda t, r: sender
    )

    async def run() -> None:
        notifier.enqueue([make_alert(i, first_seen_s=START.timestamp()) for i in range(5)])
        await notifier.step()
        assert sender.got == []
        clock.set(START + timedelta(seconds=30))
        await notifier.step()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert [len(n.firing) for n in sender.got] == [5]
        notifier.enqueue([make_alert(9, first_seen_s=START.timestamp() + 31)])
        await notifier.step()
        stats = await notifier.drain(1)
        assert stats["receivers"]["org-1"]["hook"]["delivered"] == 2

    asyncio.run(run())
    assert [len(n.firing) for n in sender.got] == [5, 6]


# --- rayworker silences ----------------------------------------------------------------------


def test_silences_command_adds_lists_and_expires(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """add, list --json, expire (tenant-scoped), list --all; errors exit 1 with a message."""
    dsn = f"sqlite:///{tmp_path / 'alerts.db'}"
    assert main(["db", "migrate", "--alerts-dsn", dsn]) == 0
    capsys.readouterr()
    base = ["--alerts-dsn", dsn, "--tenant", "org-1"]
    args = ["rule_id=failed_auth", "group.source=~10\\..*", "--duration", "2h", "--by", "alice"]
    assert main(["silences", "add", *base, *args, "--comment", "pen test", "--json"]) == 0
    added = json.loads(capsys.readouterr().out)
    assert (added["state"], added["matchers"]) == (
        "active",
        ["rule_id=failed_auth", "group.source=~10\\..*"],
    )
    assert main(["silences", "list", *base, "--json"]) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == [
        added["id"]
    ]
    other = ["--alerts-dsn", dsn, "--tenant", "org-2"]
    assert main(["silences", "expire", *other, added["id"]]) == 1
    assert "not found for tenant org-2" in capsys.readouterr().err
    assert main(["silences", "expire", *base, added["id"]]) == 0
    capsys.readouterr()
    assert main(["silences", "list", *base, "--json"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["silences", "list", *base, "--all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "expired"
    assert (
        main(
            [
                "silences",
                "add",
                *base,
                "rule_id=~.*",
                "--duration",
                "1h",
                "--by",
                "a",
                "--comment",
                "c",
            ]
        )
        == 1
    )
    assert "mute everything" in capsys.readouterr().err


def test_silences_command_refuses_a_missing_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a migrated database the command says how to create one."""
    dsn = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["silences", "list", "--alerts-dsn", dsn, "--tenant", "org-1"]) == 1
    assert "rayworker db migrate" in capsys.readouterr().err
