"""Node-loss drill: the fault drill of :mod:`rayworker.chaos` on a multi-node Ray cluster.

``python -m rayworker.node_drill --redis-url URL --alerts-dsn DSN`` starts a Ray cluster of
several nodes on this machine (:class:`ray.cluster_utils.Cluster`: a head node, where this
driver runs, plus worker nodes, all on 127.0.0.1 with the GCS on a free port, never Redis's
6379), and runs :func:`~rayworker.chaos.run_drill` on it with a plan that

1. once a share of the events has been read, removes a worker node that holds a shard (one
   without the router when there is one), its processes killed without a graceful shutdown
   unless ``--graceful``; Ray restarts the lost actors on the surviving nodes and the
   pipeline recovers from its checkpoints by itself;
2. later adds a fresh worker node and rescales the pipeline from 2 to ``--scale-to`` shards
   (:meth:`~rayworker.pipeline.app.Pipeline.request_scale`: the running pump drains, moves
   key groups with their state to the new shard and checkpoints the new layout).

It writes one JSON object (to ``--out``, and as one line on stdout, where Ray's log monitor
may add lines of its own): the drill's report (alerts expected and persisted, duplicates,
lost, entries acknowledged before a checkpoint covered them, the recovery time of the node
loss), where each actor ran after each step, and what each step did. Then it tears the
cluster down. It runs in its own process because a process holds one Ray connection, and a
test session shares another cluster (``tests/integration/test_node_loss.py`` runs it in a
subprocess and asserts on the JSON).

The cluster keeps its files (and its address, which a plain ``ray.init()`` on this machine
would otherwise pick up and join) in a temporary directory of its own (``RAY_TMPDIR``).

Starting a node installs signal handlers, which only the main thread may do, so the main
thread owns the cluster: the drill's event loop runs in a second thread and asks the main
thread to add or remove nodes (:meth:`NodeDrill.on_main`) instead of blocking its loop.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import queue
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Read by Ray when it is first imported: its nodes then advertise 127.0.0.1 only.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import ray
from ray.cluster_utils import Cluster

from rayworker.chaos import (
    DrillReport,
    FaultPlan,
    Recovery,
    await_recovery,
    drill_settings,
    drill_workload,
    run_drill,
    scratch_schema,
)
from rayworker.errors import ConfigError
from rayworker.pipeline.app import Pipeline
from rayworker.pipeline.router import ROUTER_NAME
from rayworker.pipeline.runtime import SYSTEM_CONFIG, connect_ray
from rayworker.settings import Settings

__all__ = ["NodeDrill", "main", "node_plan"]

_LOCALHOST = "127.0.0.1"
_SYSTEM_CONFIG = {
    **SYSTEM_CONFIG,  # what every rayworker cluster runs with
    # A node whose raylet was killed is declared dead after about 3 x 0.5 s instead of the
    # default 5 x 3 s; only then does Ray restart its actors elsewhere.
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}
_log = logging.getLogger("rayworker.node_drill")


@dataclasses.dataclass(slots=True)
class NodeDrill:
    """The cluster of one drill and a log of what its plan did to it."""

    cluster: Cluster
    worker_cpus: int
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    """Node id (hex) -> ``head`` or ``worker-N``, in the order the nodes were added."""
    steps: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    placements: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    """Moment -> actor name -> label of the node it is alive on."""
    calls: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
        dataclasses.field(default_factory=queue.Queue)
    )
    """Cluster operations the drill's loop asked the main thread for."""

    @classmethod
    def start(cls, *, head_cpus: int, workers: int, worker_cpus: int) -> NodeDrill:
        """A head node (this driver's) and ``workers`` worker nodes, all alive."""
        cluster = Cluster()
        head = cluster.add_node(
            num_cpus=head_cpus,
            node_ip_address=_LOCALHOST,
            include_dashboard=False,
            _system_config=dict(_SYSTEM_CONFIG),  # ray.init adds its defaults to it
        )
        drill = cls(cluster, worker_cpus)
        drill.labels[head.node_id] = "head"
        for _ in range(workers):
            drill.add_worker()
        cluster.wait_for_nodes()
        return drill

    def add_worker(self) -> str:
        """Add a worker node and wait until it is alive; returns its label."""
        node = self.cluster.add_node(num_cpus=self.worker_cpus, node_ip_address=_LOCALHOST)
        label = f"worker-{len(self.labels)}"
        self.labels[node.node_id] = label
        return label

    def remove_worker(self, label: str, *, graceful: bool) -> None:
        """Remove the worker node ``label`` (its raylet and every process on it)."""
        node = next(n for n in self.cluster.worker_nodes if self.labels[n.node_id] == label)
        self.cluster.remove_node(node, allow_graceful=graceful)

    def placement(self) -> dict[str, str]:
        """Actor name -> label of the node each live named actor runs on."""
        table: dict[str, dict[str, Any]] = self.cluster.global_state.actor_table(None)
        return {
            info["Name"]: self.labels.get(info["Address"]["NodeID"], "unknown")
            for info in table.values()
            if info["Name"] and info["State"] == "ALIVE"
        }

    async def on_main(self, call: Callable[[], Any]) -> Any:
        """Run ``call`` in the main thread (see :meth:`serve`) and return its result."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.calls.put((call, future))
        return await asyncio.wrap_future(future)

    def serve(self, until: concurrent.futures.Future[Any]) -> None:
        """In the main thread: run what :meth:`on_main` asks for until ``until`` is done."""
        while not until.done():
            try:
                call, future = self.calls.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                future.set_result(call())
            except Exception as exc:  # noqa: BLE001 - handed to the caller, which raises it
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Disconnect and remove every node."""
        ray.shutdown()
        self.cluster.shutdown()  # type: ignore[no-untyped-call] # Ray leaves it unannotated


async def _read(pipeline: Pipeline) -> int:
    """Events the router has read so far (0 while it restarts)."""
    with contextlib.suppress(ray.exceptions.RayActorError):
        events: int = (await pipeline.router.stats.remote()).get("events", 0)
        return events
    return 0


async def _until_read(pipeline: Pipeline, events: int, finished: Callable[[], bool]) -> int:
    """Wait until the router has read ``events`` events (or everything is acknowledged)."""
    while (read := await _read(pipeline)) < events and not finished():
        await asyncio.sleep(0.05)
    return read


def _victim(placement: dict[str, str]) -> str:
    """The worker node to remove: one holding a shard, preferably not the router."""
    shards = {node for name, node in placement.items() if name != ROUTER_NAME}
    workers = sorted(node for node in shards if node.startswith("worker-"))
    if not workers:
        msg = f"no worker node holds a shard (placement {placement}); give the head fewer CPUs"
        raise ConfigError(msg)
    without_router = [node for node in workers if node != placement.get(ROUTER_NAME)]
    return (without_router or workers)[0]


def node_plan(
    drill: NodeDrill, *, remove_at: float, add_at: float, graceful: bool, scale_to: int | None
) -> Callable[[DrillReport], FaultPlan]:
    """A plan: remove a worker node holding a shard once ``remove_at`` of the events were read,
    wait for the pipeline to recover, then add a worker node once ``add_at`` were read and
    (``scale_to``) rescale the pipeline to that many shards, moving key groups live."""

    def make(report: DrillReport) -> FaultPlan:
        async def plan(pipeline: Pipeline, finished: Callable[[], bool]) -> None:
            read = await _until_read(pipeline, int(report.events * remove_at), finished)
            drill.placements["before_removal"] = placement = drill.placement()
            victim = _victim(placement)
            on_victim = sorted(name for name, node in placement.items() if node == victim)
            _log.warning("removing %s (holding %s)", victim, on_victim)
            # Epochs rise from the wall clock across router restarts, so a new one tells a
            # recovery apart even when the router was on the removed node.
            before = (await pipeline.router.stats.remote())["epoch"]
            killed = time.monotonic()
            await drill.on_main(lambda: drill.remove_worker(victim, graceful=graceful))
            removed_s = time.monotonic() - killed
            recovered, progress = await await_recovery(pipeline, before, killed, finished)
            report.recoveries.append(Recovery(f"node:{victim}", recovered, progress, at=killed))
            drill.placements["after_recovery"] = drill.placement()
            drill.steps.append(
                {
                    "step": "remove_node",
                    "node": victim,
                    "graceful": graceful,
                    "actors": on_victim,
                    "at_events": read,
                    "removal_s": round(removed_s, 3),
                    "recovered_s": round(recovered, 3),
                    "progress_s": round(progress, 3),
                }
            )

            read = await _until_read(pipeline, int(report.events * add_at), finished)
            started = time.monotonic()
            label = await drill.on_main(drill.add_worker)
            drill.steps.append(
                {
                    "step": "add_node",
                    "node": label,
                    "at_events": read,
                    "took_s": round(time.monotonic() - started, 3),
                }
            )
            drill.placements["after_add"] = drill.placement()
            if scale_to is not None:
                await _scale(drill, pipeline, scale_to)

        return plan

    return make


async def _scale(drill: NodeDrill, pipeline: Pipeline, shards: int) -> None:
    """Ask the running pipeline for ``shards`` shards and wait for the hand-off's outcome."""
    read = await _read(pipeline)
    started = time.monotonic()
    request = await pipeline.request_scale(shards)
    result = await pipeline.router.scale_result.remote(request, 120)
    stats = await pipeline.router.stats.remote()
    drill.steps.append(
        {
            "step": "scale",
            "shards": shards,
            "at_events": read,
            "took_s": round(time.monotonic() - started, 3),
            "result": result,
            "key_groups": stats["key_groups"],
        }
    )
    drill.placements["after_scale"] = drill.placement()


def _report_json(report: DrillReport, drill: NodeDrill) -> dict[str, Any]:
    """The drill's outcome as plain data (what a test or an operator checks)."""
    return {
        "report": {
            "events": report.events,
            "entries": report.entries,
            "written_entries": len(report.written),
            "delivered_entries": len(report.delivered),
            "delivered_events": report.delivered_events,
            "finished": report.finished,
            "expected": report.expected,
            "stored": report.stored,
            "stored_rows": report.stored_rows,
            "lost": report.lost,
            "duplicates": report.duplicates,
            "acked_uncovered": report.acked_uncovered,
            "acked_unchecked": report.acked_unchecked,
            "unverified_acks": report.unverified_acks,
            "poisoned": report.poisoned,
            "recoveries": [dataclasses.asdict(r) for r in report.recoveries],
            "pump": dataclasses.asdict(report.pump) if report.pump is not None else None,
            "router": report.router,
            "elapsed_s": round(report.elapsed_s, 3),
        },
        "nodes": drill.labels,
        "steps": drill.steps,
        "placements": drill.placements,
    }


async def _drill(args: argparse.Namespace, drill: NodeDrill, settings: Settings) -> dict[str, Any]:
    lines = drill_workload(args.events, seed=args.seed)
    plan = node_plan(
        drill,
        remove_at=args.remove_at,
        add_at=args.add_at,
        graceful=args.graceful,
        scale_to=args.scale_to or None,
    )
    report = await run_drill(settings, lines, plan, rate=args.rate)
    return _report_json(report, drill)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rayworker.node_drill",
        description="Run a fault drill on a multi-node Ray cluster, removing and adding a node.",
    )
    parser.add_argument("--redis-url", required=True, help="the stream and metrics Redis")
    parser.add_argument("--alerts-dsn", required=True, help="the alert store (PostgreSQL DSN)")
    parser.add_argument("--events", type=int, default=200_000, help="events to produce")
    parser.add_argument("--rate", type=float, default=8_000.0, help="events/s produced")
    parser.add_argument("--seed", type=int, default=3, help="seed of the synthetic workload")
    parser.add_argument("--name", default=None, help="stream keys / namespace suffix")
    parser.add_argument("--head-cpus", type=int, default=1, help="CPUs of the head node")
    parser.add_argument("--workers", type=int, default=2, help="worker nodes at the start")
    parser.add_argument("--worker-cpus", type=int, default=2, help="CPUs of each worker node")
    parser.add_argument(
        "--remove-at", type=float, default=0.25, help="share of events read before the removal"
    )
    parser.add_argument(
        "--add-at", type=float, default=0.55, help="share of events read before adding a node"
    )
    parser.add_argument(
        "--scale-to",
        type=int,
        default=3,
        help="shards to rescale to after adding the node (0: do not rescale)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--graceful", action="store_true", help="let the node's processes shut down gracefully"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the drill and write its JSON report; 0 unless the drill itself failed."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # Ray writes the cluster's address to $RAY_TMPDIR/ray/ray_current_cluster, where any
    # ray.init() without an address would find it: keep it (and the logs) to ourselves.
    scratch = tempfile.mkdtemp(prefix="rwnodes-")
    os.environ["RAY_TMPDIR"] = scratch
    try:
        started = time.monotonic()
        drill = NodeDrill.start(
            head_cpus=args.head_cpus, workers=args.workers, worker_cpus=args.worker_cpus
        )
        took = round(time.monotonic() - started, 3)
        drill.steps.append({"step": "start_cluster", "took_s": took})
        try:
            result = _run(args, drill)
        finally:
            drill.shutdown()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = json.dumps(result)
    if args.out is not None:
        args.out.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


def _run(args: argparse.Namespace, drill: NodeDrill) -> dict[str, Any]:
    """The drill's loop in a second thread while this (main) thread serves the cluster."""
    name = args.name or secrets.token_hex(5)
    with scratch_schema(args.alerts_dsn, name) as dsn:
        settings = drill_settings(args.redis_url, dsn, name, ray_address=drill.cluster.address)
        return _run_in(args, drill, settings)


def _run_in(args: argparse.Namespace, drill: NodeDrill, settings: Settings) -> dict[str, Any]:
    # Connected from the main thread; the pipeline in the loop's thread reuses it.
    connect_ray(drill.cluster.address, namespace=settings.ray_namespace)
    done: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

    def run() -> None:
        try:
            done.set_result(asyncio.run(_drill(args, drill, settings)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            done.set_exception(exc)

    loop_thread = threading.Thread(target=run, name="node-drill-loop", daemon=True)
    loop_thread.start()
    drill.serve(until=done)
    loop_thread.join()
    return done.result()


if __name__ == "__main__":
    sys.exit(main())
