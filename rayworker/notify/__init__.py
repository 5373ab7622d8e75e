"""Alert notifications: routes, Alertmanager-style grouping, silences, receivers, delivery.

Pure core (no network or database client): :mod:`~rayworker.notify.config`,
:mod:`~rayworker.notify.model`, :mod:`~rayworker.notify.dispatch`,
:mod:`~rayworker.notify.silences`, :mod:`~rayworker.notify.redact`,
:mod:`~rayworker.notify.render` and :mod:`~rayworker.notify.breaker`.
Adapters: :mod:`~rayworker.notify.receivers` (httpx, aiosmtplib),
:mod:`~rayworker.notify.delivery` (tenacity retries, breakers, dead letters),
:mod:`~rayworker.notify.dead_letters`, :mod:`~rayworker.notify.silence_store` and the
engine :mod:`~rayworker.notify.service`; the Ray actor is
:mod:`rayworker.pipeline.notifier`.
"""

from __future__ import annotations

from rayworker.notify.breaker import CircuitBreaker
from rayworker.notify.config import NotifyConfig, load_notify_config, parse_notify_config
from rayworker.notify.dispatch import Dispatcher
from rayworker.notify.model import Notification, NotifyAlert
from rayworker.notify.silences import Matcher, Silence, SilenceError, Silences, parse_matcher

__all__ = [
    "CircuitBreaker",
    "Dispatcher",
    "Matcher",
    "Notification",
    "NotifyAlert",
    "NotifyConfig",
    "Silence",
    "SilenceError",
    "Silences",
    "load_notify_config",
    "parse_matcher",
    "parse_notify_config",
]
