"""The one exception tree of rayworker.

Every error rayworker raises on purpose derives from :class:`RayworkerError`, so a caller
can catch them all in one place. Messages say what is wrong and what to do about it::

    RayworkerError
    ├── ConfigError            bad settings, rules or overrides (fails at start-up)
    │   ├── RuleError          a rule definition is invalid (names the rule and the field)
    │   └── OverrideError      a per-tenant override is invalid
    ├── InputError             an input file or stream cannot be used at all
    ├── StateError             a snapshot cannot be restored
    └── SinkError              an alert or metrics store failed

A malformed *event* is not an exception: it becomes a :class:`rayworker.events.Rejection`
and flows to the dead-letter output, so one bad event never stops the pipeline.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "InputError",
    "OverrideError",
    "RayworkerError",
    "RuleError",
    "SinkError",
    "StateError",
]


class RayworkerError(Exception):
    """Raised for every error rayworker raises on purpose; the root of the tree."""


class ConfigError(RayworkerError):
    """Raised when settings, rules or overrides are invalid; the message names the field."""


class RuleError(ConfigError):
    """Raised when a rule definition is invalid; the message names the rule, field and fix."""


class OverrideError(ConfigError):
    """Raised when a per-tenant override is invalid; the message names the tenant and field."""


class InputError(RayworkerError):
    """Raised when an input file or stream cannot be opened or read at all."""


class StateError(RayworkerError):
    """Raised when a snapshot is malformed or was taken with incompatible rules."""


class SinkError(RayworkerError):
    """Raised when an alert or metrics store fails in a way the caller must handle."""
