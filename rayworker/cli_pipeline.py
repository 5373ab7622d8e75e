"""``rayworker run``, ``demo``, ``check`` and ``scale``: the pipeline's commands.

``run`` is production: Redis Streams in (or a JSONL file), PostgreSQL and Redis out, an
existing Ray cluster (``RAY_ADDRESS``) or a local one, health on Serve. ``demo`` is the same
pipeline on embedded defaults: a local Ray, synthetic traffic with labelled attacks, SQLite
alerts and in-memory metrics, with live throughput and an alerts table in the terminal.
SIGTERM and SIGINT stop reading, drain what is in flight, flush the sinks and exit 0.
Rejected and late events go to the dead-letter stream, or for a file source (and the demo) to
a JSONL file beside the input (:class:`~rayworker.pipeline.sources.FileDeadLetters`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from rayworker.cli_common import utc_when
from rayworker.errors import ConfigError, InputError
from rayworker.settings import Settings, load_settings
from rayworker.sinks.factory import open_alert_store

__all__ = ["register"]

_DEMO_DB = "rayworker-demo.db"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``run``, ``demo``, ``check`` and ``scale`` to the ``rayworker`` command."""
    run = commands.add_parser(
        "run",
        help="run the pipeline: Redis Streams (or a JSONL file) in, alerts and metrics out",
        description=(
            "Start shards, router and health endpoints and process events until SIGTERM or "
            "SIGINT. Settings come from RAYWORKER_* variables and --config; see README."
        ),
    )
    run.add_argument("--config", type=Path, help="TOML or YAML settings file")
    run.add_argument("--events", type=Path, help="read this JSONL file instead of the stream")
    run.add_argument(
        "--dead-letters",
        type=Path,
        metavar="FILE",
        help=(
            "with --events: append rejected and late events here, with reasons (JSONL; "
            "default: EVENTS' name with .dead-letters.jsonl, beside it)"
        ),
    )
    run.add_argument("--migrate", action="store_true", help="apply pending alert-store migrations")
    run.add_argument("--no-serve", action="store_true", help="do not start the health endpoints")
    run.add_argument(
        "--fresh-state",
        action="store_true",
        help=(
            "discard the checkpoints of an earlier run (its windows and suppression) instead "
            "of resuming from them"
        ),
    )
    run.add_argument("--quiet", action="store_true", help="no periodic status lines")
    run.set_defaults(handler=_run)

    demo = commands.add_parser(
        "demo",
        help="the whole pipeline on embedded defaults with synthetic attacks (no servers)",
    )
    demo.add_argument("--events", type=int, default=200_000, help="events to generate")
    demo.add_argument("--rate", type=float, default=None, help="events per second (default: max)")
    demo.add_argument("--tenants", type=int, default=20)
    demo.add_argument("--shards", type=int, default=2)
    demo.add_argument("--db", default=_DEMO_DB, help=f"SQLite alerts file (default {_DEMO_DB})")
    demo.add_argument("--no-serve", action="store_true", help="do not start the health endpoints")
    demo.add_argument(
        "--keep-serving", action="store_true", help="after the run, serve health until Ctrl-C"
    )
    demo.set_defaults(handler=_demo)

    check = commands.add_parser("check", help="print the health of a running deployment")
    check.add_argument("--config", type=Path, help="TOML or YAML settings file")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(handler=_check)

    scale = commands.add_parser(
        "scale",
        help="change the number of detector shards of a running pipeline (moves state live)",
        description=(
            "Ask the running pipeline (found by RAY_ADDRESS or ray_address, and the Ray "
            "namespace) for N shards. Between two batches it pauses ingest, moves key groups "
            "with their window state to the new shards (or off the removed ones), checkpoints "
            "the new layout and resumes; no event is lost or counted twice."
        ),
    )
    scale.add_argument("--shards", type=int, required=True, help="the number of shards wanted")
    scale.add_argument("--config", type=Path, help="TOML or YAML settings file")
    scale.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the hand-off"
    )
    scale.set_defaults(handler=_scale)


# --- run ----------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.events is not None:
        overrides["source"] = "jsonl"
    elif args.dead_letters is not None:
        msg = "--dead-letters is for a file source; a stream's go to dead_letter_stream"
        raise ConfigError(msg)
    settings = load_settings(args.config, **overrides)
    return asyncio.run(_run_async(settings, args))


async def _run_async(settings: Settings, args: argparse.Namespace) -> int:
    from rayworker.pipeline.app import Pipeline  # noqa: PLC0415 - keeps `rayworker --help` fast
    from rayworker.pipeline.pump import consumer_lag  # noqa: PLC0415
    from rayworker.pipeline.sources import (  # noqa: PLC0415
        FileDeadLetters,
        StreamBatches,
        file_batches,
        paced_batches,
    )

    err = Console(file=sys.stderr, highlight=False)
    err.print(f"settings: {json.dumps(settings.public(), default=str)}")
    dead_letters: FileDeadLetters | None = None
    if settings.source != "redis":
        if args.events is None:
            msg = "source is jsonl but no file was given; pass --events FILE.jsonl"
            raise ConfigError(msg)
        if not args.events.is_file():
            msg = f"no events file at {str(args.events)!r}; pass --events with a JSONL file"
            raise InputError(msg)
        # Opened before anything starts: a path that cannot be written fails at once.
        dead_letters = FileDeadLetters(args.dead_letters or _dead_letters_beside(args.events))
    pipeline = Pipeline(settings, recoverable=settings.source == "redis")
    await pipeline.start(migrate=args.migrate, fresh_state=args.fresh_state)
    err.print(f"ray: {pipeline.address}; {len(pipeline.shards)} shards, router started")
    stop = _stop_on_signals()

    last_line = [0.0]

    def progress(stats: Any) -> None:
        if not args.quiet and time.monotonic() - last_line[0] >= 5:
            last_line[0] = time.monotonic()
            err.print(
                f"{stats.events:,} events ({stats.rate:,.0f}/s), {stats.rejected:,} rejected, "
                f"{stats.late:,} late, {stats.acked:,} batches acked"
            )

    serve_started = False
    try:
        if settings.source == "redis":
            from rayworker.ingest.redis_streams import StreamConsumer  # noqa: PLC0415

            consumer = StreamConsumer.from_settings(settings, replays_pending=pipeline.recoverable)
            try:
                await consumer.ensure_group()
                source = StreamBatches(consumer, stop, poison_attempts=settings.poison_attempts)
                # Serve last: /readyz reports the source's lag, so the source exists first.
                serve_started = _serve_unless(args.no_serve, settings, err)
                stats = await pipeline.pump(
                    source.__aiter__(),
                    ack=source.ack,
                    dead_letter=source.dead_letter,
                    stop=stop,
                    on_progress=progress,
                    replay=source.replay,
                    lag=consumer_lag(consumer),
                )
            finally:
                await consumer.close()
        else:
            serve_started = _serve_unless(args.no_serve, settings, err)
            stats = await pipeline.pump(
                paced_batches(file_batches(args.events), stop=stop),
                stop=stop,
                on_progress=progress,
                bounded=True,
                dead_letter=dead_letters,
            )
        err.print(
            f"stopped after {stats.events:,} events in {stats.elapsed_s:.1f} s "
            f"({stats.rate:,.0f}/s); {stats.rejected:,} rejected, {stats.late:,} late"
            + (f", {stats.recoveries - 1} recoveries" if stats.recoveries > 1 else "")
        )
        if dead_letters is not None and dead_letters.written:
            err.print(f"{dead_letters.written:,} dead letters appended to {dead_letters.path}")
    finally:
        if dead_letters is not None:
            dead_letters.close()
        await pipeline.flush_telemetry()
        pipeline.stop()
        if serve_started and _attached(settings):
            _stop_serve()
    return 0


def _serve_unless(no_serve: bool, settings: Settings, console: Console) -> bool:
    if no_serve:
        return False
    _start_serve(settings, console)
    return True


def _dead_letters_beside(events: Path) -> Path:
    """The dead-letter file beside an input or database file, in the same directory:
    ``audit.jsonl`` -> ``audit.dead-letters.jsonl``."""
    return events.with_name(f"{events.stem}.dead-letters.jsonl")


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _start_serve(settings: Settings, console: Console) -> None:
    from rayworker.serve_app import deploy  # noqa: PLC0415

    deploy(settings)
    base = f"http://{settings.serve_host}:{settings.serve_port}"
    console.print(f"health: {base}/healthz  {base}/readyz  {base}/metrics")


def _attached(settings: Settings) -> bool:
    """Whether Ray is a cluster this process attached to, whose Serve it must shut down. A
    cluster this process started goes at exit with Serve in it; shutting Serve down first
    only makes Ray log its controller's self-kill as a failed task."""
    return bool(settings.ray_address or os.environ.get("RAY_ADDRESS"))


def _stop_serve() -> None:
    from rayworker.serve_app import shutdown  # noqa: PLC0415

    shutdown()


# --- demo ---------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    settings = load_settings(
        alerts_dsn=f"sqlite:///{args.db}",
        metrics_url="memory://",
        source="synthetic",
        shards=args.shards,
        ray_address=None,
    )
    return asyncio.run(_demo_async(settings, args))


async def _demo_async(settings: Settings, args: argparse.Namespace) -> int:
    from rayworker.pipeline.app import Pipeline  # noqa: PLC0415
    from rayworker.pipeline.sources import FileDeadLetters, paced_batches  # noqa: PLC0415
    from rayworker.sources.synthetic import SyntheticConfig, generate_labelled  # noqa: PLC0415

    console = Console(highlight=False)
    console.print("[bold]rayworker demo[/]: starting a local Ray (about 10 s)...")
    config = SyntheticConfig(
        events=args.events,
        tenants=args.tenants,
        principals=max(args.tenants, 2000),
        duration_s=3600.0,
        attacks_per_tenant_hour=2.0,
        disorder_ms=2000,
    )
    lines, labels = generate_labelled(config)
    dead_letters = FileDeadLetters(_dead_letters_beside(Path(args.db)))
    pipeline = Pipeline(settings)
    await pipeline.start(migrate=True)
    stop = _stop_on_signals()
    if not args.no_serve:
        _start_serve(settings, console)
    console.print(
        f"{len(lines):,} synthetic events from {config.tenants} tenants with "
        f"{len(labels)} injected attacks; {settings.shards} shards; alerts in {args.db}"
    )
    chunks = [lines[i : i + 2000] for i in range(0, len(lines), 2000)]
    with Live(console=console, refresh_per_second=4) as live:
        state: dict[str, Any] = {"stats": None}

        def progress(stats: Any) -> None:
            state["stats"] = stats

        async def refresh() -> None:
            while True:
                live.update(await _demo_view(settings, state["stats"], len(lines)))
                await asyncio.sleep(0.5)

        painter = asyncio.create_task(refresh())
        try:
            stats = await pipeline.pump(
                paced_batches(chunks, rate=args.rate, stop=stop),
                stop=stop,
                on_progress=progress,
                bounded=True,
                dead_letter=dead_letters,
            )
        finally:
            painter.cancel()
            dead_letters.close()
        state["stats"] = stats
        live.update(await _demo_view(settings, stats, len(lines)))
    if not console.is_terminal:
        # Live leaves its last frame without a newline when it writes to a file or a pipe.
        console.line()
    shard_stats = await pipeline.shard_stats()
    console.print(
        f"done: {stats.events:,} events in {stats.elapsed_s:.1f} s ({stats.rate:,.0f}/s); "
        "event copies per shard (an event goes to each shard owning one of its keys): "
        + ", ".join(f"{s['events']:,}" for s in shard_stats)
    )
    if dead_letters.written:
        console.print(f"{dead_letters.written:,} rejected or late events in {dead_letters.path}")
    if args.keep_serving and not args.no_serve:
        console.print("serving health until Ctrl-C ...")
        await stop.wait()
    await pipeline.flush_telemetry()
    pipeline.stop()
    if not args.no_serve and _attached(settings):
        _stop_serve()
    console.print(
        f"alerts stay in {args.db}: try `rayworker alerts list --alerts-dsn "
        f"sqlite:///{args.db} --tenant <tenant>`"
    )
    return 0


async def _demo_view(settings: Settings, stats: Any, total: int) -> Group:
    counts = Table(show_header=False, box=None)
    if stats is not None:
        counts.add_row("events", f"{stats.events:,} / {total:,}")
        counts.add_row("events/s", f"{stats.rate:,.0f}")
        counts.add_row("rejected / late", f"{stats.rejected:,} / {stats.late:,}")
    alerts = Table(title="latest alerts", title_justify="left")
    for column in ("tenant", "rule", "severity", "occurrences", "first seen"):
        alerts.add_column(column)
    for row in await _latest_alerts(settings, 12):
        alerts.add_row(
            row.tenant_id, row.rule_id, row.severity, str(row.occurrences), utc_when(row.first_seen)
        )
    return Group(counts, alerts)


async def _latest_alerts(settings: Settings, limit: int) -> list[Any]:
    store = await open_alert_store(settings)
    try:
        tenants = await _tenants(settings)
        rows: list[Any] = []
        for tenant in tenants:
            rows.extend(await store.list(tenant, limit=limit))
        rows.sort(key=lambda r: r.first_seen, reverse=True)
        return rows[:limit]
    finally:
        await store.close()


async def _tenants(settings: Settings) -> list[str]:
    from rayworker.sinks.factory import sqlite_path  # noqa: PLC0415

    if settings.alerts_backend != "sqlite":
        return []
    import sqlite3  # noqa: PLC0415

    path = sqlite_path(settings.alerts_dsn.get_secret_value())

    def read() -> list[str]:
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                return [r[0] for r in conn.execute("SELECT DISTINCT tenant_id FROM alerts")]
        except sqlite3.Error:
            return []

    return await asyncio.to_thread(read)


# --- check --------------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    from rayworker.pipeline.runtime import connect_ray  # noqa: PLC0415
    from rayworker.serve_app import collect  # noqa: PLC0415

    settings = load_settings(args.config)
    address = settings.ray_address or os.environ.get("RAY_ADDRESS")
    # Attach only to a named cluster: starting a fresh local Ray would report on nothing.
    if address:
        try:
            connect_ray(address, namespace=settings.ray_namespace)
        except Exception as exc:  # noqa: BLE001 - no cluster is a health finding, not a crash
            print(f"warning: not connected to Ray ({type(exc).__name__}); Ray checks will fail")
    else:
        print("warning: RAY_ADDRESS is not set; router and shard checks report CRITICAL")
    report = asyncio.run(collect(settings))
    if args.json:
        print(json.dumps(report.to_json(), indent=2, default=str))
    else:
        console = Console(highlight=False)
        table = Table(title=f"rayworker health: {report.status}", title_justify="left")
        for column in ("component", "status", "message"):
            table.add_column(column)
        for name, component in sorted(report.components.items()):
            table.add_row(name, str(component.status), component.message)
        console.print(table)
    return 0 if report.http_status == 200 else 1


# --- scale --------------------------------------------------------------------------------------


def _scale(args: argparse.Namespace) -> int:
    import ray  # noqa: PLC0415 - keeps `rayworker --help` fast

    from rayworker.pipeline.router import ROUTER_NAME  # noqa: PLC0415
    from rayworker.pipeline.runtime import connect_ray  # noqa: PLC0415

    settings = load_settings(args.config)
    address = settings.ray_address or os.environ.get("RAY_ADDRESS")
    if not address:
        msg = (
            "RAY_ADDRESS is not set: point it at the cluster of the running pipeline "
            "(`rayworker run` prints the address it uses)"
        )
        raise ConfigError(msg)
    connect_ray(address, namespace=settings.ray_namespace)
    try:
        router = ray.get_actor(ROUTER_NAME, namespace=settings.ray_namespace)
    except ValueError:
        msg = (
            f"no rayworker pipeline is running in Ray namespace {settings.ray_namespace!r} "
            f"at {address}; start one with `rayworker run` or set RAYWORKER_RAY_NAMESPACE"
        )
        raise ConfigError(msg) from None
    try:
        answer: Any = ray.get(router.request_scale.remote(args.shards))
    except ray.exceptions.RayTaskError as exc:
        # The router's message (its last line) says what is wrong and how to fix it.
        last = str(exc).strip().splitlines()[-1]
        raise ConfigError(last.removeprefix(f"{ConfigError.__module__}.ConfigError: ")) from None
    request = int(answer)
    print(f"asked the pipeline for {args.shards} shards (request {request}); waiting ...")
    result: dict[str, Any] | None = ray.get(router.scale_result.remote(request, args.timeout))
    if result is None:
        print(
            f"no answer within {args.timeout:.0f} s: the pipeline carries the request out "
            "between two batches; check `rayworker check` for its progress"
        )
        return 1
    if not result.get("ok"):
        print(f"the rescale failed: {result.get('error')}")
        return 1
    print(
        f"now {len(result['shards'])} shards ({', '.join(map(str, result['shards']))}); "
        f"moved {result['moved_key_groups']} key groups; ingest paused "
        f"{result['paused_s']:.2f} s (drain {result['drain_s']:.2f} s, hand-off "
        f"{result['handoff_s']:.2f} s, checkpoint {result['checkpoint_s']:.2f} s)"
    )
    return 0
