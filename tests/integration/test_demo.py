"""`rayworker demo`, the README's first command, run as a user runs it (on the session's Ray)."""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_the_pipeline_and_stores_alerts(ray_cluster: str, tmp_path: Path) -> None:
    """`rayworker demo` streams synthetic traffic with attacks through the pipeline, exits 0,
    and leaves the alerts it found in its SQLite file, many tenants' worth."""
    db = tmp_path / "demo.db"
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_cluster,
        "RAYWORKER_RAY_NAMESPACE": f"rwdemo-{secrets.token_hex(4)}",
    }
    command = [sys.executable, "-m", "rayworker", "demo", "--events", "30000", "--no-serve"]
    done = subprocess.run(
        [*command, "--db", str(db)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "injected attacks" in done.stdout
    with sqlite3.connect(db) as conn:
        alerts, tenants = conn.execute(
            "SELECT count(*), count(DISTINCT tenant_id) FROM alerts"
        ).fetchone()
    assert alerts > 0
    assert tenants > 1
