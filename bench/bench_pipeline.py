"""The pipeline benchmark (issue 3, section 8): Redis Stream -> router -> shards -> sinks.

Measured in one run, so the ratios hold on a noisy machine:

(a) the single-process core (`replay`'s detector) over the events, as the baseline, measured
    before and after each pipeline run (the machine's speed drifts; each ratio is to the mean
    of the two measurements around its run); (a') `rayworker replay` itself, as a user runs it
    (reading the JSONL file, writing the alerts), before and after (b);
(b) the pipeline with N shards draining a pre-loaded stream of batched entries until every
    entry is acknowledged (alerts persisted in SQLite, metrics in Redis), with the settings'
    defaults (reads of 100 entries, flushes of 2,000 events); the same with checkpoints every
    2 s as `rayworker run` runs it; and with one event per entry (reads of 5,000 entries);
(c) event -> alert-persisted latency p50/p99 at an offered rate (default 20k events/s),
    measured per read batch from XADD time to acknowledgement;
(d) load imbalance (max/mean events per shard) with 8 shards on the Zipf workload, with
    round-robin key groups, with the live load balance the pipeline runs by default, and
    with a load-aware plan made from another sample (`rayworker shards plan`), from the
    router's own partitioning (pure: no Ray needed).

Run: .venv/bin/python bench/bench_pipeline.py [--events 1000000] [--shards 2]
     [--imbalance-only | --latency-only | --throughput-only] [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time
from pathlib import Path

import numpy as np
import redis.asyncio as aioredis

from rayworker.balance import BalancePolicy, LoadBalancer
from rayworker.cli import main as cli_main
from rayworker.clock import SystemClock
from rayworker.detect import Detector, DetectorConfig
from rayworker.ingest.redis_streams import StreamConsumer, StreamProducer
from rayworker.partition import Partitioner
from rayworker.pipeline.app import Pipeline
from rayworker.pipeline.sources import StreamBatches
from rayworker.routing import Assignment
from rayworker.rules import builtin_pack
from rayworker.settings import load_settings
from rayworker.shard_plan import plan_shards
from rayworker.sources.synthetic import SyntheticConfig, generate

REDIS = os.environ.get("RAYWORKER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def core_rate(lines: list[bytes]) -> float:
    """(a) events/s of one detector in this process."""
    detector = Detector(builtin_pack(), config=DetectorConfig(), clock=SystemClock())
    started = time.perf_counter()
    for i in range(0, len(lines), 10_000):
        detector.process_lines(lines[i : i + 10_000])
    detector.flush()
    return len(lines) / (time.perf_counter() - started)


def replay_rate(lines: list[bytes], tmp: Path) -> float:
    """(a') events/s of ``rayworker replay EVENTS.jsonl --out ALERTS.jsonl`` run in this
    process: the single-process core as a user runs it (reading the file, writing alerts)."""
    events = tmp / "replay-events.jsonl"
    if not events.exists():
        events.write_bytes(b"".join(line + b"\n" for line in lines))
    started = time.perf_counter()
    code = cli_main(["replay", str(events), "--out", str(tmp / "replay-alerts.jsonl"), "--quiet"])
    elapsed = time.perf_counter() - started
    if code != 0:
        msg = f"rayworker replay exited {code}"
        raise RuntimeError(msg)
    return len(lines) / elapsed


async def pipeline_rate(
    lines: list[bytes],
    *,
    shards: int,
    per_entry: int,
    offered: float | None,
    tmp: Path,
    read_entries: int | None = None,
    checkpoints: bool = False,
) -> tuple[float, list[float]]:
    """(b)/(c): events/s through the pipeline, and per-batch latencies (ms) to the ack.

    ``read_entries``: entries per read (None: the settings' default); ``checkpoints``: run it
    as ``rayworker run`` does, recoverable, with a checkpoint every 2 s (entries are
    acknowledged once a checkpoint covers them)."""
    token = secrets.token_hex(4)
    reads = {} if read_entries is None else {"read_count": read_entries}
    settings = load_settings(
        alerts_dsn=f"sqlite:///{tmp / f'alerts-{token}.db'}",
        metrics_url=REDIS,
        metrics_prefix=f"rwbench-{token}",
        stream_url=REDIS,
        stream_key=f"rwbench:{token}:events",
        dead_letter_stream=f"rwbench:{token}:dead",
        consumer_group="bench",
        consumer_name="bench-1",
        shards=shards,
        block_ms=20,
        max_future_s=None,
        checkpoint_interval_s=2.0 if checkpoints else 0.0,
        **reads,
    )
    client = aioredis.Redis.from_url(REDIS)
    producer = StreamProducer(client, stream=settings.stream_key)
    sent_at: dict[str, float] = {}
    pipeline = Pipeline(settings, recoverable=checkpoints)
    await pipeline.start(migrate=True)
    consumer = StreamConsumer.from_settings(settings, replays_pending=checkpoints)
    await consumer.ensure_group()
    if offered is None:
        await producer.add_events(lines, per_entry=per_entry)
    stop = asyncio.Event()
    source = StreamBatches(consumer, stop)
    latencies: list[float] = []

    async def ack(tokens: list[list[str]]) -> None:
        await source.ack(tokens)
        now = time.perf_counter()
        for ids in tokens:
            first = min((sent_at[i] for i in ids if i in sent_at), default=None)
            if first is not None:
                latencies.append((now - first) * 1000)

    async def produce() -> None:
        chunk = per_entry * 20
        started = time.perf_counter()
        for i in range(0, len(lines), chunk):
            ahead = i / offered - (time.perf_counter() - started) if offered else 0
            if ahead > 0:
                await asyncio.sleep(ahead)
            now = time.perf_counter()
            for entry in await producer.add_events(lines[i : i + chunk], per_entry=per_entry):
                sent_at[entry] = now

    async def watch() -> None:
        while True:
            await asyncio.sleep(0.05)
            # Redis may not know the undelivered count (counted as 0), so the router's own
            # count says when every event has been read.
            seen = (await pipeline.router.stats.remote()).get("events", 0)
            lag = await consumer.lag()
            if seen == len(lines) and lag.pending == 0:
                stop.set()
                return

    started = time.perf_counter()
    tasks = [asyncio.create_task(watch())]
    if offered is not None:
        tasks.append(asyncio.create_task(produce()))
    await pipeline.pump(
        source.__aiter__(),
        ack=ack,
        dead_letter=source.dead_letter,
        stop=stop,
        replay=source.replay if checkpoints else None,
    )
    elapsed = time.perf_counter() - started
    for task in tasks:
        await task
    pipeline.stop()
    await consumer.close()
    keys = [k async for k in client.scan_iter(match=f"rwbench*{token}*", count=1000)]
    for i in range(0, len(keys), 1000):
        await client.delete(*keys[i : i + 1000])
    await client.aclose()
    return len(lines) / elapsed, latencies


def imbalance(events: int, shards: int) -> dict[str, float]:
    """(d) max/mean events per shard under the router's partitioning, Zipf tenants.

    Three layouts: round-robin key groups; the default, round-robin with the live load
    balance (:class:`~rayworker.balance.LoadBalancer` with the settings' default policy,
    judged every 20,000 events as if each read were ``check_every_s`` apart, moving key
    groups when it says so, as the pump does); and a load-aware plan (``rayworker shards
    plan``) made from a different sample of the same fleet (another seed: another day's
    traffic), so that plan is judged on traffic it never saw.
    """

    def workload(seed: int) -> list[bytes]:
        config = SyntheticConfig(events=events, tenants=100, zipf_a=1.1, seed=seed)
        return list(generate(config))

    def route(assignment: Assignment, balancer: LoadBalancer | None) -> tuple[float, float, int]:
        router = Partitioner(builtin_pack(), assignment, DetectorConfig(max_future_s=None))
        per_shard = np.zeros(shards)
        since = np.zeros(shards)
        moved_at = -1
        for n, i in enumerate(range(0, len(lines), 20_000)):
            for shard, sub in router.split_lines(lines[i : i + 20_000]).shards.items():
                per_shard[shard] += len(sub)
                since[shard] += len(sub)
            if balancer is None:
                continue
            now = n * balancer.policy.check_every_s
            planned = balancer.observe(now, router.assignment, router.load)
            if planned is not None:
                router.reassign(planned)
                balancer.changed(now, router.load)
                since[:] = 0
                moved_at = i + 20_000
        after = float(since.max() / since.mean()) if since.sum() else float("nan")
        return float(per_shard.max() / per_shard.mean()), after, moved_at

    history = workload(12)
    plan = plan_shards(
        (history[i : i + 20_000] for i in range(0, len(history), 20_000)),
        builtin_pack(),
        shards=shards,
        groups=256,
    )
    lines = workload(11)
    round_robin, _, _ = route(Assignment.balanced(shards), None)
    live, after, moved_at = route(Assignment.balanced(shards), LoadBalancer(BalancePolicy()))
    planned, _, _ = route(plan.assignment, None)
    return {
        "round_robin": round_robin,
        "live": live,
        "live_after": after,
        "moved_at": float(moved_at),
        "planned": planned,
    }


def pipeline_workload(events: int) -> list[bytes]:
    """The synthetic events of (a)-(c): 100 Zipf tenants, about 10k principals, seed 5."""
    return list(generate(SyntheticConfig(events=events, tenants=100, principals=10_000, seed=5)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--single-events", type=int, default=200_000, help="one-per-entry run")
    parser.add_argument("--latency-events", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=20_000.0)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--imbalance-only", action="store_true", help="only (d); no Ray")
    parser.add_argument("--latency-only", action="store_true", help="only (c)")
    parser.add_argument(
        "--throughput-only", action="store_true", help="only (b), with (a) and (a') around it"
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="(c), or (b) with --throughput-only, this many times (one run is a noisy sample)",
    )
    args = parser.parse_args()
    if args.imbalance_only:
        print_imbalance(min(args.events, 300_000))
        return
    if args.throughput_only:
        print_throughput(pipeline_workload(args.events), args.shards, args.runs)
        return
    if args.latency_only:
        lines = pipeline_workload(args.latency_events)
        p99s = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                p99s.append(print_latency(lines, args.rate, args.shards, Path(tmp)))
        if args.runs > 1:
            met = sum(p <= 250 for p in p99s)
            print(
                f"(c) p99 over {args.runs} runs: median {np.median(p99s):,.0f} ms;"
                f" {met} of {args.runs} within 250 ms"
            )
        return
    lines = pipeline_workload(args.events)
    print(f"{len(lines):,} synthetic events, {args.shards} shards, {os.cpu_count()} cores")
    cores = [core_rate(lines)]
    print(f"(a) single-process core:            {cores[0]:>10,.0f} events/s")

    def core_again(label: str) -> float:
        """The mean core rate around the run just made (measured again now)."""
        cores.append(core_rate(lines))
        print(f"(a) single-process core, after {label}: {cores[-1]:>10,.0f} events/s")
        return (cores[-2] + cores[-1]) / 2

    with tempfile.TemporaryDirectory() as tmp:
        replays = [replay_rate(lines, Path(tmp))]
        print(f"(a') `rayworker replay`:               {replays[0]:>10,.0f} events/s")
        batched, _ = asyncio.run(
            pipeline_rate(lines, shards=args.shards, per_entry=500, offered=None, tmp=Path(tmp))
        )
        base = core_again("(b)")
        replays.append(replay_rate(lines, Path(tmp)))
        print(f"(a') `rayworker replay`, after (b):    {replays[1]:>10,.0f} events/s")
        print(
            f"(b) pipeline, 500 events per entry:  {batched:>10,.0f} events/s"
            f"   ratio to (a) {batched / base:.2f}, to (a') {batched / (sum(replays) / 2):.2f}"
            " (target >= 0.5)"
        )
        recoverable, _ = asyncio.run(
            pipeline_rate(
                lines,
                shards=args.shards,
                per_entry=500,
                offered=None,
                tmp=Path(tmp),
                checkpoints=True,
            )
        )
        base = core_again('(b")')
        print(
            f'(b") the same, checkpoints every 2 s: {recoverable:>10,.0f} events/s'
            f"   ratio to (a) {recoverable / base:.2f} (as `rayworker run` runs)"
        )
        single_lines = lines[: args.single_events]
        single, _ = asyncio.run(
            pipeline_rate(
                single_lines,
                shards=args.shards,
                per_entry=1,
                offered=None,
                tmp=Path(tmp),
                read_entries=5000,
            )
        )
        print(
            f"(b') pipeline, 1 event per entry:    {single:>10,.0f} events/s"
            f"   ratio to (a) {single / base:.2f}"
        )
        print_latency(lines[: args.latency_events], args.rate, args.shards, Path(tmp))
    print_imbalance(min(args.events, 300_000))


def print_throughput(lines: list[bytes], shards: int, runs: int) -> None:
    """(b) ``runs`` times on one Ray, each between measurements of (a) and (a')."""
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(runs):
            before = core_rate(lines)
            replay = replay_rate(lines, Path(tmp))
            rate, _ = asyncio.run(
                pipeline_rate(lines, shards=shards, per_entry=500, offered=None, tmp=Path(tmp))
            )
            after = core_rate(lines)
            core = (before + after) / 2
            print(
                f"(b) pipeline, 500 events per entry: {rate:,.0f} events/s; (a) {before:,.0f} /"
                f" {after:,.0f}, (a') {replay:,.0f}; ratio to (a) {rate / core:.2f},"
                f" to (a') {rate / replay:.2f} (target >= 0.5)",
                flush=True,
            )


def print_latency(lines: list[bytes], rate: float, shards: int, tmp: Path) -> float:
    """Measure and print (c); returns its p99."""
    _, lat = asyncio.run(pipeline_rate(lines, shards=shards, per_entry=100, offered=rate, tmp=tmp))
    p50, p90, p99 = np.percentile(lat, [50, 90, 99]) if lat else (float("nan"),) * 3
    print(
        f"(c) latency at {rate:,.0f} events/s offered: "
        f"p50 {p50:,.0f} ms, p90 {p90:,.0f} ms, p99 {p99:,.0f} ms (target p99 <= 250)"
    )
    return float(p99)


def print_imbalance(events: int) -> None:
    """Print (d)."""
    d = imbalance(events, 8)
    print(
        f"(d) imbalance, 8 shards, {events:,} Zipf-tenant events, max/mean events per shard "
        "(target <= 1.25):"
    )
    print(f"    round-robin key groups, never moved:       {d['round_robin']:.3f}")
    print(
        f"    round-robin + live balance (the default):  {d['live']:.3f} over the run; "
        f"{d['live_after']:.3f} after it moved key groups at event {d['moved_at']:,.0f}"
    )
    print(f"    load-aware plan from other traffic:        {d['planned']:.3f}")


if __name__ == "__main__":
    main()
