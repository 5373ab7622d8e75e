"""`rayworker run --events FILE`: rejected and late events of a file go to a dead-letter file."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from rayworker.sources.synthetic import SyntheticConfig, generate

pytestmark = pytest.mark.integration


def test_run_on_a_file_keeps_every_bad_and_late_event_with_its_line(
    ray_cluster: str, tmp_path: Path
) -> None:
    """Malformed, tenantless and late events in the input file each land in
    EVENTS.dead-letters.jsonl with their reason, their line number and their exact bytes,
    and the run still exits 0 having processed the rest."""
    good = list(generate(SyntheticConfig(events=3000, tenants=3, principals=50, seed=4)))
    tenant = json.loads(good[-1])["organizationId"]
    bad = {
        b'{"timestamp": "2026-01-05T09:30:00Z", "action": "auth.login"': "malformed_json",
        b'{"timestamp":"2026-01-05T09:30:00Z","action":"a","status":"success"}': ("missing_field"),
        json.dumps(
            {
                "timestamp": "2000-01-01T00:00:00Z",
                "action": "auth.login",
                "status": "failure",
                "organizationId": tenant,
                "principalId": "late-one",
            }
        ).encode(): "late",
    }
    lines = [*good[:1500], *bad, *good[1500:]]
    events = tmp_path / "audit.jsonl"
    events.write_bytes(b"".join(line + b"\n" for line in lines))
    token = secrets.token_hex(4)
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_cluster,
        "RAYWORKER_RAY_NAMESPACE": f"rwfile-{token}",
        "RAYWORKER_ALERTS_DSN": f"sqlite:///{tmp_path / 'alerts.db'}",
        "RAYWORKER_METRICS_URL": "memory://",
        "RAYWORKER_SHARDS": "2",
    }
    command = [sys.executable, "-m", "rayworker", "run", "--events", str(events)]
    done = subprocess.run(
        [*command, "--no-serve", "--quiet", "--migrate", "--fresh-state"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 dead letters appended" in done.stderr
    records = [
        json.loads(line)
        for line in (tmp_path / "audit.dead-letters.jsonl").read_text().splitlines()
    ]
    by_payload = {r["payload"].encode(): r for r in records}
    assert set(by_payload) == set(bad)
    for offset, (payload, reason) in enumerate(bad.items()):
        record = by_payload[payload]
        assert record["reason"] == reason
        assert record["entry"] == f"audit.jsonl:{1501 + offset}"
        assert record["message"]
