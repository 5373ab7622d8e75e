"""A detector shard: the pure :class:`~rayworker.detect.Detector` behind a Ray actor.

A shard owns a set of key groups (which ones is the router's business: it only sends a shard
the events whose keys it owns) and holds the windows of every tenant whose keys fall in them.
It is a plain class; :func:`shard_actor` wraps it with ``ray.remote`` so it runs as one
single-threaded actor process: calls from the router run one at a time, in the order sent,
which keeps every key's events in order.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from opentelemetry.trace import Link, SpanContext

from rayworker.alerts import Alert, PackedAlerts
from rayworker.checkpoint import decode_state, encode_state
from rayworker.clock import SystemClock
from rayworker.detect import Detector, DetectorConfig, MetricDeltas
from rayworker.errors import StateError
from rayworker.handoff import merge_states, split_state
from rayworker.partition import ShardBatch
from rayworker.rules import Overrides, RulePack
from rayworker.settings import TelemetrySettings
from rayworker.telemetry.attributes import alert_attributes
from rayworker.telemetry.propagation import Carrier, carrier_of, context_of, trace_id_hex
from rayworker.telemetry.ray_metrics import PipelineMetrics
from rayworker.telemetry.setup import flush_tracing, setup_process
from rayworker.telemetry.spans import links, tracer
from rayworker.telemetry.traced import BatchTrace

__all__ = ["DetectorShard", "ShardOutput", "StaleEpochError", "shard_actor", "shard_name"]


_log = logging.getLogger("rayworker.shard")
_GAUGES_EVERY_S = 5.0


class StaleEpochError(StateError):
    """A call from before the shard's last restore (or to a shard not yet restored): its
    state no longer matches what the caller sent, so the caller must recover first."""


def shard_name(shard: int) -> str:
    """The Ray actor name of shard ``shard``."""
    return f"rayworker-shard-{shard}"


@dataclass(slots=True)
class ShardOutput:
    """What one batch produced: alerts changed (latest state) and metric deltas."""

    alerts: list[Alert] = field(default_factory=list)
    metrics: MetricDeltas = field(default_factory=MetricDeltas)
    events: int = 0
    busy_s: float = 0.0
    trace: Carrier | None = None
    """The context of the batch's ``rayworker.detect`` span (parent of its ``persist``)."""
    alert_count: int = 0
    """How many alerts :meth:`DetectorShard.process_apart` returned apart."""


class DetectorShard:
    """Runs routed batches through one detector and reports on itself."""

    def __init__(
        self,
        shard: int,
        pack: RulePack,
        overrides: Overrides | None,
        config: DetectorConfig,
        snapshot: dict[str, Any] | None = None,
        telemetry: TelemetrySettings | None = None,
        poison: bytes | None = None,
    ) -> None:
        # The router already screened for future timestamps against its own clock.
        shard_config = DetectorConfig(
            allowed_lateness_s=config.allowed_lateness_s,
            suppression_s=config.suppression_s,
            max_future_s=None,
            evidence_cap=config.evidence_cap,
            naive_timestamps=config.naive_timestamps,
            max_events_per_key=config.max_events_per_key,
        )
        self.shard = shard
        self._pack, self._overrides, self._config = pack, overrides, shard_config
        self.epoch: int | None = None
        """The recovery epoch this state belongs to (:meth:`restore_state`); batches and
        barriers of another epoch are refused. None until the router restores it, and again
        after a failed batch, whose partial effects must not be built upon."""
        self.restores = 0
        self.poison = poison
        if snapshot is None:
            self.detector = Detector(pack, overrides, shard_config, SystemClock())
        else:
            self.detector = Detector.restore(pack, snapshot, overrides, shard_config)
        self.events = 0
        self.batches = 0
        self.alerts = 0
        self.busy_s = 0.0
        self.last_batch_at: float | None = None
        self.started_at = time.time()
        self.telemetry = telemetry if telemetry is not None else TelemetrySettings()
        # Only an actor process is ours to configure; a shard built in a driver (tests, tools)
        # must not replace the driver's own tracing set-up.
        if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
            setup_process(
                self.telemetry,
                component="shard",
                shard=shard,
                node=ray.get_runtime_context().get_node_id(),
            )
        self.ray_metrics = PipelineMetrics.get() if ray.is_initialized() else None
        self._gauges_at = 0.0

    def process(
        self, batch: ShardBatch, trace: BatchTrace | None = None, epoch: int | None = None
    ) -> ShardOutput:
        """Detect over one routed batch; ``trace``: the batch's trace context (None: untraced);
        ``epoch``: the recovery epoch the router sent it in (None: a pipeline without
        checkpoints, which never restores)."""
        if epoch is not None:
            self._check_epoch(epoch)
        if trace is None:
            output = self._process(batch)
            if _log.isEnabledFor(logging.INFO):
                self._log_raised(output.alerts)
            return output
        with tracer().start_as_current_span(
            "rayworker.detect",
            context=context_of(trace.parent),
            links=links(trace.links, self.telemetry.max_links),
            attributes={"rayworker.shard": self.shard, "rayworker.events": len(batch)},
        ) as span:
            output = self._process(batch)
            span.set_attribute("rayworker.alerts", len(output.alerts))
            detect = span.get_span_context()
            for alert in output.alerts:
                # One span per alert, when it is raised: updates (more occurrences) of an
                # alert that already has its trace would only repeat it. The alert object is
                # the detector's own, so the trace id it gets here stays with it.
                if alert.trace_id is None and alert.occurrences == 1:
                    self._trace_alert(alert, trace.events, detect)
            output.trace = carrier_of()
        if _log.isEnabledFor(logging.INFO):
            self._log_raised(output.alerts)
        return output

    def process_apart(
        self, batch: ShardBatch, trace: BatchTrace | None = None, epoch: int | None = None
    ) -> tuple[PackedAlerts, ShardOutput]:
        """:meth:`process`, with the alerts apart from the rest; called with two returns,
        the router reads only the rest and hands the alerts' ObjectRef on to the sinks, so
        the alerts (the bulk of an answer) are packed once and never pass through it."""
        output = self.process(batch, trace, epoch)
        alerts, output.alerts, output.alert_count = output.alerts, [], len(output.alerts)
        return PackedAlerts.pack(alerts), output

    def _log_raised(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            if alert.occurrences == 1:
                _log.info(
                    "alert raised",
                    extra={
                        "tenant": alert.tenant_id,
                        "alert_id": alert.id,
                        "rule": alert.rule_id,
                        "severity": alert.severity,
                        "trace_id": alert.trace_id,
                    },
                )

    def _trace_alert(self, alert: Alert, events: dict[str, Carrier], detect: SpanContext) -> None:
        """The ``rayworker.alert`` span, in the trace of the traced event that fired the alert
        (else in the batch's trace); the alert keeps that trace id if the trace is sampled."""
        producer = next((events[e] for e in reversed(alert.evidence_ids) if e in events), None)
        span = tracer().start_span(
            "rayworker.alert",
            context=context_of(producer),
            links=[Link(detect)] if producer is not None else None,
            attributes=alert_attributes(alert, record_payload=self.telemetry.record_payload),
        )
        span.end()
        span_context = span.get_span_context()
        if span_context.trace_flags.sampled:
            alert.trace_id = trace_id_hex(span_context)

    def _check_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            msg = (
                f"shard {self.shard} holds the state of epoch {self.epoch}, not {epoch}: it "
                "restarted or failed a batch since; the router recovers it from a checkpoint"
            )
            raise StaleEpochError(msg)

    def _process(self, batch: ShardBatch) -> ShardOutput:
        started = time.perf_counter()
        lines = batch.lines()
        try:
            if self.poison is not None and any(self.poison in line for line in lines):
                msg = f"fault injection: a batch holds the poison marker {self.poison!r}"
                raise RuntimeError(msg)
            result = self.detector.process_routed(
                lines, batch.wm_after, batch.owned, batch.watermarks
            )
        except BaseException:
            # A batch may have been applied in part: refuse everything until restored.
            if self.epoch is not None:
                self.epoch = -1
            raise
        busy = time.perf_counter() - started
        self.events += len(batch)
        self.batches += 1
        self.alerts += len(result.alerts)
        self.busy_s += busy
        self.last_batch_at = time.time()
        if self.ray_metrics is not None:
            self.ray_metrics.observe(
                self.ray_metrics.detect_seconds, busy, {"shard": str(self.shard)}
            )
            if self.last_batch_at - self._gauges_at >= _GAUGES_EVERY_S:
                self._gauges_at = self.last_batch_at
                self.ray_metrics.shard_state(self.shard, None, self.detector.active_keys())
        return ShardOutput(result.alerts, result.metrics, len(batch), busy)

    def flush(self, epoch: int | None = None) -> ShardOutput:
        """End of input: settle everything pending (used at the end of a bounded run)."""
        if epoch is not None:
            self._check_epoch(epoch)
        result = self.detector.flush()
        return ShardOutput(result.alerts, result.metrics)

    def snapshot(self) -> dict[str, Any]:
        """The detector's state as plain data."""
        return self.detector.snapshot()

    def checkpoint(self, barrier: int, epoch: int) -> bytes:
        """The detector's state after every batch sent before barrier ``barrier``, encoded for
        the checkpoint store (the router's calls run in order, so that is exactly the state
        now)."""
        self._check_epoch(epoch)
        started = time.perf_counter()
        blob = encode_state(self.detector.snapshot())
        _log.debug(
            "checkpoint taken",
            extra={
                "shard": self.shard,
                "barrier": barrier,
                "bytes": len(blob),
                "seconds": round(time.perf_counter() - started, 4),
            },
        )
        return blob

    def restore_state(self, blob: bytes | None, epoch: int) -> int:
        """Continue from a checkpoint (None: from empty state) in recovery epoch ``epoch``;
        returns the number of keys restored."""
        if blob is None:
            self.detector = Detector(self._pack, self._overrides, self._config, SystemClock())
        else:
            self.detector = Detector.restore(
                self._pack, decode_state(blob), self._overrides, self._config
            )
        self.epoch = epoch
        self.restores += 1
        return self.detector.active_keys()

    def export_groups(
        self, moves: list[list[int]], groups: int, epoch: int | None
    ) -> bytes | list[bytes]:
        """Hand over key groups: one encoded state per list of ``moves`` (the keys of those key
        groups, of ``groups`` in all), which this shard then no longer holds. The router has
        drained this shard first, so the state is that of every batch sent to it.

        Called with ``num_returns=len(moves)``, so Ray gives each state its own ObjectRef and
        it travels from this shard straight to its taker; one state is returned bare."""
        if epoch is not None:
            self._check_epoch(epoch)
        started = time.perf_counter()
        kept = self.detector.snapshot()
        blobs = []
        for leaving in moves:
            kept, moved = split_state(kept, leaving, groups=groups)
            blobs.append(encode_state(moved))
        self.detector = Detector.restore(self._pack, kept, self._overrides, self._config)
        _log.info(
            "key groups handed over",
            extra={
                "shard": self.shard,
                "key_groups": sum(len(m) for m in moves),
                "bytes": sum(len(b) for b in blobs),
                "seconds": round(time.perf_counter() - started, 4),
            },
        )
        return blobs if len(blobs) > 1 else blobs[0]

    def adopt(self, epoch: int | None, *blobs: bytes) -> int:
        """Take over the key groups (and their state) other shards handed over with
        :meth:`export_groups`; returns the number of keys now held."""
        if epoch is not None:
            self._check_epoch(epoch)
        states = [self.detector.snapshot(), *(decode_state(b) for b in blobs)]
        self.detector = Detector.restore(
            self._pack, merge_states(states), self._overrides, self._config
        )
        return self.detector.active_keys()

    def stats(self) -> dict[str, Any]:
        """Counters for health and benchmarks."""
        return {
            "shard": self.shard,
            "events": self.events,
            "batches": self.batches,
            "alerts": self.alerts,
            "active_keys": self.detector.active_keys(),
            "busy_s": round(self.busy_s, 3),
            "last_batch_at": self.last_batch_at,
            "uptime_s": round(time.time() - self.started_at, 1),
            "epoch": self.epoch,
            "restores": self.restores,
        }

    def ping(self) -> int:
        """Liveness: answers with the shard number."""
        return self.shard

    def current_epoch(self) -> int | None:
        """The recovery epoch of this shard's state (None: restarted, not restored yet)."""
        return self.epoch

    def flush_telemetry(self) -> bool:
        """Export this process's finished spans now (before the actor is stopped)."""
        return flush_tracing()


def shard_actor(
    shard: int,
    pack: RulePack,
    overrides: Overrides | None,
    config: DetectorConfig,
    *,
    num_cpus: float,
    namespace: str,
    telemetry: TelemetrySettings | None = None,
    recoverable: bool = False,
    poison: bytes | None = None,
) -> Any:
    """Start shard ``shard`` as a named actor, spread across nodes.

    ``recoverable``: Ray restarts the actor whenever it dies (its process, or its node); the
    restarted shard refuses batches until the router restores it from the last checkpoint.
    Calls are never retried by Ray (``max_task_retries=0``): a re-executed batch would be
    counted twice, so the router replays from the stream instead.
    """
    remote_cls = ray.remote(DetectorShard)
    return remote_cls.options(
        name=shard_name(shard),
        namespace=namespace,
        num_cpus=num_cpus,
        scheduling_strategy="SPREAD",
        max_restarts=-1 if recoverable else 0,
        max_task_retries=0,
    ).remote(shard, pack, overrides, config, None, telemetry, poison)
