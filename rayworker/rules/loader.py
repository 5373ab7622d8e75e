"""Loading rule packs and per-tenant overrides, with actionable errors.

A rule file is YAML or JSON (see :mod:`rayworker.rules.model`). Every problem in it is reported
at once, one per line, as a :class:`~rayworker.errors.RuleError`::

    rules.yaml: rule "failed_auth": field "window": got '5x'; use a duration such as "30s", ...

An overrides file adjusts rules per tenant::

    defaults:                       # optional, applies to every tenant
      suppression: 10m
    tenants:
      org-1:
        timezone: Europe/Paris      # used by time_of_day rules
        business_hours: {start: "08:00", end: "18:00", days: [mon, tue, wed, thu, fri]}
        suppression: 10m
        rules:
          failed_auth: {threshold: 10, window: 10m, enabled: true}
          off_hours: {enabled: false}

Precedence, from weakest to strongest: the rule definition, ``defaults``, ``defaults.rules.<id>``,
the tenant's settings, ``tenants.<t>.rules.<id>``. A rule override may set ``enabled``,
``threshold`` or ``condition`` (not on sequence rules), ``window``, ``suppression``, and for
time_of_day rules ``timezone`` and ``business_hours``. Problems are raised as
:class:`~rayworker.errors.OverrideError`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rayworker.errors import ConfigError, OverrideError, RuleError
from rayworker.rules.model import (
    KINDS,
    BusinessHours,
    CountCondition,
    DistinctRule,
    Duration,
    Rule,
    SequenceRule,
    ThresholdRule,
    TimeOfDayRule,
    canonical_json,
    rule_problem,
    validate_timezone,
)

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

__all__ = [
    "EffectiveRule",
    "Overrides",
    "OverridesFile",
    "RuleOverride",
    "RulePack",
    "TenantOverride",
    "load_overrides",
    "load_rules",
    "parse_overrides",
    "parse_rules",
]

_FROZEN = ConfigDict(extra="forbid", frozen=True)
_KIND_MODELS: dict[str, type[BaseModel]] = {
    "threshold": ThresholdRule,
    "distinct": DistinctRule,
    "sequence": SequenceRule,
    "time_of_day": TimeOfDayRule,
}


# --------------------------------------------------------------------------- rule packs


class RulePack(BaseModel):
    """An ordered set of rules with unique ids."""

    model_config = _FROZEN

    rules: tuple[Rule, ...] = Field(max_length=1000, description="The rules, in order.")

    @field_validator("rules")
    @classmethod
    def _unique_ids(cls, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        seen: dict[str, int] = {}
        for i, rule in enumerate(rules):
            if rule.id in seen:
                msg = f'got rule id "{rule.id}" twice (rules[{seen[rule.id]}] and rules[{i}])'
                raise rule_problem(
                    msg,
                    "give each rule a unique id",
                    field="id",
                    rule=rule.id,
                )
            seen[rule.id] = i
        return rules

    @cached_property
    def _by_id(self) -> dict[str, Rule]:
        return {r.id: r for r in self.rules}

    @property
    def ids(self) -> tuple[str, ...]:
        """The rule ids, in order."""
        return tuple(r.id for r in self.rules)

    def get(self, rule_id: str) -> Rule:
        """The rule with this id; KeyError naming the valid ids when there is none."""
        try:
            return self._by_id[rule_id]
        except KeyError:
            msg = f"no rule {rule_id!r}; the pack has {', '.join(self.ids) or 'no rules'}"
            raise KeyError(msg) from None

    def fields(self) -> frozenset[str]:
        """Every dotted path the enabled rules read."""
        return frozenset().union(*(r.fields() for r in self.rules if r.enabled))

    def dump_yaml(self) -> str:
        """The pack as YAML that :func:`load_rules` reads back to an equal pack."""
        rules = []
        for rule in self.rules:
            dumped = _strip_defaults(rule.model_dump(mode="json", exclude_none=True))
            rules.append({"id": dumped.pop("id"), "kind": dumped.pop("kind"), **dumped})
        data = {"rules": rules}
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def _strip_defaults(value: Any) -> Any:
    """Drop ``ignore_case: false`` from filter conditions, for readable dumps."""
    if isinstance(value, dict):
        return {
            k: _strip_defaults(v)
            for k, v in value.items()
            if not (k == "ignore_case" and v is False)
        }
    if isinstance(value, list):
        return [_strip_defaults(v) for v in value]
    return value


def load_rules(source: Path | str) -> RulePack:
    """Load a rule pack from a .yaml/.yml/.json path, or from YAML text."""
    data, origin = _read(source, RuleError)
    return parse_rules(data, origin=origin)


def parse_rules(data: object, *, origin: str) -> RulePack:
    """Validate decoded YAML/JSON data as a rule pack; ``origin`` names it in errors."""
    if not isinstance(data, Mapping) or "rules" not in data:
        msg = (
            f"{origin}: expected a mapping with a rules: list at the top, got "
            f"{_show(data)}; write rules:, then one - id: ... entry per rule"
        )
        raise RuleError(msg)
    try:
        return RulePack.model_validate(data)
    except ValidationError as exc:
        lines = [_rule_problem_line(e, data, origin) for e in _relevant(exc.errors())]
        msg = "\n".join(lines)
        raise RuleError(msg) from None


# --------------------------------------------------------------------------- reading


def _read(source: Path | str, error: type[ConfigError]) -> tuple[object, str]:
    is_path = isinstance(source, Path) or (
        "\n" not in source and source.strip().lower().endswith((".yaml", ".yml", ".json"))
    )
    if not is_path:
        return _parse_text(str(source), "<string>", error, json_text=False), "<string>"
    path = Path(source)
    origin = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"{origin}: cannot read the file ({exc}); check the path and that it is UTF-8"
        raise error(msg) from exc
    return _parse_text(text, origin, error, json_text=path.suffix.lower() == ".json"), origin


def _parse_text(text: str, origin: str, error: type[ConfigError], *, json_text: bool) -> object:
    if json_text:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            msg = f"{origin}: line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg})"
            raise error(msg) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        msg = f"{origin}: {where}invalid YAML ({problem}); check indentation and quoting"
        raise error(msg) from exc


# --------------------------------------------------------------------------- error messages

_FILTER_TAGS = frozenset({"<field>", "<all>", "<any>", "<not>"})


def _relevant(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """Drop "too short" errors of a list whose items failed: the item errors say why."""
    locs = [e["loc"] for e in errors]
    return [
        e
        for e in errors
        if e["type"] != "too_short"
        or not any(len(o) > len(e["loc"]) and o[: len(e["loc"])] == e["loc"] for o in locs)
    ]


def _show(value: object, limit: int = 80) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _walk(node: object, loc: tuple[int | str, ...]) -> str:
    """A readable path (``filter.all[0].regex``) for a location, skipping union tags."""
    out = ""
    for elem in loc:
        if isinstance(elem, int) and isinstance(node, list) and 0 <= elem < len(node):
            node = node[elem]
            out += f"[{elem}]"
        elif isinstance(elem, str) and isinstance(node, Mapping) and elem in node:
            node = node[elem]
            out += f".{elem}" if out else elem
        elif elem in _FILTER_TAGS:
            continue
        else:
            node = None
            part = f"[{elem}]" if isinstance(elem, int) else str(elem)
            out += part if part.startswith("[") or not out else f".{part}"
    return out


_PATTERN_FIXES = {
    "id": "use a lower-case letter, then up to 63 lower-case letters, digits or _",
    "field": "use a dotted path of names such as action or sessionContext.ipAddress",
    "coalesce": "use dotted paths of names such as principalId or sessionContext.ipAddress",
    "as": "use a name such as source (letters, digits, _ and dots)",
    "tags": "use letters, digits and _ . : - (at most 64 characters)",
    "name": "use a letter, then letters, digits, _ or -",
}


_TYPE_HINTS = {
    "filter_kind": "e.g. {field: action, equals: data.read} or {any: [...]}",
    "union_tag_invalid": f"use kind: one of {', '.join(KINDS)}",
    "union_tag_not_found": f"use kind: one of {', '.join(KINDS)}",
    "enum": "use one of the values listed",
    "int_type": "use a whole number",
    "int_parsing": "use a whole number",
    "int_from_float": "use a whole number",
    "float_type": "use a number",
    "float_parsing": "use a number",
    "bool_type": "use true or false",
    "bool_parsing": "use true or false",
    "string_type": "quote it as a string",
    "tuple_type": "use a list, e.g. [a, b]",
    "list_type": "use a list, e.g. [a, b]",
    "model_type": "use a mapping, e.g. {key: value}",
    "dict_type": "use a mapping, e.g. {key: value}",
    "model_attributes_type": "use a mapping, e.g. {key: value}",
    "too_short": "stay within the bounds shown",
    "too_long": "stay within the bounds shown",
    "greater_than": "stay within the bounds shown",
    "greater_than_equal": "stay within the bounds shown",
    "less_than": "stay within the bounds shown",
    "less_than_equal": "stay within the bounds shown",
    "string_too_short": "stay within the bounds shown",
    "string_too_long": "stay within the bounds shown",
}


def _hint(err: ErrorDetails, last: str, allowed: tuple[str, ...]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        fix = "remove it or fix its spelling"
        return f"{fix}; allowed here: {', '.join(allowed)}" if allowed else fix
    if kind == "missing":
        return f"add {last}" if last else "add it"
    if kind == "string_pattern_mismatch":
        return _PATTERN_FIXES.get(last, "match the pattern shown")
    return _TYPE_HINTS.get(kind, "see the rule reference in the README")


def _describe(err: ErrorDetails, path: str, allowed: tuple[str, ...] = ()) -> str:
    """``field "x": got ...; fix`` for one validation error."""
    ctx = err.get("ctx") or {}
    if err["type"] == "rule":
        sub = str(ctx.get("field", ""))
        if sub and not path.endswith(sub):
            path = f"{path}.{sub}" if path else sub
        where = f'field "{path}": ' if path else ""
        return f"{where}{err['msg']}"
    last = path.rsplit(".", 1)[-1].split("[", 1)[0] if path else ""
    if err["type"] == "missing":
        given = "missing"
    elif err["type"] == "extra_forbidden":
        given = f"unknown field (value {_show(err['input'])})"
    else:
        given = f"got {_show(err['input'])}: {err['msg']}"
    where = f'field "{path}": ' if path else ""
    return f"{where}{given}; {_hint(err, last, allowed)}"


def _rule_problem_line(err: ErrorDetails, data: Mapping[str, Any], origin: str) -> str:
    loc = err["loc"]
    rules = data.get("rules")
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int) and isinstance(rules, list):
        idx = loc[1]
        item = rules[idx] if 0 <= idx < len(rules) else None
        rest = loc[2:]
        allowed: tuple[str, ...] = ()
        kind = item.get("kind") if isinstance(item, Mapping) else None
        if rest and isinstance(kind, str) and rest[0] == kind:
            rest = rest[1:]
        if len(rest) == 1 and isinstance(kind, str) and kind in _KIND_MODELS:
            allowed = _aliases(_KIND_MODELS[kind])
        rule_id = item.get("id") if isinstance(item, Mapping) else None
        subject = f'rule "{rule_id}"' if isinstance(rule_id, str) else f"rules[{idx}] (no id)"
        if not rest and err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            given = "missing" if kind is None else f"got {_show(kind)}"
            return f'{origin}: {subject}: field "kind": {given}; use one of {", ".join(KINDS)}'
        return f"{origin}: {subject}: {_describe(err, _walk(item, rest), allowed)}"
    ctx = err.get("ctx") or {}
    if ctx.get("rule"):
        return f'{origin}: rule "{ctx["rule"]}": {_describe(err, "")}'
    return f"{origin}: {_describe(err, _walk(data, loc))}"


def _aliases(model: type[BaseModel]) -> tuple[str, ...]:
    names = [f.alias or name for name, f in model.model_fields.items()]
    if "condition" in names:
        names.append("threshold")
    return tuple(sorted(names))


# --------------------------------------------------------------------------- overrides

TenantId = Annotated[str, Field(min_length=1, max_length=255)]
Timezone = Annotated[str, Field(max_length=64)]


class RuleOverride(BaseModel):
    """One rule's parameters for a tenant (or for every tenant, under ``defaults``)."""

    model_config = _FROZEN

    enabled: bool | None = Field(default=None, description="Run the rule for this tenant.")
    threshold: int | None = Field(
        default=None, ge=1, le=10**9, description="Shorthand for condition: {gte: n}."
    )
    condition: CountCondition | None = Field(default=None, description="The count condition.")
    window: Duration | None = Field(default=None, description="The sliding window length.")
    suppression: Duration | None = Field(default=None, description="The suppression period.")
    timezone: Timezone | None = Field(
        default=None, description="time_of_day rules only: the timezone of business hours."
    )
    business_hours: BusinessHours | None = Field(
        default=None, description="time_of_day rules only: the business hours."
    )

    @field_validator("timezone")
    @classmethod
    def _check_tz(cls, value: str | None) -> str | None:
        return None if value is None else validate_timezone(value)

    @model_validator(mode="after")
    def _check(self) -> RuleOverride:
        if self.threshold is not None and self.condition is not None:
            msg = "got both threshold and condition"
            raise rule_problem(
                msg,
                "keep one: threshold: 5 is shorthand for condition: {gte: 5}",
                field="threshold",
            )
        return self

    @property
    def count_condition(self) -> CountCondition | None:
        """The condition this override sets, threshold shorthand expanded."""
        if self.threshold is not None:
            return CountCondition(gte=self.threshold)
        return self.condition


class TenantOverride(BaseModel):
    """A tenant's settings and rule overrides (also the shape of ``defaults``)."""

    model_config = _FROZEN

    timezone: Timezone | None = Field(
        default=None, description="The tenant's IANA timezone, for time_of_day rules."
    )
    business_hours: BusinessHours | None = Field(
        default=None, description="The tenant's business hours, for time_of_day rules."
    )
    suppression: Duration | None = Field(
        default=None, description="Suppression period for every rule of the tenant."
    )
    rules: dict[str, RuleOverride] = Field(
        default_factory=dict, max_length=1000, description="Overrides by rule id."
    )

    @field_validator("timezone")
    @classmethod
    def _check_tz(cls, value: str | None) -> str | None:
        return None if value is None else validate_timezone(value)


class OverridesFile(BaseModel):
    """The whole overrides file."""

    model_config = _FROZEN

    defaults: TenantOverride = Field(
        default_factory=TenantOverride, description="Applies to every tenant."
    )
    tenants: dict[TenantId, TenantOverride] = Field(
        default_factory=dict, max_length=100_000, description="Overrides by tenant id."
    )


@dataclass(frozen=True, slots=True)
class EffectiveRule:
    """A rule's parameters for one tenant, overrides applied."""

    rule_id: str
    kind: str
    enabled: bool
    condition: CountCondition | None
    """None for sequence rules (completing the steps is the condition)."""
    window_s: float
    suppression_s: float | None
    """None means the detector's default."""
    timezone: str
    """The tenant's timezone ("UTC" unless overridden)."""
    business_hours: BusinessHours | None
    """Set for time_of_day rules only."""
    version: str
    """The rule's version, or a hash of it and the overrides when they change anything."""


class Overrides:
    """Per-tenant overrides of a rule pack; :meth:`effective` is cached per rule and tenant."""

    def __init__(self, spec: OverridesFile | None = None) -> None:
        self.spec = spec if spec is not None else OverridesFile()
        self._cache: dict[tuple[str, str, bool, str], EffectiveRule] = {}

    @classmethod
    def empty(cls) -> Overrides:
        """No overrides: every tenant gets the rules as defined."""
        return cls()

    @property
    def tenants(self) -> tuple[str, ...]:
        """The tenants with overrides."""
        return tuple(self.spec.tenants)

    def __repr__(self) -> str:
        return f"Overrides(tenants={len(self.spec.tenants)})"

    def effective(self, rule: Rule, tenant: str) -> EffectiveRule:
        """The rule's parameters for ``tenant``."""
        key = (rule.id, rule.version, rule.enabled, tenant)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = self._compute(rule, tenant)
        return cached

    def _compute(self, rule: Rule, tenant: str) -> EffectiveRule:
        defaults = self.spec.defaults
        tenant_o = self.spec.tenants.get(tenant)
        layers: list[TenantOverride | RuleOverride] = [defaults]
        if rule.id in defaults.rules:
            layers.append(defaults.rules[rule.id])
        if tenant_o is not None:
            layers.append(tenant_o)
            if rule.id in tenant_o.rules:
                layers.append(tenant_o.rules[rule.id])

        enabled = rule.enabled
        condition = None if isinstance(rule, SequenceRule) else rule.condition
        window_s = rule.window_s
        suppression_s = rule.suppression
        tod = rule if isinstance(rule, TimeOfDayRule) else None
        is_tod = tod is not None
        base_tz = "UTC" if tod is None else tod.timezone
        base_hours = None if tod is None else tod.business_hours
        timezone, hours = base_tz, base_hours
        for layer in layers:
            if layer.suppression is not None:
                suppression_s = layer.suppression
            if layer.timezone is not None:
                timezone = layer.timezone
            if is_tod and layer.business_hours is not None:
                hours = layer.business_hours
            if isinstance(layer, RuleOverride):
                if layer.enabled is not None:
                    enabled = layer.enabled
                if layer.window is not None:
                    window_s = layer.window
                if condition is not None and layer.count_condition is not None:
                    condition = layer.count_condition

        def params(
            cond: CountCondition | None,
            win: float,
            sup: float | None,
            tz: str,
            bh: BusinessHours | None,
        ) -> dict[str, object]:
            return {
                "condition": None if cond is None else cond.model_dump(mode="json"),
                "window_s": win,
                "suppression_s": sup,
                "timezone": tz if is_tod else None,
                "business_hours": None if bh is None else bh.model_dump(mode="json"),
            }

        base_cond = None if isinstance(rule, SequenceRule) else rule.condition
        base = params(base_cond, rule.window_s, rule.suppression, base_tz, base_hours)
        mine = params(condition, window_s, suppression_s, timezone, hours)
        version = rule.version
        if mine != base:
            digest = hashlib.sha256((rule.version + canonical_json(mine)).encode())
            version = digest.hexdigest()[:12]
        return EffectiveRule(
            rule_id=rule.id,
            kind=rule.kind,
            enabled=enabled,
            condition=condition,
            window_s=window_s,
            suppression_s=suppression_s,
            timezone=timezone,
            business_hours=hours,
            version=version,
        )


def load_overrides(source: Path | str, pack: RulePack) -> Overrides:
    """Load per-tenant overrides from a .yaml/.yml/.json path or YAML text, checked on ``pack``."""
    data, origin = _read(source, OverrideError)
    return parse_overrides(data, pack, origin=origin)


def parse_overrides(data: object, pack: RulePack, *, origin: str) -> Overrides:
    """Validate decoded overrides data against ``pack``; every problem is reported at once."""
    if data is None:
        return Overrides.empty()
    if not isinstance(data, Mapping):
        msg = (
            f"{origin}: expected a mapping with defaults: and/or tenants:, got {_show(data)}; "
            "write tenants:, then one entry per tenant id"
        )
        raise OverrideError(msg)
    try:
        spec = OverridesFile.model_validate(data)
    except ValidationError as exc:
        lines = [_override_problem_line(e, data, origin) for e in _relevant(exc.errors())]
        lines += _unknown_ids(data, pack, origin)
        msg = "\n".join(lines)
        raise OverrideError(msg) from None
    problems: list[str] = []
    scopes: list[tuple[str, TenantOverride]] = [("defaults", spec.defaults)]
    scopes += [(f'tenant "{t}"', o) for t, o in spec.tenants.items()]
    for scope, override in scopes:
        for rule_id, ro in override.rules.items():
            where = f'{origin}: {scope}: rule "{rule_id}"'
            problems.extend(f"{where}: {p}" for p in _check_rule(ro, rule_id, pack))
    if problems:
        raise OverrideError("\n".join(problems))
    return Overrides(spec)


def _unknown_ids(data: Mapping[str, Any], pack: RulePack, origin: str) -> list[str]:
    """Unknown rule ids in raw overrides data (reported alongside validation errors)."""
    scopes: list[tuple[str, object]] = [("defaults", data.get("defaults"))]
    tenants = data.get("tenants")
    if isinstance(tenants, Mapping):
        scopes += [(f'tenant "{t}"', o) for t, o in tenants.items()]
    out: list[str] = []
    for scope, override in scopes:
        rules = override.get("rules") if isinstance(override, Mapping) else None
        if isinstance(rules, Mapping):
            out.extend(
                f'{origin}: {scope}: rule "{rule_id}": unknown rule; valid rule ids are '
                f"{', '.join(pack.ids)}"
                for rule_id in rules
                if rule_id not in pack.ids
            )
    return out


def _check_rule(ro: RuleOverride, rule_id: str, pack: RulePack) -> list[str]:
    if rule_id not in pack.ids:
        return [f"unknown rule; valid rule ids are {', '.join(pack.ids)}"]
    rule = pack.get(rule_id)
    out: list[str] = []
    if isinstance(rule, SequenceRule):
        out.extend(
            f'field "{name}": a sequence rule has no count condition (completing its steps is '
            f"the condition); remove {name}, or change the steps' count in the rule file"
            for name in ("threshold", "condition")
            if getattr(ro, name) is not None
        )
    if not isinstance(rule, TimeOfDayRule):
        out.extend(
            f'field "{name}": only time_of_day rules use it and this is a {rule.kind} rule; '
            "remove it, or set it on the tenant for its time_of_day rules"
            for name in ("timezone", "business_hours")
            if getattr(ro, name) is not None
        )
    return out


def _override_problem_line(err: ErrorDetails, data: Mapping[str, Any], origin: str) -> str:
    loc = err["loc"]
    tenants = data.get("tenants")
    if len(loc) >= 2 and loc[0] == "tenants" and isinstance(tenants, Mapping):
        tenant = loc[1]
        sub = tenants.get(tenant)
        subject = f'tenant "{tenant}"'
        if str(tenant).endswith("[key]"):
            subject = f"tenant {tenant}"
        return f"{origin}: {subject}: {_describe(err, _walk(sub, loc[2:]))}"
    if loc and loc[0] == "defaults":
        return f"{origin}: defaults: {_describe(err, _walk(data.get('defaults'), loc[1:]))}"
    return f"{origin}: {_describe(err, _walk(data, loc))}"
