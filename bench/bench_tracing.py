"""The cost of tracing (issue 5): pipeline throughput with tracing off, and at sampling 0,
0.01 and 1.0, as ratios to off, measured in one run so the ratios hold on a noisy machine.

Each run drains the same pre-loaded Redis stream (batched entries, no producer trace
context, so the sampling ratio decides every trace) through the full pipeline (router,
shards, SQLite alerts, in-memory metrics) until every entry is acknowledged. With tracing on,
every process exports over OTLP/HTTP to a receiver in this process that decodes each request
with opentelemetry-proto (as a collector would) and counts the spans; it runs in a process
of its own. Target: at most 5 %
cost at 0.01.

(b) repeats the router's and the shards' work (partitioning, detection, and their spans) in
this process without Ray, interleaving the modes, so that the tracing code's own cost shows
through the scheduling noise of a shared machine.

Run: .venv/bin/python bench/bench_tracing.py [--events 200000] [--shards 2] [--repeat 1]
     [--stage-repeat 5] [--stage-events 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import secrets
import statistics
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from rayworker.detect import DetectorConfig
from rayworker.ingest.redis_streams import StreamConsumer, StreamProducer
from rayworker.partition import Partitioner
from rayworker.pipeline.app import Pipeline
from rayworker.pipeline.shard import DetectorShard
from rayworker.pipeline.sources import StreamBatches
from rayworker.routing import Assignment
from rayworker.rules import builtin_pack
from rayworker.settings import TelemetrySettings, load_settings
from rayworker.sources.synthetic import SyntheticConfig, generate
from rayworker.telemetry.propagation import carrier_of
from rayworker.telemetry.setup import flush_tracing, setup_process
from rayworker.telemetry.spans import tracer
from rayworker.telemetry.traced import BatchTrace

REDIS = os.environ.get("RAYWORKER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
MODES: list[tuple[str, dict[str, Any]]] = [
    ("off", {"exporter": "none"}),
    ("sampling 0", {"exporter": "otlp", "sample_ratio": 0.0}),
    ("sampling 0.01", {"exporter": "otlp", "sample_ratio": 0.01}),
    ("sampling 1.0", {"exporter": "otlp", "sample_ratio": 1.0}),
]


def _serve(port: Any, count: Any) -> None:
    """The receiver process: decode each OTLP/HTTP request and count its spans."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = ExportTraceServiceRequest.FromString(body)
            spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            with count.get_lock():
                count.value += spans
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port.value = server.server_address[1]
    server.serve_forever()


class Receiver:
    """A local OTLP/HTTP receiver in a process of its own (as a collector would be), so
    decoding the exports does not compete with the pipeline's driver for its GIL."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._port = context.Value("i", 0)
        self._count = context.Value("q", 0)
        self.process = context.Process(target=_serve, args=(self._port, self._count), daemon=True)
        self.process.start()
        while not self._port.value:
            time.sleep(0.01)

    @property
    def spans(self) -> int:
        """Spans received so far."""
        return int(self._count.value)

    @property
    def endpoint(self) -> str:
        """The URL to export to."""
        return f"http://127.0.0.1:{self._port.value}/v1/traces"

    def close(self) -> None:
        """Stop the receiver process."""
        self.process.terminate()
        self.process.join()


async def drain_rate(
    lines: list[bytes], telemetry: dict[str, Any], *, shards: int, tmp: Path
) -> float:
    """Events/s through the pipeline from a pre-loaded stream until all entries are acked."""
    token = secrets.token_hex(4)
    settings = load_settings(
        alerts_dsn=f"sqlite:///{tmp / f'alerts-{token}.db'}",
        metrics_url="memory://",
        stream_url=REDIS,
        stream_key=f"rwbench:{token}:events",
        dead_letter_stream=f"rwbench:{token}:dead",
        consumer_group="bench",
        consumer_name="bench-1",
        ray_namespace=f"rwbench-{token}",
        shards=shards,
        read_count=10,
        block_ms=20,
        max_future_s=None,
        telemetry={**telemetry, "log_format": "text", "log_level": "WARNING"},
    )
    client = aioredis.Redis.from_url(REDIS)
    await StreamProducer(client, stream=settings.stream_key).add_events(lines, per_entry=500)
    pipeline = Pipeline(settings)
    await pipeline.start(migrate=True)
    consumer = StreamConsumer.from_settings(settings)
    await consumer.ensure_group()
    stop = asyncio.Event()
    source = StreamBatches(consumer, stop)

    async def watch() -> None:
        while True:
            await asyncio.sleep(0.05)
            seen = (await pipeline.router.stats.remote()).get("events", 0)
            if seen == len(lines) and (await consumer.lag()).pending == 0:
                stop.set()
                return

    started = time.perf_counter()
    watcher = asyncio.create_task(watch())
    await pipeline.pump(
        source.__aiter__(), ack=source.ack, dead_letter=source.dead_letter, stop=stop
    )
    elapsed = time.perf_counter() - started
    await watcher
    await pipeline.flush_telemetry()
    pipeline.stop()
    await consumer.close()
    await client.delete(settings.stream_key, settings.dead_letter_stream)
    await client.aclose()
    return len(lines) / elapsed


def stage_rate(lines: list[bytes], ratio: float | None, endpoint: str, shards: int) -> float:
    """(b) events per CPU-second of the router's and shards' work in this process, one
    2000-event batch at a time, with the spans each batch makes (None: tracing off). No Ray,
    and CPU time of this process (all its threads, the span exporter's included) rather than
    wall time, so other load on the machine hardly moves it."""
    settings = TelemetrySettings(
        exporter="none" if ratio is None else "otlp",
        otlp_endpoint=endpoint,
        sample_ratio=ratio or 0.0,
        log_level="WARNING",
    )
    setup_process(settings, component="bench", logs=False)
    traced = ratio is not None
    pack, config = builtin_pack(), DetectorConfig(max_future_s=None)
    partitioner = Partitioner(pack, Assignment.balanced(shards), config)
    detectors = {s: DetectorShard(s, pack, None, config, telemetry=settings) for s in range(shards)}
    started = time.process_time()
    for i in range(0, len(lines), 2000):
        chunk = lines[i : i + 2000]
        if not traced:
            for shard, sub in partitioner.split_lines(chunk).shards.items():
                detectors[shard].process(sub)
            continue
        with (
            tracer().start_as_current_span("rayworker.ingest"),
            tracer().start_as_current_span("rayworker.route"),
        ):
            with tracer().start_as_current_span("rayworker.validate"):
                part = partitioner.split_lines(chunk)
            route = carrier_of()
        for shard, sub in part.shards.items():
            detectors[shard].process(sub, BatchTrace(route) if route else None)
    flush_tracing()
    elapsed = time.process_time() - started
    return len(lines) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="runs per mode (best is kept)")
    parser.add_argument("--stage-repeat", type=int, default=5, help="in-process runs per mode")
    parser.add_argument("--stage-events", type=int, default=50_000, help="events per (b) run")
    args = parser.parse_args()
    lines = list(generate(SyntheticConfig(events=args.events, tenants=100, seed=5)))
    receiver = Receiver()
    print(f"{len(lines):,} synthetic events, {args.shards} shards, {os.cpu_count()} cores")
    best: dict[str, float] = {}
    spans: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for name, mode in MODES:
                telemetry = dict(mode)
                if telemetry["exporter"] == "otlp":
                    telemetry["otlp_endpoint"] = receiver.endpoint
                before = receiver.spans
                rate = asyncio.run(drain_rate(lines, telemetry, shards=args.shards, tmp=Path(tmp)))
                best[name] = max(rate, best.get(name, 0.0))
                spans[name] = receiver.spans - before
        ratios: dict[str, float | None] = {"off": None}
        ratios |= {name: mode["sample_ratio"] for name, mode in MODES[1:]}
        stages: dict[str, list[float]] = {name: [] for name in ratios}
        sample = lines[: args.stage_events]
        stage_rate(sample, None, receiver.endpoint, args.shards)  # warm-up, not counted
        for _ in range(args.stage_repeat):
            for name, ratio in ratios.items():
                stages[name].append(stage_rate(sample, ratio, receiver.endpoint, args.shards))
    print("(a) the whole pipeline on Ray, draining a pre-loaded stream (best of --repeat):")
    off = best["off"]
    for name, _ in MODES:
        cost = (1 - best[name] / off) * 100
        print(
            f"    tracing {name:<14} {best[name]:>10,.0f} events/s   ratio to off "
            f"{best[name] / off:.3f} ({cost:+.1f} % cost)   {spans[name]:,} spans exported"
        )
    print("(b) router + shard work in one process, no Ray, per CPU-second (median of runs):")
    medians = {name: statistics.median(rates) for name, rates in stages.items()}
    for name, rate in medians.items():
        cost = (1 - rate / medians["off"]) * 100
        print(
            f"    tracing {name:<14} {rate:>10,.0f} events/CPU-s ratio to off "
            f"{rate / medians['off']:.3f} ({cost:+.1f} % cost)"
        )
    print("target: <= 5 % cost at sampling 0.01")
    receiver.close()


if __name__ == "__main__":
    main()
