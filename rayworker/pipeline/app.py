"""Start, feed and stop the pipeline: the driver's side of ``rayworker run`` and ``demo``.

Start-up order is explicit and each step fails with a message saying what to fix:
settings -> alert store reachable and migrated -> metrics store -> shards -> router ->
source -> (Serve, started by the caller). :meth:`Pipeline.pump` feeds batches from a source
to the router, dead-letters what the router rejects, and acknowledges a source batch only
once the router reports it done (every alert it produced persisted). Stopping drains the
router first, so nothing in flight is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from rayworker.detect import DetectorConfig, LateEvent, MetricDeltas
from rayworker.errors import ConfigError, SinkError
from rayworker.events import Rejection
from rayworker.pipeline.router import ROUTER_NAME, Receipt, start_router
from rayworker.pipeline.runtime import connect_ray
from rayworker.pipeline.shard import shard_actor
from rayworker.pipeline.sinks import METRICS_ACTOR, MetricsActor, persist_alerts, record_metrics
from rayworker.routing import Assignment
from rayworker.rules import Overrides, RulePack, builtin_pack, load_overrides, load_rules
from rayworker.settings import Settings
from rayworker.sinks.factory import metrics_store, open_alert_store

__all__ = ["Batch", "Pipeline", "PumpStats", "detector_config", "load_pack"]

_SINK_WORKERS = 2
"""Sink task workers started before the first event (each holds its own store)."""

Ack = Callable[[Sequence[Any]], Awaitable[None]]
DeadLetter = Callable[[Sequence[Rejection], Sequence[LateEvent], list[bytes]], Awaitable[None]]


@dataclass(slots=True)
class Batch:
    """Lines from a source and the token that acknowledges them (None: nothing to ack)."""

    lines: list[bytes]
    token: Any = None


@dataclass(slots=True)
class PumpStats:
    """What :meth:`Pipeline.pump` moved."""

    events: int = 0
    accepted: int = 0
    rejected: int = 0
    late: int = 0
    acked: int = 0
    failed: int = 0
    started: float = field(default_factory=time.perf_counter)
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        """Events per second so far."""
        elapsed = self.elapsed_s or (time.perf_counter() - self.started)
        return self.events / elapsed if elapsed > 0 else 0.0


def load_pack(settings: Settings) -> tuple[RulePack, Overrides | None]:
    """The rules and overrides the settings name (the built-in pack by default)."""
    pack = load_rules(settings.rules_path) if settings.rules_path else builtin_pack()
    overrides = load_overrides(settings.overrides_path, pack) if settings.overrides_path else None
    return pack, overrides


def detector_config(settings: Settings) -> DetectorConfig:
    """The detector settings of a pipeline."""
    return DetectorConfig(
        allowed_lateness_s=settings.lateness_s,
        suppression_s=settings.suppression_s,
        max_future_s=settings.max_future_s,
    )


class Pipeline:
    """The running actors of one rayworker deployment, driven from this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pack, self.overrides = load_pack(settings)
        self.config = detector_config(settings)
        self.assignment = Assignment.balanced(settings.shards, groups=settings.key_groups)
        self.shards: dict[int, Any] = {}
        self.router: Any = None
        self.metrics_actor: Any = None
        self.address = ""

    async def start(self, *, migrate: bool = False) -> None:
        """Check the stores, then start the actors; raises with a fix on any failure."""
        store = await open_alert_store(self.settings, migrate=migrate)
        await store.close()
        metrics = metrics_store(self.settings)
        try:
            await metrics.snapshot(None)
        except SinkError as exc:
            msg = f"the metrics store is not reachable: {exc}; fix RAYWORKER_METRICS_URL"
            raise ConfigError(msg) from exc
        finally:
            await metrics.close()
        self.address = connect_ray(self.settings.ray_address, namespace=self.settings.ray_namespace)
        self._refuse_if_running()
        ns = self.settings.ray_namespace
        if self.settings.metrics_backend == "memory":
            self.metrics_actor = (
                ray.remote(MetricsActor)
                .options(name=METRICS_ACTOR, namespace=ns, num_cpus=0)
                .remote(self.settings.metrics_series_ttl_s)
            )
        self.shards = {
            s: shard_actor(
                s,
                self.pack,
                self.overrides,
                self.config,
                num_cpus=self.settings.shard_cpus,
                namespace=ns,
            )
            for s in range(self.settings.shards)
        }
        await asyncio.gather(*(h.ping.remote() for h in self.shards.values()))
        self.router = start_router(
            self.settings, self.pack, self.config, self.assignment, self.shards
        )
        await self.router.stats.remote()
        await self._warm_sinks()

    async def _warm_sinks(self) -> None:
        """Start the sink workers and open their stores now, not under the first alerts.

        A task worker process takes a second or two to start and import; without this the
        first batches' latency would include it.
        """
        warm = [persist_alerts.remote(self.settings, []) for _ in range(_SINK_WORKERS)]
        if self.settings.metrics_backend != "memory":
            warm += [
                record_metrics.remote(self.settings, MetricDeltas(), {})
                for _ in range(_SINK_WORKERS)
            ]
        await asyncio.gather(*warm)

    def _refuse_if_running(self) -> None:
        """Our actors are named; another live pipeline in the namespace must not be touched."""
        ns = self.settings.ray_namespace
        try:
            ray.get_actor(ROUTER_NAME, namespace=ns)
        except ValueError:
            return
        msg = (
            f"a rayworker pipeline is already running in Ray namespace {ns!r}; stop it first "
            "or give this one its own namespace (RAYWORKER_RAY_NAMESPACE)"
        )
        raise ConfigError(msg)

    async def pump(
        self,
        batches: AsyncIterator[Batch],
        *,
        ack: Ack | None = None,
        dead_letter: DeadLetter | None = None,
        stop: asyncio.Event | None = None,
        on_progress: Callable[[PumpStats], None] | None = None,
        bounded: bool = False,
    ) -> PumpStats:
        """Feed batches until the source ends or ``stop`` is set; then drain.

        ``bounded``: the source is finite (a file), so once it ends every shard settles what
        is pending, as ``rayworker replay`` does at the end of its input.
        """
        stats = PumpStats()
        tokens: dict[int, Any] = {}

        async def settle() -> None:
            done, failed = await self.router.completed.remote()
            acks = [tokens.pop(t) for t in done if t in tokens]
            acks = [a for a in acks if a is not None]
            for t in failed:
                tokens.pop(t, None)
            stats.failed += len(failed)
            if acks and ack is not None:
                await ack(acks)
                stats.acked += len(acks)

        async for batch in batches:
            if batch.lines:
                receipt: Receipt = await self.router.submit.remote(batch.lines)
                stats.events += len(batch.lines)
                stats.accepted += receipt.accepted
                stats.rejected += len(receipt.rejections)
                stats.late += len(receipt.late)
                if dead_letter is not None and (receipt.rejections or receipt.late):
                    await dead_letter(receipt.rejections, receipt.late, batch.lines)
                tokens[receipt.ticket] = batch.token
            await settle()
            if on_progress is not None:
                on_progress(stats)
            if stop is not None and stop.is_set():
                break
        if bounded:
            await self.router.finish.remote()
        else:
            await self.router.drain.remote()
        await settle()
        stats.elapsed_s = time.perf_counter() - stats.started
        return stats

    async def shard_stats(self) -> list[dict[str, Any]]:
        """Each shard's counters."""
        result: list[dict[str, Any]] = await asyncio.gather(
            *(h.stats.remote() for h in self.shards.values())
        )
        return result

    def stop(self) -> None:
        """Stop the actors (after :meth:`pump` has drained)."""
        for handle in [self.router, *self.shards.values(), self.metrics_actor]:
            if handle is not None:
                ray.kill(handle)
        self.router = None
        self.shards = {}
        self.metrics_actor = None
