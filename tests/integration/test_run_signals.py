"""`rayworker run` as a real process: SIGTERM mid-stream drains what was read and exits 0."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from rayworker.ingest.redis_streams import StreamProducer
from rayworker.sources.synthetic import SyntheticConfig, generate

pytestmark = pytest.mark.integration

PER_ENTRY = 500
ENTRIES = 300  # 150k events: seconds of work, so the signal lands mid-stream


async def _group(client: aioredis.Redis, stream: str) -> dict[str, int]:
    groups = await client.xinfo_groups(stream)
    if not groups:
        return {"entries-read": 0, "pending": 0}
    group = groups[0]
    return {"entries-read": int(group.get("entries-read") or 0), "pending": int(group["pending"])}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_stream_drains_acks_and_exits_zero(
    ray_cluster: str, live_redis_url: str, tmp_path: Path, sig: signal.Signals
) -> None:
    """A signal mid-stream stops reading, persists and acks every entry read, and exits 0."""
    token = secrets.token_hex(5)
    stream = f"rwtest:{token}:events"
    db = tmp_path / "alerts.db"
    lines = list(
        generate(SyntheticConfig(events=PER_ENTRY * ENTRIES, tenants=20, principals=2000, seed=9))
    )
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_cluster,
        "RAYWORKER_RAY_NAMESPACE": f"rwtest-{token}",
        "RAYWORKER_SOURCE": "redis",
        "RAYWORKER_STREAM_URL": live_redis_url,
        "RAYWORKER_STREAM_KEY": stream,
        "RAYWORKER_DEAD_LETTER_STREAM": f"rwtest:{token}:dead",
        "RAYWORKER_CONSUMER_GROUP": "signals",
        "RAYWORKER_CONSUMER_NAME": "c1",
        "RAYWORKER_ALERTS_DSN": f"sqlite:///{db}",
        "RAYWORKER_METRICS_URL": "memory://",
        "RAYWORKER_SHARDS": "2",
        "RAYWORKER_READ_COUNT": "4",
    }
    # Run the CLI from this interpreter's environment, so the test needs no installed script.
    command = [sys.executable, "-m", "rayworker", "run", "--no-serve", "--quiet", "--migrate"]

    async def scenario() -> tuple[int, str, dict[str, int], int]:
        client = aioredis.Redis.from_url(live_redis_url)
        try:
            await StreamProducer(client, stream=stream).add_events(lines, per_entry=PER_ENTRY)
            process = subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            try:
                deadline = time.monotonic() + 120
                while (await _group(client, stream))["entries-read"] < ENTRIES // 10:
                    assert process.poll() is None, process.communicate()[1].decode()
                    assert time.monotonic() < deadline, "the pipeline never started reading"
                    await asyncio.sleep(0.02)
                process.send_signal(sig)
                _, err = await asyncio.to_thread(process.communicate, timeout=60)
            finally:
                if process.poll() is None:
                    process.kill()
            group = await _group(client, stream)
            length = await client.xlen(stream)
            await client.delete(stream, f"rwtest:{token}:dead")
            return process.returncode, err.decode(), group, length
        finally:
            await client.aclose()

    code, err, group, length = asyncio.run(scenario())
    assert code == 0, err
    assert group["pending"] == 0, err
    assert 0 < group["entries-read"] < length
    assert f"stopped after {group['entries-read'] * PER_ENTRY:,} events" in err
    with sqlite3.connect(db) as conn:
        (alerts,) = conn.execute("select count(*) from alerts").fetchone()
    assert alerts > 0
