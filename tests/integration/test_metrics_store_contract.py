"""One contract, two metrics stores: memory and Redis run the same tests."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from rayworker.clock import FixedClock
from rayworker.detect import MetricDeltas
from rayworker.errors import ConfigError, SinkError
from rayworker.sinks.alert_store import QueryError
from rayworker.sinks.memory_metrics import MemoryMetricsStore
from rayworker.sinks.metrics_store import MetricsStore
from rayworker.sinks.redis_metrics import RedisMetricsStore

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("RAYWORKER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NOW = datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC)
AT = datetime(2024, 5, 1, 12, 0, 10, tzinfo=UTC)
ODD_TENANTS = ("a", "a:b", "org:*", "*", "{x}", "a}b{", "all", "t:all", "%41", "A", "ü 🚨")

Scenario = Callable[[MetricsStore], Awaitable[None]]


def deltas(
    tenant: str = "tenant-a",
    *,
    events: int = 0,
    rejected: dict[tuple[str | None, str], int] | None = None,
    late: int = 0,
    alerts: dict[tuple[str, str], int] | None = None,
    updates: int = 0,
    duplicates: int = 0,
    naive: int = 0,
    capped: int = 0,
) -> MetricDeltas:
    """Deltas for one tenant; ``alerts`` maps (rule, severity) to a count."""
    d = MetricDeltas()
    d.events[tenant] += events
    d.rejected.update(rejected or {})
    d.late[tenant] += late
    for (rule, sev), n in (alerts or {}).items():
        d.alerts[(tenant, rule, sev)] += n
    d.alert_updates[(tenant, "failed-auth")] += updates
    d.duplicates[tenant] += duplicates
    d.naive_timestamps[tenant] += naive
    d.state_capped[tenant] += capped
    return d


# --------------------------------------------------------------------------- fixtures


def _unreachable(exc: BaseException) -> None:
    """Fail in CI, skip locally (STYLE example 6)."""
    reason = f"Redis unreachable at RAYWORKER_TEST_REDIS_URL: {type(exc).__name__}"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


async def _ping() -> None:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        await client.ping()
    finally:
        await client.aclose()


async def _delete_prefix(prefix: str) -> None:
    """Delete every key under a test's unique prefix (SCAN is fine in tests)."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis URL, once it has answered a PING."""
    try:
        asyncio.run(_ping())
    except (RedisError, OSError) as exc:
        _unreachable(exc)
    return REDIS_URL


@dataclass
class Harness:
    """Runs a scenario against a fresh store of one backend (Redis: a unique key prefix)."""

    kind: str
    clock: FixedClock

    def run(self, scenario: Scenario) -> None:
        asyncio.run(self._run(scenario))

    async def _run(self, scenario: Scenario) -> None:
        store: MetricsStore
        prefix = f"rwtest-{secrets.token_hex(6)}"
        if self.kind == "memory":
            store = MemoryMetricsStore(clock=self.clock)
        else:
            store = RedisMetricsStore(REDIS_URL, prefix=prefix)
        try:
            await scenario(store)
        finally:
            await store.close()
            if self.kind == "redis":
                await _delete_prefix(prefix)


@pytest.fixture(params=["memory", "redis"])
def harness(request: pytest.FixtureRequest) -> Harness:
    """The contract runs once per backend."""
    if request.param == "redis":
        request.getfixturevalue("redis_url")
    return Harness(request.param, FixedClock(NOW))


# --------------------------------------------------------------------------- counters


def test_counters_add_up_across_records(harness: Harness) -> None:
    """Every counter is the sum of what several record() calls added."""

    async def scenario(store: MetricsStore) -> None:
        for _ in range(3):
            await store.record(
                deltas(
                    events=10,
                    late=1,
                    alerts={("failed-auth", "HIGH"): 1},
                    updates=2,
                    duplicates=3,
                    naive=4,
                    capped=5,
                ),
                at=AT,
            )
        snap = await store.snapshot("tenant-a")
        assert (snap.events, snap.late, snap.alerts, snap.alert_updates) == (30, 3, 3, 6)
        assert (snap.duplicates, snap.naive_timestamps, snap.state_capped) == (9, 12, 15)
        assert (snap.rejected, snap.errors, snap.error_rate) == (0, 0, 0.0)

    harness.run(scenario)


def test_alerts_by_rule_and_severity_and_suspicious_patterns(harness: Harness) -> None:
    """Alerts count by rule and by severity; suspicious_patterns equals alerts created only."""

    async def scenario(store: MetricsStore) -> None:
        await store.record(
            deltas(
                events=5,
                alerts={
                    ("failed-auth", "HIGH"): 2,
                    ("failed-auth", "LOW"): 1,
                    ("exfil", "HIGH"): 4,
                },
                updates=7,
            ),
            at=AT,
        )
        snap = await store.snapshot("tenant-a")
        assert snap.alerts == snap.suspicious_patterns == 7
        assert snap.alert_updates == 7
        assert dict(snap.alerts_by_rule) == {"exfil": 4, "failed-auth": 3}
        assert dict(snap.alerts_by_severity) == {"HIGH": 6, "LOW": 1}

    harness.run(scenario)


def test_unknown_tenant_snapshot_is_empty(harness: Harness) -> None:
    """A tenant nothing was recorded for has an all-zero snapshot."""

    async def scenario(store: MetricsStore) -> None:
        await store.record(deltas(events=3), at=AT)
        snap = await store.snapshot("nobody")
        assert snap.tenant == "nobody"
        assert (snap.events, snap.alerts, snap.latency.count, snap.p99) == (0, 0, 0, 0.0)
        assert not snap.rejected_by_reason

    harness.run(scenario)


def test_tenants_are_isolated_even_with_key_syntax_in_their_names(harness: Harness) -> None:
    """Each odd tenant name (':', '*', '{', '}', 'all', '%41') sees only its own counts."""

    async def scenario(store: MetricsStore) -> None:
        batch = MetricDeltas()
        for i, tenant in enumerate(ODD_TENANTS, start=1):
            batch.events[tenant] += i
            batch.rejected[(tenant, f"reason-{i}")] += i
            batch.alerts[(tenant, f"rule-{i}", "HIGH")] += i
        await store.record(
            batch, latencies_ms={t: [float(i)] for i, t in enumerate(ODD_TENANTS)}, at=AT
        )
        for i, tenant in enumerate(ODD_TENANTS, start=1):
            snap = await store.snapshot(tenant)
            assert (snap.events, snap.rejected, snap.alerts) == (i, i, i), tenant
            assert dict(snap.rejected_by_reason) == {f"reason-{i}": i}, tenant
            assert dict(snap.alerts_by_rule) == {f"rule-{i}": i}, tenant
            assert snap.latency.count == 1, tenant
        overall = await store.snapshot()
        assert overall.events == sum(range(1, len(ODD_TENANTS) + 1))

    harness.run(scenario)


def test_snapshots_list_overall_and_every_tenant_once(harness: Harness) -> None:
    """snapshots() holds overall and each tenant that recorded anything, each as snapshot() says."""

    async def scenario(store: MetricsStore) -> None:
        assert list(await store.snapshots()) == [None]
        await store.record(deltas("t1", events=4), at=AT)
        await store.record(deltas("t2", events=6, alerts={("r", "HIGH"): 2}), at=AT)
        await store.record(deltas("t3", rejected={(None, "invalid_json"): 5}), at=AT)
        await store.record_error("t4", "alert_sink", AT)
        found = await store.snapshots()
        assert set(found) == {None, "t1", "t2", "t4"}
        for scope, snap in found.items():
            assert snap == await store.snapshot(scope), scope

    harness.run(scenario)


def test_overall_is_sum_of_tenants_plus_unattributed(harness: Harness) -> None:
    """Overall = sum over tenants, plus rejections and errors that name no tenant."""

    async def scenario(store: MetricsStore) -> None:
        await store.record(deltas("t1", events=4, late=1, alerts={("r", "LOW"): 1}), at=AT)
        await store.record(deltas("t2", events=6, duplicates=2, alerts={("r", "HIGH"): 2}), at=AT)
        await store.record(deltas("t3", rejected={(None, "invalid_json"): 5}), at=AT)
        await store.record_error("t1", "alert_sink", AT)
        await store.record_error(None, "source", AT, count=2)
        t1, t2, overall = [await store.snapshot(t) for t in ("t1", "t2", None)]
        assert overall.tenant is None
        assert overall.events == t1.events + t2.events == 10
        assert overall.late == t1.late + t2.late
        assert overall.duplicates == t1.duplicates + t2.duplicates
        assert overall.alerts == t1.alerts + t2.alerts == 3
        assert dict(overall.alerts_by_severity) == {"HIGH": 2, "LOW": 1}
        assert overall.rejected == 5  # no tenant had a rejection: all unattributed
        assert overall.errors == t1.errors + 2 == 3
        assert dict(overall.errors_by_kind) == {"alert_sink": 1, "source": 2}

    harness.run(scenario)


def test_rejected_by_reason_including_no_tenant(harness: Harness) -> None:
    """Rejections count by reason per tenant; tenant-less ones count only overall."""

    async def scenario(store: MetricsStore) -> None:
        rejected: dict[tuple[str | None, str], int] = {
            ("t1", "schema"): 2,
            ("t1", "future_timestamp"): 1,
            ("t2", "schema"): 4,
            (None, "invalid_json"): 3,
        }
        await store.record(deltas("t1", rejected=rejected), at=AT)
        await store.record(deltas("t1", rejected={("t1", "schema"): 1}), at=AT)
        t1, t2, overall = [await store.snapshot(t) for t in ("t1", "t2", None)]
        assert t1.rejected == 4
        assert dict(t1.rejected_by_reason) == {"future_timestamp": 1, "schema": 3}
        assert dict(t2.rejected_by_reason) == {"schema": 4}
        assert overall.rejected == 11
        assert dict(overall.rejected_by_reason) == {
            "future_timestamp": 1,
            "invalid_json": 3,
            "schema": 7,
        }

    harness.run(scenario)


# --------------------------------------------------------------------------- latency, errors


def test_percentiles_from_buckets_match_known_distribution(harness: Harness) -> None:
    """p50/p95/p99 of a known mix, recorded in parts, fall in the true percentiles' buckets."""

    async def scenario(store: MetricsStore) -> None:
        # 500 x 3 ms, 450 x 40 ms, 40 x 300 ms, 10 x 3000 ms: true p50=3, p95=40, p99=300.
        sample = [3.0] * 500 + [40.0] * 450 + [300.0] * 40 + [3000.0] * 10
        for part in (sample[:400], sample[400:900], sample[900:]):
            await store.record(deltas(events=len(part)), latencies_ms={"tenant-a": part}, at=AT)
        await store.record(MetricDeltas(), latencies_ms=[7.0] * 10, at=AT)  # overall only
        snap = await store.snapshot("tenant-a")
        assert snap.latency.count == 1000
        assert 2.0 < snap.p50 <= 5.0
        assert 25.0 < snap.p95 <= 50.0
        assert 250.0 < snap.p99 <= 500.0
        assert snap.p50 == pytest.approx(2.0 + 3.0 * 500 / 500)  # documented interpolation
        assert snap.latency.mean_ms == pytest.approx(sum(sample) / 1000)
        overall = await store.snapshot()
        assert overall.latency.count == 1010
        assert dict(overall.latency.buckets)[10.0] == 10

    harness.run(scenario)


def test_error_rate_is_errors_over_events(harness: Harness) -> None:
    """error_rate = errors / events, per tenant and overall; 0 when there are no events."""

    async def scenario(store: MetricsStore) -> None:
        await store.record_error("quiet", "decode", AT)
        assert (await store.snapshot("quiet")).error_rate == 0.0
        await store.record(deltas("busy", events=200), at=AT)
        await store.record_error("busy", "alert_sink", AT, count=3)
        busy = await store.snapshot("busy")
        assert busy.errors == 3
        assert busy.error_rate == pytest.approx(0.015)
        assert dict(busy.errors_by_kind) == {"alert_sink": 3}
        assert (await store.snapshot()).error_rate == pytest.approx(4 / 200)

    harness.run(scenario)


# --------------------------------------------------------------------------- series


def test_per_minute_series_with_injected_time(harness: Harness) -> None:
    """Series count per UTC minute of the injected `at`, per tenant and overall, zeros included."""

    async def scenario(store: MetricsStore) -> None:
        m0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
        await store.record(deltas("t1", events=2), at=m0 + timedelta(seconds=10))
        await store.record(deltas("t1", events=3), at=m0 + timedelta(seconds=50))
        await store.record(deltas("t2", events=7), at=m0 + timedelta(minutes=2, seconds=5))
        await store.record_error("t1", "x", m0 + timedelta(minutes=2))
        since, until = m0 + timedelta(seconds=30), m0 + timedelta(minutes=2, seconds=1)
        minute = [m0 + timedelta(minutes=i) for i in range(3)]
        t1 = await store.series("events", "t1", since=since, until=until)
        assert t1 == list(zip(minute, [5, 0, 0], strict=True))
        overall = await store.series("events", None, since=since, until=until)
        assert overall == list(zip(minute, [5, 0, 7], strict=True))
        errors = await store.series("errors", None, since=m0, until=m0 + timedelta(minutes=3))
        assert [n for _, n in errors] == [0, 0, 1]
        # Another timezone names the same instants.
        plus2 = since.astimezone(datetime.fromisoformat("2024-05-01T14:00:00+02:00").tzinfo)
        assert await store.series("events", "t1", since=plus2, until=until) == t1

    harness.run(scenario)


def test_series_and_record_refuse_bad_arguments(harness: Harness) -> None:
    """Naive times, unknown series names, reversed or over-long ranges raise QueryError."""

    async def scenario(store: MetricsStore) -> None:
        with pytest.raises(QueryError, match="naive"):
            await store.record(deltas(events=1), at=datetime(2024, 5, 1))  # noqa: DTZ001
        with pytest.raises(QueryError, match="series name"):
            await store.series("nope", None, since=AT, until=NOW)
        with pytest.raises(QueryError, match="swap"):
            await store.series("events", None, since=NOW, until=AT - timedelta(minutes=5))
        with pytest.raises(QueryError, match="at most"):
            await store.series("events", None, since=AT, until=AT + timedelta(days=8))
        assert await store.series("events", None, since=AT, until=AT) == []
        assert (await store.snapshot()).events == 0

    harness.run(scenario)


# --------------------------------------------------------------------------- per backend


def test_memory_series_expire_after_retention() -> None:
    """A memory series bucket disappears series_ttl_s after its last write (clock-driven)."""

    async def scenario() -> None:
        clock = FixedClock(NOW)
        store = MemoryMetricsStore(series_ttl_s=3600, clock=clock)
        await store.record(deltas(events=2), at=AT)
        m0 = AT.replace(second=0)
        window = {"since": m0, "until": m0 + timedelta(minutes=1)}
        assert [n for _, n in await store.series("events", "tenant-a", **window)] == [2]
        clock.set(NOW + timedelta(minutes=59))
        await store.record(deltas(events=1), at=AT)  # a late write refreshes the bucket
        clock.set(NOW + timedelta(minutes=59 + 60))
        assert [n for _, n in await store.series("events", "tenant-a", **window)] == [0]
        assert (await store.snapshot("tenant-a")).events == 3  # lifetime counters stay

    asyncio.run(scenario())


class _CountingConnection(aioredis.Connection):
    """Counts socket writes: a pipeline sends all its commands in one packed write."""

    writes = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).writes += 1
        await super().send_packed_command(command, check_health)


def test_redis_record_is_one_round_trip(redis_url: str) -> None:
    """A whole record() (many tenants, latencies, series) is one socket write and one execute."""

    async def scenario() -> None:
        prefix = f"rwtest-{secrets.token_hex(6)}"
        client = aioredis.Redis.from_url(
            redis_url, decode_responses=True, connection_class=_CountingConnection
        )
        executes = Counter[str]()
        make_pipeline = client.pipeline

        def counting_pipeline(transaction: bool = True, shard_hint: str | None = None) -> Any:
            pipe = make_pipeline(transaction=transaction, shard_hint=shard_hint)
            execute = pipe.execute

            async def counted(raise_on_error: bool = True) -> Any:
                executes["transaction" if transaction else "plain"] += 1
                return await execute(raise_on_error)

            pipe.execute = counted  # type: ignore[method-assign]
            return pipe

        client.pipeline = counting_pipeline  # type: ignore[method-assign]
        store = RedisMetricsStore(redis_url, prefix=prefix, client=client)
        try:
            await client.ping()  # connect (HELLO etc.) before counting
            _CountingConnection.writes = 0
            batch = MetricDeltas()
            for t in ("t1", "t2", "t3"):
                batch.events[t] += 5
                batch.alerts[(t, "r", "HIGH")] += 1
                batch.rejected[(t, "schema")] += 1
            batch.rejected[(None, "invalid_json")] += 1
            await store.record(batch, latencies_ms={"t1": [1.0, 30.0], "t2": [9.0]}, at=AT)
            assert _CountingConnection.writes == 1
            assert executes == Counter(plain=1)
            await store.record(MetricDeltas(), at=AT)  # nothing to write: no round trip
            assert _CountingConnection.writes == 1
            assert (await store.snapshot("t2")).events == 5
        finally:
            await store.close()  # an injected client stays open ...
            assert await client.ping()
            await client.aclose()  # ... and its owner closes it
            await _delete_prefix(prefix)

    asyncio.run(scenario())


def test_redis_series_keys_expire_and_counters_do_not(redis_url: str) -> None:
    """Series keys carry the configured TTL; lifetime counter hashes carry none."""

    async def scenario() -> None:
        prefix = f"rwtest-{secrets.token_hex(6)}"
        store = RedisMetricsStore(redis_url, prefix=prefix, series_ttl_s=600)
        client = aioredis.Redis.from_url(redis_url)
        try:
            await store.record(deltas("a:b", events=1), at=AT)
            minute = AT.replace(second=0)
            assert 0 < await client.ttl(store.series_key("events", "a:b", minute)) <= 600
            assert await client.ttl(store.counters_key("a:b")) == -1
            assert store.counters_key("a:b") == f"{prefix}:m:t:a%3Ab"
            assert store.counters_key(None) == f"{prefix}:m:all"
            assert store.counters_key("*") == f"{prefix}:m:t:%2A"
        finally:
            await store.close()
            await client.aclose()
            await _delete_prefix(prefix)

    asyncio.run(scenario())


def test_redis_url_never_shown() -> None:
    """The password in the URL shows in neither the repr nor connection errors."""

    async def scenario() -> None:
        url = "redis://:hunter2-secret@127.0.0.1:1/0"
        store = RedisMetricsStore(url, socket_timeout_s=1)
        try:
            assert "hunter2" not in repr(store)
            with pytest.raises(SinkError) as info:
                await store.record(deltas(events=1), at=AT)
            assert "hunter2" not in str(info.value)
            assert "hunter2" not in repr(info.value.__cause__)
        finally:
            await store.close()
        with pytest.raises(ConfigError) as bad:
            RedisMetricsStore("http://user:hunter2-secret@example")
        assert "hunter2" not in str(bad.value)
        with pytest.raises(ConfigError, match="prefix"):
            RedisMetricsStore(url, prefix="a*")

    asyncio.run(scenario())
