"""Per-tenant overrides suggested by a backtest: the lowest threshold within an alert budget.

For each tenant with events the rule counts, the points of the sweep whose alerts per day for
that tenant are within the budget are candidates; the suggestion is the one with the lowest
threshold, and among equal thresholds the longest window (the most sensitive setting the
budget allows). When no point fits, the point with the fewest alerts is suggested and marked
over budget. A tenant's suggestion is written only where it differs from what the tenant has
now; the file keeps the base overrides and validates with the overrides loader, so
``replay --overrides`` and ``run`` accept it as it is. Tenants without any event of the rule
get no suggestion: there is nothing to go by.

Pure core: nothing here imports ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rayworker.backtest import BacktestResult
from rayworker.backtest_points import SweepPoint
from rayworker.errors import ConfigError, RayworkerError
from rayworker.rules import Overrides, RulePack, format_duration, parse_overrides

__all__ = ["Suggestion", "suggest", "suggested_overrides", "write_overrides"]


@dataclass(frozen=True, slots=True)
class Suggestion:
    """The setting suggested for one tenant, and what it would have given on this input."""

    tenant: str
    point: SweepPoint
    alerts_per_day: float
    within_budget: bool
    current: SweepPoint
    """The tenant's configured threshold (None unless a plain ``gte``) and window."""

    @property
    def changes(self) -> bool:
        """Whether the suggestion differs from the tenant's configuration."""
        swept_threshold = self.point.threshold is not None
        swept_window = self.point.window_s is not None
        return (swept_threshold and self.point.threshold != self.current.threshold) or (
            swept_window and self.point.window_s != self.current.window_s
        )


def suggest(
    result: BacktestResult, budget: float, pack: RulePack, overrides: Overrides | None = None
) -> list[Suggestion]:
    """One suggestion per tenant with events the rule counts, in tenant order."""
    if not (budget >= 0 and math.isfinite(budget)):
        msg = f"budget: got {budget}; give the alerts per tenant per day allowed, a number >= 0"
        raise ConfigError(msg)
    base = overrides if overrides is not None else Overrides.empty()
    rule = pack.get(result.rule_id)
    days = result.days
    counted = result.tenant_events()
    out = []
    for tenant in result.tenants:
        if tenant not in counted:
            continue  # no event of this rule: nothing to go by
        rates = [(p, p.tenant_alerts.get(tenant, 0) / days) for p in result.points]
        within = [(p, r) for p, r in rates if r <= budget]
        if within:
            chosen, rate = min(
                within,
                key=lambda pr: (pr[0].point.threshold or 0, -(pr[0].point.window_s or 0.0)),
            )
        else:
            chosen, rate = min(
                rates,
                key=lambda pr: (pr[1], -(pr[0].point.threshold or 0), pr[0].point.window_s or 0.0),
            )
        eff = base.effective(rule, tenant)
        condition = eff.condition
        plain = (
            condition is not None
            and condition.gte is not None
            and condition.model_dump(exclude_none=True) == {"gte": condition.gte}
        )
        current = SweepPoint(eff.window_s, condition.gte if plain and condition else None)
        out.append(Suggestion(tenant, chosen.point, rate, bool(within), current))
    return out


def suggested_overrides(
    suggestions: list[Suggestion],
    rule_id: str,
    pack: RulePack,
    overrides: Overrides | None = None,
) -> dict[str, Any]:
    """The base overrides plus each changing suggestion, validated by the overrides loader."""
    base = overrides if overrides is not None else Overrides.empty()
    data: dict[str, Any] = base.spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    tenants = data.setdefault("tenants", {})
    for s in suggestions:
        if not s.changes:
            continue
        rules = tenants.setdefault(s.tenant, {}).setdefault("rules", {})
        setting = dict(rules.get(rule_id, {}))
        if s.point.threshold is not None:
            setting.pop("condition", None)
            setting["threshold"] = s.point.threshold
        if s.point.window_s is not None:
            setting["window"] = format_duration(s.point.window_s)
        rules[rule_id] = setting
    if not tenants:
        del data["tenants"]
    parse_overrides(data, pack, origin="suggested overrides")
    return data


def write_overrides(path: str | Path, data: dict[str, Any], header: str) -> None:
    """Write overrides data as YAML with ``header`` as comment lines."""
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    text = comment + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        msg = f"cannot write the overrides file {str(path)!r}: {exc.strerror or exc}"
        raise RayworkerError(msg) from exc
