"""Notification configuration, silences, the circuit breaker, rendering and purity."""

from __future__ import annotations

import ast
import hashlib
import hmac
import json
from pathlib import Path

import pytest

from rayworker.errors import ConfigError
from rayworker.notify import CircuitBreaker, Silences, load_notify_config, parse_notify_config
from rayworker.notify.model import Notification
from rayworker.notify.render import email_content, ntfy_push, sign, webhook_body
from rayworker.notify.silences import (
    Matcher,
    SilenceError,
    expire_silence,
    new_silence,
    parse_matcher,
)

T0 = 1_795_000_000.0
PURE = ["config", "model", "dispatch", "silences", "redact", "render", "breaker"]


def tenant(
    receivers: list[dict[str, object]], routes: list[dict[str, object]]
) -> dict[str, object]:
    """A config with one tenant."""
    return {"tenants": {"org-1": {"receivers": receivers, "routes": routes}}}


HOOK = {
    "name": "hook",
    "type": "webhook",
    "url": "https://soc.test/hook",
    "secret": "top-secret-key",
}


# --- configuration ---------------------------------------------------------------------------


def test_a_route_naming_an_unknown_receiver_fails_naming_it() -> None:
    """A route's unknown receiver fails at load with the tenant and the receiver named."""
    with pytest.raises(ConfigError, match=r"tenants\.org-1.*unknown receiver\(s\) pager"):
        parse_notify_config(tenant([HOOK], [{"receivers": ["pager"]}]))


def test_unknown_keys_and_bad_durations_fail_with_the_field_path() -> None:
    """Typos and bad durations are refused with the path of the field."""
    with pytest.raises(ConfigError, match=r"routes\.0\.group_wiat: is not a known key"):
        parse_notify_config(tenant([HOOK], [{"receivers": ["hook"], "group_wiat": "1s"}]))
    with pytest.raises(ConfigError, match=r"routes\.0\.group_wait"):
        parse_notify_config(tenant([HOOK], [{"receivers": ["hook"], "group_wait": "5x"}]))


def test_secrets_come_from_the_environment_and_never_show(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """env:NAME reads the secret; it is absent from reprs and dumps; a missing variable is
    named in the error."""
    monkeypatch.setenv("SOC_KEY", "s3cr3t-value-123")
    cfg = parse_notify_config(tenant([{**HOOK, "secret": "env:SOC_KEY"}], []))
    receiver = cfg.tenants["org-1"].receivers[0]
    assert receiver.secret.get_secret_value() == "s3cr3t-value-123"  # type: ignore[union-attr]
    assert "s3cr3t" not in repr(cfg)
    assert "s3cr3t" not in cfg.model_dump_json()
    with pytest.raises(ConfigError, match="NOPE_KEY is not set"):
        parse_notify_config(tenant([{**HOOK, "secret": "env:NOPE_KEY"}], []))


def test_email_needs_tls_for_a_password_and_both_credentials() -> None:
    """An SMTP password is never sent in clear, and username and password go together."""
    mail = {"name": "m", "type": "email", "host": "smtp.test", "from": "a@b.c", "to": ["d@e.f"]}
    with pytest.raises(ConfigError, match="needs tls"):
        parse_notify_config(tenant([{**mail, "tls": "none", "username": "u", "password": "p"}], []))
    with pytest.raises(ConfigError, match="both username and password"):
        parse_notify_config(tenant([{**mail, "username": "u"}], []))


def test_load_notify_config_reads_yaml(tmp_path: Path) -> None:
    """A YAML file loads; a non-mapping file is refused."""
    path = tmp_path / "notify.yaml"
    path.write_text(
        "default:\n  receivers:\n    - {name: n, type: ntfy, url: 'https://ntfy.test/'}\n"
        "  routes:\n    - {receivers: [n], match: {min_severity: HIGH}}\n"
    )
    cfg = load_notify_config(path)
    assert cfg.for_tenant("anyone") is cfg.default
    assert cfg.default is not None
    assert cfg.default.receivers[0].url == "https://ntfy.test"  # type: ignore[union-attr]
    path.write_text("- a\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_notify_config(path)


def test_bad_urls_are_refused_without_echoing_them() -> None:
    """A bad URL fails without repeating the value (it may hold a token)."""
    with pytest.raises(ConfigError) as info:
        parse_notify_config(tenant([{**HOOK, "url": "ftp://host/?token=abcd1234"}], []))
    assert "abcd1234" not in str(info.value)


# --- silences --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "labels", "tags", "expected"),
    [
        ("rule_id=failed_auth", {"rule_id": "failed_auth"}, (), True),
        ("rule_id!=failed_auth", {"rule_id": "failed_auth"}, (), False),
        ("group.source=~10\\..*", {"group.source": "10.0.0.1"}, (), True),
        ("group.source=~10\\.", {"group.source": "10.0.0.1"}, (), False),  # anchored
        ("group.source!~10\\..*", {"group.source": "192.168.0.1"}, (), True),
        ('severity="HIGH"', {"severity": "HIGH"}, (), True),
        ("missing=", {}, (), True),  # a missing label is the empty string
        ("tag=failed-auth", {}, ("a", "failed-auth"), True),
        ("tag!=failed-auth", {}, ("a", "failed-auth"), False),
        ("tag=~fail.*", {}, ("failed-auth",), True),
    ],
)
def test_matchers_follow_alertmanager_semantics(
    text: str, labels: dict[str, str], tags: tuple[str, ...], expected: bool
) -> None:
    """Equality, negation, anchored regexes, missing labels and tags."""
    assert parse_matcher(text).matches(labels, tags) is expected


def test_bad_matchers_and_silences_are_refused_with_a_fix() -> None:
    """Unparsable matchers, bad regexes and match-everything silences are refused."""
    with pytest.raises(SilenceError, match="write a matcher"):
        parse_matcher("no operator")
    with pytest.raises(SilenceError, match="bad regex"):
        parse_matcher("x=~(")
    base = {"starts_at": T0, "ends_at": T0 + 60, "created_by": "a", "comment": "c", "now": T0}
    with pytest.raises(SilenceError, match="mute everything"):
        new_silence("org-1", ["rule_id=~.*"], **base)  # type: ignore[arg-type]
    with pytest.raises(SilenceError, match="end after it starts"):
        new_silence("org-1", ["rule_id=x"], **{**base, "ends_at": T0})  # type: ignore[arg-type]
    with pytest.raises(SilenceError, match="comment"):
        new_silence("org-1", ["rule_id=x"], **{**base, "comment": " "})  # type: ignore[arg-type]


def test_silence_states_and_expiry() -> None:
    """pending -> active -> expired; expiring a pending one means it never starts; an
    expired one cannot be expired again."""
    s = new_silence(
        "org-1",
        [Matcher("rule_id", "=", "x")],
        starts_at=T0 + 10,
        ends_at=T0 + 20,
        created_by="a",
        comment="c",
        now=T0,
    )
    assert [s.state(T0), s.state(T0 + 10), s.state(T0 + 20)] == ["pending", "active", "expired"]
    never = expire_silence(s, T0 + 5)
    assert never.state(T0 + 15) == "expired"
    ended = expire_silence(s, T0 + 15)
    assert (ended.ends_at, ended.state(T0 + 15)) == (T0 + 15, "expired")
    with pytest.raises(SilenceError, match="already expired"):
        expire_silence(ended, T0 + 16)


def test_silences_are_per_tenant_and_survive_snapshots() -> None:
    """Another tenant's id is not found; snapshot/restore keeps every silence; gc drops old
    expired ones."""
    silences = Silences()
    s = new_silence(
        "org-1", ["rule_id=x"], starts_at=T0, ends_at=T0 + 60, created_by="a", comment="c", now=T0
    )
    silences.add(s)
    with pytest.raises(SilenceError, match="not found for tenant org-2"):
        silences.get("org-2", s.id)
    assert silences.muting("org-1", {"rule_id": "x"}, (), T0 + 1) == [s.id]
    assert silences.muting("org-2", {"rule_id": "x"}, (), T0 + 1) == []
    again = Silences.restore(json.loads(json.dumps(silences.snapshot())))
    assert again.for_tenant("org-1", T0) == [s]
    assert again.gc(T0 + 60 + 86_400) == 1


# --- circuit breaker ---------------------------------------------------------------------


def test_breaker_opens_allows_one_probe_and_closes_or_reopens() -> None:
    """Opens after N consecutive failures, refuses until reset, lets exactly one probe
    through, closes on its success and reopens on its failure."""
    b = CircuitBreaker(failures=3, reset_s=10)
    for t in range(3):
        assert b.allow(T0 + t)
        b.failure(T0 + t)
    assert b.state == "open"
    assert not b.allow(T0 + 5)
    assert b.allow(T0 + 12)  # the probe
    assert not b.allow(T0 + 12.5)  # only one
    b.failure(T0 + 13)
    assert (b.state, b.trips) == ("open", 2)
    assert b.allow(T0 + 23)
    b.success()
    assert b.state == "closed"
    assert b.allow(T0 + 23.1)


def test_breaker_success_resets_the_consecutive_count() -> None:
    """Failures must be consecutive to open the breaker."""
    b = CircuitBreaker(failures=2, reset_s=10)
    b.failure(T0)
    b.success()
    b.failure(T0 + 1)
    assert b.state == "closed"


# --- rendering -------------------------------------------------------------------------------


def notification(
    *firing: dict[str, object], resolved: tuple[dict[str, object], ...] = ()
) -> Notification:
    """A notification of the given alerts."""
    return Notification(
        tenant="org-1",
        receiver="r",
        route=0,
        group_key="grp-1",
        group_labels={},
        firing=tuple(firing),
        resolved=resolved,
        idempotency_key="key-1",
        flush_id=1,
        created_at=T0,
    )


ALERT = {
    "id": "al-1",
    "title": "Suspicious Pattern Detected: FAILED_AUTH",
    "description": "5 failed authentication attempts detected from u1 within 300 seconds",
    "severity": "CRITICAL",
    "type": "SECURITY",
    "source": "rayworker",
    "rule_id": "failed_auth",
    "group": {"source": "u1"},
    "evidence": ["ev-1", "ev-2"],
    "notification_status": "firing",
}


def test_ntfy_push_is_the_originals() -> None:
    """Description as body, Title, Tags warning,type,severity,source,status; CRITICAL adds
    Priority 5."""
    push = ntfy_push(notification(ALERT))
    assert push.body == ALERT["description"]
    assert push.headers["Title"] == ALERT["title"]
    assert push.headers["Tags"] == "warning,SECURITY,CRITICAL,rayworker,active"
    assert push.headers["Priority"] == "5"
    low = ntfy_push(notification({**ALERT, "severity": "LOW"}))
    assert "Priority" not in low.headers


def test_ntfy_headers_are_safe_for_hostile_titles() -> None:
    """Control characters never reach a header; non-ASCII is RFC 2047-encoded."""
    push = ntfy_push(notification({**ALERT, "title": "évil\r\nX-Injected: 1"}))
    assert "\n" not in push.headers["Title"]
    assert push.headers["Title"].startswith("=?UTF-8?B?")


def test_a_group_lists_every_description() -> None:
    """A grouped push lists one line per alert (capped) and says how many."""
    alerts = [{**ALERT, "id": f"al-{i}", "description": f"d{i}"} for i in range(60)]
    push = ntfy_push(notification(*alerts))
    assert push.body.count("\n- d") == 49
    assert push.body.endswith("... and 10 more")
    assert push.headers["Title"].startswith("60 alerts: ")


def test_webhook_body_and_signature_verify() -> None:
    """The body carries the alerts and evidence; the signature is HMAC-SHA256 of the body."""
    body = webhook_body(notification(ALERT))
    data = json.loads(body)
    assert data["alerts"][0]["evidence"] == ["ev-1", "ev-2"]
    assert data["idempotency_key"] == "key-1"
    expected = hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert sign(b"k", body) == f"sha256={expected}"


def test_email_has_readable_text_and_escaped_html() -> None:
    """Plain text lists the facts; HTML escapes alert text."""
    content = email_content(
        notification({**ALERT, "title": "<script>x</script>"}), subject_prefix="[rw]"
    )
    assert content.subject.startswith("[rw] [FIRING:1]")
    assert "evidence: ev-1, ev-2" in content.text
    assert "<script>" not in content.html
    assert "&lt;script&gt;" in content.html


# --- purity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("module", PURE)
def test_pure_notify_modules_import_no_clients(module: str) -> None:
    """The pure core imports no ray, redis, asyncpg, httpx or aiosmtplib."""
    path = Path(__file__).parents[2] / "rayworker" / "notify" / f"{module}.py"
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert not names & {"ray", "redis", "asyncpg", "httpx", "aiosmtplib", "tenacity"}
