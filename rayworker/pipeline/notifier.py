"""The notifier as one named async Ray actor, fed after alerts are persisted.

The router (or whoever persisted a batch) calls ``notifier.enqueue.remote(alerts)`` without
awaiting it: the call only puts the batch on the actor's bounded queue and returns, and a
full queue drops the batch and counts it, so notifications never slow detection or
persistence. The actor reads silences from the alert database (SQLite or PostgreSQL, the
``silences`` table of migration 0002) and dead-letters to the Redis stream or the local
file the notification config names.

Start it before the router with :func:`start_notifier`; find it from anywhere with
:func:`notifier_handle`; stop it with ``await handle.drain.remote()`` then ``ray.kill``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ray

from rayworker.alerts import Alert, PackedAlerts, unpacked
from rayworker.errors import ConfigError
from rayworker.notify.config import NotifyConfig
from rayworker.notify.service import Notifier
from rayworker.notify.silence_store import silence_store
from rayworker.settings import Settings

__all__ = ["NOTIFIER_ACTOR", "NotifierActor", "notifier_handle", "start_notifier"]

NOTIFIER_ACTOR = "rayworker-notifier"


class NotifierActor:
    """See the module docstring."""

    def __init__(self, settings: Settings, config: NotifyConfig) -> None:
        self.settings = settings
        self.notifier = Notifier(config, silence_source=silence_store(settings))
        self._started = False

    async def _ensure_started(self) -> None:
        if not self._started:
            self._started = True
            await self.notifier.start()

    async def ready(self) -> bool:
        """Start the loop (reads silences once, so a bad alert DSN fails here)."""
        await self._ensure_started()
        return True

    async def enqueue(self, alerts: Sequence[Alert | dict[str, Any]]) -> bool:
        """Queue persisted alerts; returns at once (False: queue full, dropped and counted)."""
        await self._ensure_started()
        return self.notifier.enqueue(alerts)

    async def enqueue_batches(self, *batches: list[Alert] | PackedAlerts) -> bool:
        """:meth:`enqueue` of several batches (each usually passed as an ObjectRef)."""
        return await self.enqueue([alert for batch in batches for alert in unpacked(batch)])

    async def stats(self) -> dict[str, Any]:
        """Queue, routing, grouping and delivery counters."""
        return self.notifier.stats()

    async def drain(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Flush every group and deliver what can be delivered within ``timeout_s``."""
        if not self._started:
            return self.notifier.stats()
        return await self.notifier.drain(timeout_s)


def start_notifier(settings: Settings, config: NotifyConfig) -> Any:
    """Start the named notifier actor (no CPU reserved: it mostly waits on the network).

    Raises :class:`ConfigError` when a notifier already runs in the namespace (another
    pipeline's, or one left behind): two would send every notification twice.
    """
    if notifier_handle(settings.ray_namespace) is not None:
        msg = (
            f"a rayworker notifier is already running in Ray namespace "
            f"{settings.ray_namespace!r}; stop it first or give this pipeline its own "
            "namespace (RAYWORKER_RAY_NAMESPACE)"
        )
        raise ConfigError(msg)
    return (
        ray.remote(NotifierActor)
        .options(
            name=NOTIFIER_ACTOR,
            namespace=settings.ray_namespace,
            num_cpus=0,
            max_concurrency=256,
        )
        .remote(settings, config)
    )


def notifier_handle(namespace: str) -> Any | None:
    """The running notifier of a namespace, or None when notifications are off."""
    try:
        return ray.get_actor(NOTIFIER_ACTOR, namespace=namespace)
    except ValueError:
        return None
