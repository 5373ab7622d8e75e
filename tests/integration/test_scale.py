"""Live rescaling on real Ray, Redis and PostgreSQL: key groups move with their state.

Shards are added and removed while the attack-laden workload streams in (and a shard of the
new layout is killed, and the router too): every run must end with exactly the alerts one
detector gives for the same events, with no duplicate row and every entry acknowledged only
once a checkpoint covered it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import ray

from rayworker.chaos import (
    DrillReport,
    FaultPlan,
    Recovery,
    await_recovery,
    drill_settings,
    drill_workload,
    run_drill,
)
from rayworker.checkpoint import ROUTER_OWNER, Checkpoint, encode_state, shard_owner
from rayworker.detect import Detector
from rayworker.partition import Partitioner
from rayworker.pipeline.app import Pipeline, detector_config, load_pack
from rayworker.routing import Assignment
from rayworker.sinks.factory import open_alert_store

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def _scale_plan(
    results: list[dict[str, Any]], layouts: list[list[int]]
) -> Callable[[DrillReport], FaultPlan]:
    """2 -> 4 shards, kill a new shard, 4 -> 3, kill the router, 3 -> 1."""

    async def scale(pipeline: Pipeline, shards: int) -> None:
        request = await pipeline.request_scale(shards)
        result = await pipeline.router.scale_result.remote(request, 120)
        results.append(result)
        # The router answers as soon as the hand-off is done; the driver then stops the
        # shards that gave everything away.
        for _ in range(100):
            if sorted(pipeline.shards) == result.get("shards"):
                break
            await asyncio.sleep(0.1)
        layouts.append(sorted(pipeline.shards))

    async def kill(
        report: DrillReport,
        pipeline: Pipeline,
        target: Any,
        name: str,
        finished: Callable[[], bool],
    ) -> None:
        before = (await pipeline.router.stats.remote())["epoch"]
        killed = time.monotonic()
        ray.kill(target, no_restart=False)
        recovered, progress = await await_recovery(pipeline, before, killed, finished)
        report.recoveries.append(Recovery(name, recovered, progress))

    def plan(report: DrillReport) -> FaultPlan:
        async def strike(pipeline: Pipeline, finished: Callable[[], bool]) -> None:
            await asyncio.sleep(2.0)
            await scale(pipeline, 4)
            await asyncio.sleep(1.0)
            newest = max(pipeline.shards)
            await kill(report, pipeline, pipeline.shards[newest], f"shard-{newest}", finished)
            await scale(pipeline, 3)
            await asyncio.sleep(1.0)
            await kill(report, pipeline, pipeline.router, "router", finished)
            await scale(pipeline, 1)

        return strike

    return plan


def _no_faults(report: DrillReport) -> FaultPlan:
    """No fault: the pipeline's own policies (autoscaling, load balance) act alone."""

    async def strike(pipeline: Pipeline, finished: Callable[[], bool]) -> None:
        return None

    return strike


def test_scaling_up_and_down_with_kills_keeps_alerts_exact(
    ray_cluster: str, live_redis_url: str, pg_dsn: str
) -> None:
    """2 -> 4 -> 3 -> 1 shards mid-stream, with a new shard and the router killed between:
    stored alerts equal one detector's, no duplicate rows, acks only behind checkpoints."""
    settings = drill_settings(live_redis_url, pg_dsn, secrets.token_hex(5), shard_cpus=0.25)
    lines = drill_workload(120_000, seed=5)
    results: list[dict[str, Any]] = []
    layouts: list[list[int]] = []
    report = asyncio.run(run_drill(settings, lines, _scale_plan(results, layouts)))
    print(f"rescales: {results}")
    print(f"recoveries: {report.recoveries}")
    assert [r["ok"] for r in results] == [True, True, True]
    assert [len(r["shards"]) for r in results] == [4, 3, 1]
    assert layouts == [[0, 1, 2, 3], [0, 1, 2], [0]]
    assert all(r["moved_key_groups"] > 0 for r in results)
    assert report.acked_uncovered == []
    assert report.stored == report.expected
    assert report.stored_rows == len(report.expected)
    assert (report.lost, report.duplicates) == (0, 0)
    assert report.router["events"] == len(lines)
    assert report.router["shards"] == [0]
    assert report.router["key_groups"] == {"0": settings.key_groups}


def _cli_plan(address: str, outputs: list[tuple[int, str]]) -> Callable[[DrillReport], FaultPlan]:
    """`rayworker scale` from another process: a bad count, then 2 -> 3 shards."""

    async def cli(pipeline: Pipeline, *args: str) -> None:
        env = {
            **os.environ,
            "RAY_ADDRESS": address,
            "RAYWORKER_RAY_NAMESPACE": pipeline.settings.ray_namespace,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rayworker",
            "scale",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await process.communicate()
        outputs.append((process.returncode or 0, out.decode()))

    def plan(report: DrillReport) -> FaultPlan:
        async def strike(pipeline: Pipeline, finished: Callable[[], bool]) -> None:
            await asyncio.sleep(1.0)
            await cli(pipeline, "--shards", "0")
            await cli(pipeline, "--shards", "3", "--timeout", "120")

        return strike

    return plan


def test_scale_command_rescales_a_running_pipeline(
    ray_cluster: str, live_redis_url: str, pg_dsn: str
) -> None:
    """`rayworker scale --shards 3` from another process moves key groups to a third shard
    of the running pipeline; `--shards 0` is refused with a fix; alerts stay exact."""
    settings = drill_settings(live_redis_url, pg_dsn, secrets.token_hex(5), shard_cpus=0.25)
    lines = drill_workload(40_000, seed=8)
    outputs: list[tuple[int, str]] = []
    report = asyncio.run(run_drill(settings, lines, _cli_plan(ray_cluster, outputs)))
    print(outputs)
    (bad_code, bad_out), (code, out) = outputs
    assert bad_code != 0
    assert "shards: got 0; give 1 to 256" in bad_out
    assert code == 0, out
    assert "now 3 shards (0, 1, 2); moved 85 key groups" in out
    assert report.router["shards"] == [0, 1, 2]
    assert report.stored == report.expected
    assert (report.lost, report.duplicates) == (0, 0)


def test_scaling_beyond_the_cluster_fails_cleanly_and_changes_nothing(
    ray_cluster: str, live_redis_url: str, pg_dsn: str
) -> None:
    """Asking for more shards than the cluster can place fails after recovery_timeout_s with
    a message saying what to do; the layout stays and the alerts stay exact."""
    settings = drill_settings(
        live_redis_url, pg_dsn, secrets.token_hex(5), shard_cpus=1.0
    ).model_copy(update={"recovery_timeout_s": 4.0})
    lines = drill_workload(20_000, seed=9)
    results: list[dict[str, Any]] = []

    def plan(report: DrillReport) -> FaultPlan:
        async def strike(pipeline: Pipeline, finished: Callable[[], bool]) -> None:
            await asyncio.sleep(1.0)
            request = await pipeline.request_scale(12)
            results.append(await pipeline.router.scale_result.remote(request, 60))

        return strike

    report = asyncio.run(run_drill(settings, lines, plan))
    (result,) = results
    assert result["ok"] is False
    assert "could not start 10 more shards within 4 s" in result["error"]
    assert "add nodes or lower shard_cpus" in result["error"]
    assert report.router["shards"] == [0, 1]
    assert report.stored == report.expected
    assert (report.lost, report.duplicates) == (0, 0)


def test_a_restarted_driver_starts_the_checkpointed_layout(
    ray_cluster: str, live_redis_url: str, pg_dsn: str
) -> None:
    """After a rescale, a new `rayworker run` starts the shards the last checkpoint names
    (not the `shards` setting) and its router recovers them."""
    settings = drill_settings(live_redis_url, pg_dsn, secrets.token_hex(5), shard_cpus=0.25)
    pack, overrides = load_pack(settings)
    layout = Assignment.balanced(2).rebalance([0, 1, 5])
    barrier = 1_000

    async def run() -> tuple[list[int], dict[str, Any], dict[str, Any]]:
        store: Any = await open_alert_store(settings, migrate=True)
        try:
            router_state = {
                "partitioner": Partitioner(pack, layout, detector_config(settings)).snapshot(),
                "counts": {"events": 7},
            }
            for shard in layout.shards:
                empty = Detector(pack, overrides, detector_config(settings)).snapshot()
                await store.save_checkpoint(
                    settings.ray_namespace,
                    Checkpoint(shard_owner(shard), barrier, 0, encode_state(empty)),
                )
            await store.save_checkpoint(
                settings.ray_namespace,
                Checkpoint(ROUTER_OWNER, barrier, 0, encode_state(router_state)),
            )
        finally:
            await store.close()
        pipeline = Pipeline(settings, recoverable=True)
        await pipeline.start()
        try:
            started = sorted(pipeline.shards)
            info = await pipeline.recover()
            stats = await pipeline.router.stats.remote()
        finally:
            pipeline.stop()
        return started, info, stats

    started, info, stats = asyncio.run(run())
    assert settings.shards == 2
    assert started == [0, 1, 5]
    assert info["shards"] == [0, 1, 5]
    assert (info["barrier"], stats["events"]) == (barrier, 7)
    assert stats["key_groups"] == {"0": 86, "1": 85, "5": 85}


def test_the_autoscaler_adds_shards_when_the_lag_stays_high(
    ray_cluster: str, live_redis_url: str, pg_dsn: str
) -> None:
    """With autoscaling on and a low lag bound, a backlog makes the pump add shards (one step
    per cooldown, up to max_shards) by itself; alerts stay exact."""
    policy = {
        "enabled": True,
        "min_shards": 2,
        "max_shards": 3,
        "scale_up_lag": 20,
        "scale_down_lag": 0,
        "sustain_s": 0.5,
        "cooldown_s": 60,
        "check_every_s": 0.25,
    }
    settings = drill_settings(
        live_redis_url, pg_dsn, secrets.token_hex(5), shard_cpus=0.25, autoscale=policy
    )
    lines = drill_workload(150_000, seed=12)

    # Produced far faster than two shards on this machine drain it: the lag builds up.
    report = asyncio.run(run_drill(settings, lines, _no_faults, rate=60_000.0))
    assert report.pump is not None
    assert report.pump.rescales == 1
    assert report.router["shards"] == [0, 1, 2]
    assert report.stored == report.expected
    assert (report.lost, report.duplicates) == (0, 0)


def test_the_load_balance_moves_key_groups_and_keeps_alerts_exact(
    ray_cluster: str, live_redis_url: str, pg_dsn: str
) -> None:
    """With a balance policy that judges early and a low trigger, the pump moves key groups
    between the running shards by itself, once (the cooldown holds the next move back), with
    their state: the stored alerts still equal one detector's over the stream."""
    policy = {
        "trigger": 1.02,
        "tolerance": 1.0,
        "min_events": 20_000,
        "check_every_s": 0.25,
        "cooldown_s": 600,
    }
    settings = drill_settings(
        live_redis_url, pg_dsn, secrets.token_hex(5), shard_cpus=0.25, shards=3, balance=policy
    )
    lines = drill_workload(120_000, seed=21)

    report = asyncio.run(run_drill(settings, lines, _no_faults, rate=8_000.0))
    assert report.pump is not None
    print(f"router: {report.router}")
    assert report.pump.rebalances == 1
    assert report.pump.rescales == 0
    assert report.router["shards"] == [0, 1, 2]
    assert report.router["assignment_version"] == 1
    assert report.acked_uncovered == []
    assert report.stored == report.expected
    assert (report.lost, report.duplicates) == (0, 0)
