"""Sweep points of a backtest, and the overrides that make ``replay`` run one of them.

A sweep varies a rule's ``threshold`` (the ``{gte: n}`` shorthand) and ``window``::

    threshold=3..20          every whole number from 3 to 20
    threshold=5,10,20..40:10 a list; a range may take a step
    window=1m,5m,15m         durations as in rule files

A parameter left out keeps each tenant's configured value. A point is applied as an override
of the rule for every tenant, on top of the base overrides (which keep their suppression,
``enabled``, timezone and business hours): :func:`point_overrides` builds exactly the
overrides file under which ``rayworker replay --overrides FILE`` gives the point's alerts.

Pure core: nothing here imports ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticCustomError

from rayworker.errors import ConfigError
from rayworker.rules import (
    Overrides,
    RulePack,
    SequenceRule,
    format_duration,
    parse_duration,
    parse_overrides,
)

__all__ = [
    "MAX_POINTS",
    "Sweep",
    "SweepPoint",
    "parse_sweep",
    "point_overrides",
    "point_overrides_data",
]

MAX_POINTS = 10_000
"""The most points one sweep may have."""
_PARAMETERS = ("threshold", "window")


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """One combination of parameters; None keeps each tenant's configured value."""

    window_s: float | None = None
    threshold: int | None = None

    @property
    def label(self) -> str:
        """``threshold=5 window=5m`` (only the swept parameters)."""
        parts = []
        if self.threshold is not None:
            parts.append(f"threshold={self.threshold}")
        if self.window_s is not None:
            parts.append(f"window={format_duration(self.window_s)}")
        return " ".join(parts) or "as configured"


@dataclass(frozen=True, slots=True)
class Sweep:
    """The values of each swept parameter; the points are their cross product."""

    thresholds: tuple[int, ...] | None = None
    windows_s: tuple[float, ...] | None = None

    def points(self) -> list[SweepPoint]:
        """Every point, window by window, thresholds ascending within a window."""
        windows: tuple[float | None, ...] = self.windows_s or (None,)
        thresholds: tuple[int | None, ...] = self.thresholds or (None,)
        return [SweepPoint(w, n) for w in windows for n in thresholds]

    def __len__(self) -> int:
        return len(self.thresholds or (0,)) * len(self.windows_s or (0,))


def parse_sweep(specs: Sequence[str]) -> Sweep:
    """Parse ``--sweep`` values such as ``threshold=3..20`` and ``window=1m,5m,15m``."""
    found: dict[str, str] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip()
        if not sep or name not in _PARAMETERS:
            msg = (
                f'--sweep: got "{spec}"; write threshold=LIST or window=LIST, '
                "e.g. threshold=3..20 or window=1m,5m,15m"
            )
            raise ConfigError(msg)
        if name in found:
            msg = f"--sweep: {name} is given twice; give each parameter once, as one list"
            raise ConfigError(msg)
        found[name] = values
    thresholds = _thresholds(found["threshold"]) if "threshold" in found else None
    windows = _windows(found["window"]) if "window" in found else None
    sweep = Sweep(thresholds, windows)
    if len(sweep) > MAX_POINTS:
        msg = f"--sweep: {len(sweep):,} points; sweep at most {MAX_POINTS:,} at once"
        raise ConfigError(msg)
    return sweep


def _range(item: str) -> tuple[str, str, str] | None:
    """``lo..hi[:step]`` split into its parts (step "" when absent), or None for a value."""
    if ".." not in item:
        return None
    lo, _, rest = item.partition("..")
    hi, _, step = rest.partition(":")
    return lo, hi, step


def _items(values: str, name: str) -> list[str]:
    items = [item.strip() for item in values.split(",")]
    if not values.strip() or any(not item for item in items):
        msg = f'--sweep: {name}: got "{values}"; give a comma-separated list without empty items'
        raise ConfigError(msg)
    return items


def _thresholds(values: str) -> tuple[int, ...]:
    out: set[int] = set()
    for item in _items(values, "threshold"):
        parts = _range(item)
        try:
            if parts is None:
                out.add(_count(item))
                continue
            lo, hi = _count(parts[0]), _count(parts[1])
            step = _count(parts[2]) if parts[2] else 1
        except ValueError:
            msg = (
                f'--sweep: threshold: got "{item}"; use whole numbers of at least 1, '
                "a range such as 3..20, or a stepped range such as 10..100:10"
            )
            raise ConfigError(msg) from None
        if hi < lo:
            msg = f'--sweep: threshold: got "{item}", an empty range; write it low..high'
            raise ConfigError(msg)
        if (hi - lo) // step >= MAX_POINTS:
            msg = f'--sweep: threshold: "{item}" has too many values; use a step'
            raise ConfigError(msg)
        out.update(range(lo, hi + 1, step))
    return tuple(sorted(out))


def _count(text: str) -> int:
    value = int(text.strip())
    if not 1 <= value <= 10**9:
        raise ValueError(text)
    return value


def _windows(values: str) -> tuple[float, ...]:
    out: set[float] = set()
    for item in _items(values, "window"):
        parts = _range(item)
        try:
            if parts is None:
                out.add(parse_duration(item))
                continue
            if not parts[2]:
                msg = f'--sweep: window: "{item}" needs a step, e.g. 1m..15m:1m'
                raise ConfigError(msg)
            lo, hi, step = (parse_duration(part) for part in parts)
        except PydanticCustomError as exc:
            msg = f'--sweep: window: got "{item}": {exc}'
            raise ConfigError(msg) from None
        if hi < lo or (hi - lo) / step >= MAX_POINTS:
            msg = f'--sweep: window: "{item}" is empty or has too many values; write low..high:step'
            raise ConfigError(msg)
        k = 0
        while lo + k * step <= hi + 1e-9:
            out.add(parse_duration(format_duration(lo + k * step)))
            k += 1
    return tuple(sorted(out))


def point_overrides_data(
    base: Overrides, pack: RulePack, rule_id: str, point: SweepPoint
) -> dict[str, Any]:
    """The overrides file (as data) that applies ``point`` to ``rule_id`` for every tenant.

    The point is set under ``defaults`` and under every tenant that overrides the rule itself
    (a tenant's own override would otherwise win), replacing a ``condition`` when a threshold
    is swept. Everything else in ``base`` is kept.
    """
    rule = pack.get(rule_id)
    if point.threshold is not None and isinstance(rule, SequenceRule):
        msg = (
            f'rule "{rule_id}" is a sequence rule: it has no threshold (completing its steps '
            "is the condition); sweep only its window"
        )
        raise ConfigError(msg)
    data: dict[str, Any] = base.spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    setting: dict[str, Any] = {}
    if point.threshold is not None:
        setting["threshold"] = point.threshold
    if point.window_s is not None:
        setting["window"] = format_duration(point.window_s)
    if not setting:
        return data
    scopes = [data.setdefault("defaults", {})]
    scopes += [t for t in data.get("tenants", {}).values() if rule_id in t.get("rules", {})]
    for scope in scopes:
        rules = scope.setdefault("rules", {})
        current = dict(rules.get(rule_id, {}))
        if "threshold" in setting:
            current.pop("condition", None)
        current.update(setting)
        rules[rule_id] = current
    return data


def point_overrides(base: Overrides, pack: RulePack, rule_id: str, point: SweepPoint) -> Overrides:
    """:func:`point_overrides_data`, validated by the overrides loader."""
    data = point_overrides_data(base, pack, rule_id, point)
    return parse_overrides(data, pack, origin=f"sweep point {point.label}")
