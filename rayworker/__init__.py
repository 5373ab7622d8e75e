"""rayworker: real-time security and compliance monitoring of multi-tenant audit events.

The pure core (events, rules, windows, detection) runs anywhere: in a notebook, a test, a
backtest or a Ray actor. Start with :class:`Detector` and :func:`builtin_pack`.
"""

from __future__ import annotations

from rayworker.alerts import Alert, AlertBook
from rayworker.clock import Clock, FixedClock, SystemClock
from rayworker.detect import DetectionResult, Detector, DetectorConfig, LateEvent, MetricDeltas
from rayworker.errors import (
    ConfigError,
    InputError,
    OverrideError,
    RayworkerError,
    RuleError,
    SinkError,
    StateError,
)
from rayworker.events import (
    AuditEvent,
    EventBatch,
    EventDecoder,
    Rejection,
    RejectReason,
    decode_lines,
)
from rayworker.rules import Overrides, RulePack, builtin_pack, load_overrides, load_rules

__version__ = "0.1.0"

__all__ = [
    "Alert",
    "AlertBook",
    "AuditEvent",
    "Clock",
    "ConfigError",
    "DetectionResult",
    "Detector",
    "DetectorConfig",
    "EventBatch",
    "EventDecoder",
    "FixedClock",
    "InputError",
    "LateEvent",
    "MetricDeltas",
    "OverrideError",
    "Overrides",
    "RayworkerError",
    "RejectReason",
    "Rejection",
    "RuleError",
    "RulePack",
    "SinkError",
    "StateError",
    "SystemClock",
    "__version__",
    "builtin_pack",
    "decode_lines",
    "load_overrides",
    "load_rules",
]
