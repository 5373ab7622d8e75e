"""Declarative detection rules: the model, the built-in pack, loading, overrides, predicates.

Pure core: nothing here imports ray, redis or asyncpg.
"""

from __future__ import annotations

from rayworker.rules.builtin import BUILTIN_RULE_IDS, builtin_pack, builtin_yaml
from rayworker.rules.loader import (
    EffectiveRule,
    Overrides,
    OverridesFile,
    RuleOverride,
    RulePack,
    TenantOverride,
    load_overrides,
    load_rules,
    parse_overrides,
    parse_rules,
)
from rayworker.rules.model import (
    AlertType,
    AllOf,
    AnyOf,
    BusinessHours,
    CountCondition,
    DistinctRule,
    FieldCondition,
    Filter,
    GroupKey,
    NotOf,
    Rule,
    RuleBase,
    SequenceRule,
    SequenceStep,
    Severity,
    ThresholdRule,
    TimeOfDayRule,
    Weekday,
    format_duration,
    parse_duration,
)
from rayworker.rules.predicates import ColumnView, Predicate, compile_filter, compile_steps

__all__ = [
    "BUILTIN_RULE_IDS",
    "AlertType",
    "AllOf",
    "AnyOf",
    "BusinessHours",
    "ColumnView",
    "CountCondition",
    "DistinctRule",
    "EffectiveRule",
    "FieldCondition",
    "Filter",
    "GroupKey",
    "NotOf",
    "Overrides",
    "OverridesFile",
    "Predicate",
    "Rule",
    "RuleBase",
    "RuleOverride",
    "RulePack",
    "SequenceRule",
    "SequenceStep",
    "Severity",
    "TenantOverride",
    "ThresholdRule",
    "TimeOfDayRule",
    "Weekday",
    "builtin_pack",
    "builtin_yaml",
    "compile_filter",
    "compile_steps",
    "format_duration",
    "load_overrides",
    "load_rules",
    "parse_duration",
    "parse_overrides",
    "parse_rules",
]
