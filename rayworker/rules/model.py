"""The declarative rule model: closed, described, bounded pydantic models.

A rule pack is YAML (or JSON)::

    rules:
      - id: failed_auth
        kind: threshold              # threshold | distinct | sequence | time_of_day
        title: "Suspicious Pattern Detected: FAILED_AUTH"
        description: "{count} failed authentication attempts detected from {source} ..."
        severity: HIGH
        filter: {all: [{field: action, in: [auth.login.failure]}, {field: status, equals: failure}]}
        group_by: [{as: source, coalesce: [principalId, sessionContext.ipAddress]}]
        window: 5m
        condition: {gte: 5}          # or the shorthand ``threshold: 5``

The tenant (``organizationId``) is always the implicit first group key. Every model here is
frozen and rejects unknown fields; the loader turns validation errors into
:class:`rayworker.errors.RuleError` messages that name the rule, the field and the fix.

Kinds:

* ``threshold``: the number of matching events in the sliding window, per group.
* ``distinct``: the number of distinct values of ``field`` in the window, per group.
* ``sequence``: ``steps`` (two or more) matched in order within ``window``; the rule-level
  ``filter`` applies to every step; completing the sequence is the condition.
* ``time_of_day``: matching events *outside* ``business_hours`` (local time in ``timezone``, or
  the tenant's timezone from the overrides) are counted; ``condition`` defaults to ``{gte: 1}``
  and ``window`` to one hour. When ``start > end`` business hours cross midnight, and the part
  after midnight belongs to the day on which the hours started.

Templates (``title``, ``description``) are :meth:`str.format_map` templates. The placeholders
are ``count``, ``threshold`` (the condition's lower bound, or a sequence's total step count),
``window_seconds``, ``window`` (e.g. ``5m``), ``tenant``, ``rule_id``, ``group`` (the group
values joined by ``", "``) and each group name with dots replaced by ``_``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
from collections.abc import Mapping, Sequence
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, Literal, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    PlainValidator,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "KINDS",
    "MAX_FILTER_DEPTH",
    "MAX_WINDOW_S",
    "TEMPLATE_PLACEHOLDERS",
    "AlertType",
    "AllOf",
    "AnyOf",
    "BusinessHours",
    "CountCondition",
    "DistinctRule",
    "Duration",
    "FieldCondition",
    "Filter",
    "GroupKey",
    "NotOf",
    "Rule",
    "RuleBase",
    "SequenceRule",
    "SequenceStep",
    "Severity",
    "ThresholdRule",
    "TimeOfDayRule",
    "Weekday",
    "canonical_json",
    "filter_fields",
    "format_duration",
    "parse_duration",
    "rule_problem",
    "validate_timezone",
]

MAX_WINDOW_S = 7 * 86400.0
"""The longest accepted window or suppression period, in seconds (7 days)."""
MAX_FILTER_DEPTH = 8
"""The deepest accepted nesting of ``all``/``any``/``not`` filters, leaves included."""
KINDS = ("threshold", "distinct", "sequence", "time_of_day")
"""The rule kinds, the values of ``kind``."""
TEMPLATE_PLACEHOLDERS = (
    "count",
    "threshold",
    "window_seconds",
    "window",
    "tenant",
    "rule_id",
    "group",
)
"""The placeholders every template may use, besides the rule's group names."""

_FROZEN = ConfigDict(
    extra="forbid",
    frozen=True,
    validate_by_name=True,
    validate_by_alias=True,
    serialize_by_alias=True,
)
_PATH_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
_PATH_FIX = "use a dotted path of names such as action or sessionContext.ipAddress"


def rule_problem(problem: str, fix: str, *, field: str = "", rule: str = "") -> PydanticCustomError:
    """A validation error whose message says what is wrong and how to fix it.

    ``field`` names the field (relative to where the error is raised) when the error is raised
    by a model-level validator, and ``rule`` the rule when it is raised above the rule; the
    loader adds them to the message.
    """
    ctx = {"problem": problem, "fix": fix, "field": field, "rule": rule}
    return PydanticCustomError("rule", "{problem}; {fix}", ctx)


# --------------------------------------------------------------------------- durations

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_FIX = 'use a duration such as "30s", "5m" or "1h" (units ms, s, m, h, d) up to "7d"'


def parse_duration(value: object) -> float:
    """Seconds from ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"1d"`` or a number of seconds.

    Raises a validation error (``PydanticCustomError``) for anything else, or for a duration
    that is not > 0 and <= 7 days.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        msg = f"got {value!r}"
        raise rule_problem(msg, _DURATION_FIX)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m is None:
            msg = f"got {value!r}"
            raise rule_problem(msg, _DURATION_FIX)
        number, unit = float(m.group(1)), m.group(2)
        seconds = number / 1000 if unit == "ms" else number * _UNIT_S[unit]
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_WINDOW_S:
        msg = f"got {value!r}, which is not > 0 and <= 7d"
        raise rule_problem(msg, _DURATION_FIX)
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact human form of a duration: ``300.0`` -> ``"5m"``."""
    for unit in ("d", "h", "m", "s"):
        n = seconds / _UNIT_S[unit]
        if n >= 1 and n == int(n):
            return f"{int(n)}{unit}"
    ms = seconds * 1000
    if ms == int(ms) and int(ms) / 1000 == seconds:
        return f"{int(ms)}ms"
    return f"{seconds!r}s"


Duration: TypeAlias = Annotated[
    float,
    BeforeValidator(parse_duration),
    Field(gt=0, le=MAX_WINDOW_S),
    PlainSerializer(format_duration, return_type=str),
]
"""Seconds as a float; accepts ``"5m"``-style strings and numbers, dumps as ``"5m"``."""


def validate_timezone(name: str) -> str:
    """Return ``name`` if it is an IANA timezone known to :mod:`zoneinfo`, else raise."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        fix = 'use an IANA timezone name such as "UTC", "Europe/Paris" or "America/New_York"'
        msg = f"got {name!r}, which is not a known timezone"
        raise rule_problem(msg, fix) from exc
    return name


# --------------------------------------------------------------------------- enums


class Severity(StrEnum):
    """Alert severity, ordered by :attr:`rank`: INFO < LOW < MEDIUM < HIGH < CRITICAL."""

    INFO = "INFO"
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        """0 for INFO up to 4 for CRITICAL, for ordering and thresholds."""
        return _SEVERITY_ORDER.index(self)


_SEVERITY_ORDER = tuple(Severity)


class AlertType(StrEnum):
    """The alert type recorded on alerts, as in the original schema."""

    SECURITY = "SECURITY"
    COMPLIANCE = "COMPLIANCE"
    PERFORMANCE = "PERFORMANCE"
    SYSTEM = "SYSTEM"
    METRICS = "METRICS"
    DELIVERY = "DELIVERY"
    CUSTOM = "CUSTOM"


class Weekday(StrEnum):
    """A day of the week; :attr:`number` is 0 for Monday, as :meth:`datetime.weekday`."""

    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"

    @property
    def number(self) -> int:
        """0 for Monday up to 6 for Sunday."""
        return _WEEKDAY_ORDER.index(self)


_WEEKDAY_ORDER = tuple(Weekday)


# --------------------------------------------------------------------------- filters


def _scalar(value: object) -> object:
    if isinstance(value, str | bool | int | float):
        return value
    msg = f"got {value!r}"
    raise rule_problem(msg, "use a single string, number or true/false")


def _number(value: object) -> object:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    msg = f"got {value!r}"
    raise rule_problem(msg, "use a number (unquoted), e.g. gt: 10")


Scalar: TypeAlias = Annotated[
    StrictStr | StrictBool | StrictInt | StrictFloat, PlainValidator(_scalar)
]
Number: TypeAlias = Annotated[StrictInt | StrictFloat, PlainValidator(_number)]
FieldPath: TypeAlias = Annotated[
    str,
    Field(
        pattern=_PATH_PATTERN,
        max_length=256,
        description="A dotted path into the camelCase event JSON, e.g. sessionContext.ipAddress.",
    ),
]
_OPERATORS = (
    "equals",
    "in",
    "contains",
    "startswith",
    "endswith",
    "regex",
    "exists",
    "gt",
    "gte",
    "lt",
    "lte",
    "eq",
    "neq",
)


class FieldCondition(BaseModel):
    """A test of one event field; several operators in one condition must all hold."""

    model_config = _FROZEN

    field: FieldPath
    equals: Scalar | None = Field(
        default=None, description="JSON equality; a bool never equals 1 or 0."
    )
    in_: tuple[Scalar, ...] | None = Field(
        default=None,
        alias="in",
        min_length=1,
        max_length=1000,
        description="The value equals one of these (JSON equality).",
    )
    contains: str | None = Field(
        default=None, max_length=4096, description="The value is a string containing this."
    )
    startswith: str | None = Field(
        default=None, max_length=4096, description="The value is a string starting with this."
    )
    endswith: str | None = Field(
        default=None, max_length=4096, description="The value is a string ending with this."
    )
    regex: str | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="re.search on string values; compiled when the rule loads.",
    )
    exists: StrictBool | None = Field(
        default=None, description="true: present and not null; false: missing or null."
    )
    gt: Number | None = Field(default=None, description="A number (not a bool) > this.")
    gte: Number | None = Field(default=None, description="A number (not a bool) >= this.")
    lt: Number | None = Field(default=None, description="A number (not a bool) < this.")
    lte: Number | None = Field(default=None, description="A number (not a bool) <= this.")
    eq: Number | None = Field(default=None, description="A number (not a bool) == this.")
    neq: Number | None = Field(
        default=None, description="A number (not a bool, not missing) != this."
    )
    ignore_case: StrictBool = Field(
        default=False,
        description="Case-insensitive equals/in/contains/startswith/endswith/regex.",
    )

    @model_validator(mode="after")
    def _check(self) -> FieldCondition:
        if all(getattr(self, _py(op)) is None for op in _OPERATORS):
            ops = ", ".join(_OPERATORS)
            msg = f"field condition on {self.field!r} has no operator"
            raise rule_problem(msg, f"add one of {ops}")
        if self.regex is not None:
            try:
                re.compile(self.regex, re.IGNORECASE if self.ignore_case else 0)
            except re.error as exc:
                fix = "fix the pattern (Python re syntax) or quote it in single quotes in YAML"
                msg = f"got {self.regex!r}, an invalid regular expression ({exc})"
                raise rule_problem(msg, fix, field="regex") from exc
        return self

    @property
    def depth(self) -> int:
        """Nesting depth; a field condition is a leaf of depth 1."""
        return 1


def _py(op: str) -> str:
    return "in_" if op == "in" else op


def _check_depth(children: Sequence[Filter], what: str) -> None:
    depth = 1 + max(c.depth for c in children)
    if depth > MAX_FILTER_DEPTH:
        msg = f"{what} filter nests {depth} levels deep (at most {MAX_FILTER_DEPTH})"
        raise rule_problem(msg, "flatten it: all/any inside all/any of the same kind can merge")


class AllOf(BaseModel):
    """Holds when every filter in the list holds."""

    model_config = _FROZEN

    all_: tuple[Filter, ...] = Field(
        alias="all", min_length=1, max_length=100, description="Filters that must all hold."
    )

    @model_validator(mode="after")
    def _check(self) -> AllOf:
        _check_depth(self.all_, "all")
        return self

    @property
    def depth(self) -> int:
        """Nesting depth, counting this level."""
        return 1 + max(c.depth for c in self.all_)


class AnyOf(BaseModel):
    """Holds when at least one filter in the list holds."""

    model_config = _FROZEN

    any_: tuple[Filter, ...] = Field(
        alias="any", min_length=1, max_length=100, description="Filters of which one must hold."
    )

    @model_validator(mode="after")
    def _check(self) -> AnyOf:
        _check_depth(self.any_, "any")
        return self

    @property
    def depth(self) -> int:
        """Nesting depth, counting this level."""
        return 1 + max(c.depth for c in self.any_)


class NotOf(BaseModel):
    """Holds when the inner filter does not hold."""

    model_config = _FROZEN

    not_: Filter = Field(alias="not", description="The filter to negate.")

    @model_validator(mode="after")
    def _check(self) -> NotOf:
        _check_depth((self.not_,), "not")
        return self

    @property
    def depth(self) -> int:
        """Nesting depth, counting this level."""
        return 1 + self.not_.depth


def _filter_tag(value: Any) -> str | None:
    if isinstance(value, FieldCondition | AllOf | AnyOf | NotOf):
        return _MODEL_TAGS[type(value)]
    if isinstance(value, Mapping):
        for key in ("field", "all", "any", "not"):
            if key in value:
                return f"<{key}>"
    return None


_MODEL_TAGS: dict[type, str] = {
    FieldCondition: "<field>",
    AllOf: "<all>",
    AnyOf: "<any>",
    NotOf: "<not>",
}


Filter: TypeAlias = Annotated[
    Annotated[FieldCondition, Tag("<field>")]
    | Annotated[AllOf, Tag("<all>")]
    | Annotated[AnyOf, Tag("<any>")]
    | Annotated[NotOf, Tag("<not>")],
    Discriminator(
        _filter_tag,
        custom_error_type="filter_kind",
        custom_error_message=(
            "a filter must be a mapping with field: (and an operator), all: [...], any: [...] "
            "or not: {...}"
        ),
    ),
]
"""A field condition, or ``all``/``any``/``not`` of filters."""

AllOf.model_rebuild()
AnyOf.model_rebuild()
NotOf.model_rebuild()


def filter_fields(f: Filter | None) -> frozenset[str]:
    """The dotted paths a filter reads."""
    if f is None:
        return frozenset()
    if isinstance(f, FieldCondition):
        return frozenset((f.field,))
    if isinstance(f, AllOf):
        return frozenset().union(*(filter_fields(c) for c in f.all_))
    if isinstance(f, AnyOf):
        return frozenset().union(*(filter_fields(c) for c in f.any_))
    return filter_fields(f.not_)


# --------------------------------------------------------------------------- parts


class CountCondition(BaseModel):
    """A condition on a count, Sigma-correlation style; all given bounds must hold."""

    model_config = _FROZEN

    gt: int | None = Field(default=None, ge=0, le=10**9, description="count > this")
    gte: int | None = Field(default=None, ge=0, le=10**9, description="count >= this")
    lt: int | None = Field(default=None, ge=0, le=10**9, description="count < this")
    lte: int | None = Field(default=None, ge=0, le=10**9, description="count <= this")
    eq: int | None = Field(default=None, ge=0, le=10**9, description="count == this")
    neq: int | None = Field(default=None, ge=0, le=10**9, description="count != this")

    @model_validator(mode="after")
    def _check(self) -> CountCondition:
        given = [v for v in self._bounds() if v is not None]
        if not given:
            msg = "the condition has no bound"
            raise rule_problem(msg, "give at least one of gt, gte, lt, lte, eq, neq")
        # Above the largest bound every comparison is constant, so this search is complete.
        if not any(self.holds(n) for n in range(max(given) + 2)):
            msg = f"the condition {self.model_dump(exclude_none=True)} can never hold"
            raise rule_problem(
                msg,
                "make the bounds overlap, e.g. {gte: 5, lt: 10}",
            )
        return self

    def _bounds(self) -> tuple[int | None, ...]:
        return (self.gt, self.gte, self.lt, self.lte, self.eq, self.neq)

    def holds(self, n: int) -> bool:
        """Whether a count of ``n`` satisfies every bound."""
        return not (
            (self.gt is not None and not n > self.gt)
            or (self.gte is not None and not n >= self.gte)
            or (self.lt is not None and not n < self.lt)
            or (self.lte is not None and not n <= self.lte)
            or (self.eq is not None and n != self.eq)
            or (self.neq is not None and n == self.neq)
        )

    @property
    def monotone(self) -> bool:
        """True when only gt/gte are given: adding events can only make it hold."""
        return self.lt is None and self.lte is None and self.eq is None and self.neq is None

    @property
    def lower_bound(self) -> int:
        """The smallest count the lower bounds allow (0 when there is none)."""
        lows = [self.gte or 0, 0 if self.gt is None else self.gt + 1, self.eq or 0]
        return max(lows)


class GroupKey(BaseModel):
    """One group-by key: the first non-missing value of ``coalesce``, named ``as``."""

    model_config = _FROZEN

    as_: str = Field(
        alias="as",
        pattern=_PATH_PATTERN,
        max_length=64,
        description="The group name; dots become _ in templates.",
    )
    coalesce: tuple[FieldPath, ...] = Field(
        min_length=1, max_length=8, description="Paths tried in order; the first present wins."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"as": data, "coalesce": [data]}
        return data

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> Any:
        if self.coalesce == (self.as_,):
            return self.as_
        return handler(self)

    @property
    def placeholder(self) -> str:
        """The template placeholder of this group: the name with dots replaced by ``_``."""
        return self.as_.replace(".", "_")


_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def _hhmm(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        msg = f"got the number {value}"
        raise rule_problem(
            msg,
            'quote the time, e.g. start: "08:00" (YAML reads unquoted 18:00 as the number 1080)',
        )
    if not isinstance(value, str) or _HHMM.match(value) is None:
        msg = f"got {value!r}"
        raise rule_problem(msg, 'use a 24-hour time "HH:MM" such as "08:00"')
    return value


HHMM: TypeAlias = Annotated[str, BeforeValidator(_hhmm), Field(min_length=5, max_length=5)]


class BusinessHours(BaseModel):
    """Business hours in local time; events outside them are counted by time_of_day rules.

    ``start > end`` means the hours cross midnight; the part after midnight belongs to the day
    the hours started on (Friday 22:00-06:00 covers Saturday 01:00).
    """

    model_config = _FROZEN

    start: HHMM = Field(description='Local start time "HH:MM" (inclusive).')
    end: HHMM = Field(description='Local end time "HH:MM" (exclusive).')
    days: tuple[Weekday, ...] = Field(
        default=tuple(Weekday),
        min_length=1,
        max_length=7,
        description="Days with business hours; default every day.",
    )

    @model_validator(mode="after")
    def _check(self) -> BusinessHours:
        if self.start == self.end:
            msg = (
                f"start and end are both {self.start!r}, which leaves no business hours at all "
                "(or makes them the whole day, it is ambiguous)"
            )
            raise rule_problem(
                msg,
                'write hours that differ, e.g. start "08:00", end "18:00"; for hours across '
                'midnight put start after end, e.g. start "22:00", end "06:00"',
                field="end",
            )
        if len(set(self.days)) != len(self.days):
            msg = f"days lists a day twice: {[d.value for d in self.days]}"
            raise rule_problem(
                msg,
                "list each day once",
                field="days",
            )
        return self

    @cached_property
    def start_minute(self) -> int:
        """The start as minutes after local midnight."""
        return int(self.start[:2]) * 60 + int(self.start[3:])

    @cached_property
    def end_minute(self) -> int:
        """The end as minutes after local midnight."""
        return int(self.end[:2]) * 60 + int(self.end[3:])

    @cached_property
    def _day_set(self) -> frozenset[int]:
        return frozenset(d.number for d in self.days)

    def is_outside(self, local_minute_of_day: int, weekday: int) -> bool:
        """Whether a local time (minute 0..1439, weekday 0=Mon) is outside business hours."""
        start, end, days = self.start_minute, self.end_minute, self._day_set
        if start < end:
            inside = weekday in days and start <= local_minute_of_day < end
        elif local_minute_of_day >= start:
            inside = weekday in days
        elif local_minute_of_day < end:
            inside = (weekday - 1) % 7 in days
        else:
            inside = False
        return not inside


class SequenceStep(BaseModel):
    """One step of a sequence rule."""

    model_config = _FROZEN

    name: str = Field(
        pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$", description="The step's name, for messages."
    )
    filter: Filter = Field(description="Events this step matches (and the rule's filter).")
    count: int = Field(
        default=1, ge=1, le=10_000, description="How many matching events complete this step."
    )


# --------------------------------------------------------------------------- rules

_ID_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"


def canonical_json(value: object) -> str:
    """JSON with sorted keys and no spaces: the input of every version hash."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class RuleBase(BaseModel):
    """Fields and behaviour shared by every rule kind."""

    model_config = _FROZEN

    id: str = Field(
        pattern=_ID_PATTERN,
        description="Unique id in the pack: a lower-case letter, then letters, digits or _.",
    )
    title: str = Field(min_length=1, max_length=500, description="Alert title template.")
    description: str = Field(
        min_length=1, max_length=4000, description="Alert description template."
    )
    severity: Severity = Field(description="Alert severity.")
    type: AlertType = Field(default=AlertType.SECURITY, description="Alert type.")
    tags: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")], ...] = Field(
        default=(), max_length=16, description="Alert tags."
    )
    enabled: bool = Field(default=True, description="Whether the rule runs (not in version).")
    filter: Filter | None = Field(
        default=None, description="Events the rule counts; absent = every event."
    )
    group_by: tuple[GroupKey, ...] = Field(
        default=(),
        max_length=4,
        description="Group keys after the implicit tenant key: a path or {as, coalesce}.",
    )
    skip_missing: bool = Field(
        default=False, description="Do not count events with a missing group value."
    )
    window: Duration = Field(description="Sliding window length.")
    suppression: Duration | None = Field(
        default=None, description="Suppression period after an alert; absent = detector default."
    )

    @field_validator("group_by")
    @classmethod
    def _check_group_by(cls, keys: tuple[GroupKey, ...]) -> tuple[GroupKey, ...]:
        names = [k.as_ for k in keys]
        for key in keys:
            if "organizationId" in key.coalesce or key.as_ in {"organizationId", "tenant"}:
                msg = f"got {key.as_!r}: the tenant (organizationId) is always the first group key"
                raise rule_problem(
                    msg,
                    "remove it from group_by",
                )
            if key.placeholder in TEMPLATE_PLACEHOLDERS:
                msg = f"got group name {key.as_!r}, which clashes with a template placeholder"
                raise rule_problem(
                    msg,
                    f"rename it with as: (reserved: {', '.join(TEMPLATE_PLACEHOLDERS)})",
                )
        placeholders = [k.placeholder for k in keys]
        if len(set(placeholders)) != len(placeholders):
            msg = f"got group names {names} twice"
            raise rule_problem(msg, "give each key a distinct as:")
        return keys

    @model_validator(mode="after")
    def _check_templates(self) -> RuleBase:
        allowed = (*TEMPLATE_PLACEHOLDERS, *(k.placeholder for k in self.group_by))
        sample: dict[str, object] = dict.fromkeys(allowed, "x")
        sample.update(count=1, threshold=1, window_seconds=1)
        for name in ("title", "description"):
            template: str = getattr(self, name)
            fix = f"use only the placeholders {', '.join(allowed)} (write {{{{ for a literal {{)"
            try:
                parsed = list(string.Formatter().parse(template))
            except ValueError as exc:
                msg = f"got {template!r}, a bad format string ({exc})"
                raise rule_problem(msg, fix, field=name) from exc
            for _, field_name, _, _ in parsed:
                if field_name is None:
                    continue
                if field_name not in allowed:
                    msg = f"got {template!r} with unknown placeholder {{{field_name}}}"
                    raise rule_problem(msg, fix, field=name)
            try:
                template.format_map(sample)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                msg = f"got {template!r}, which cannot be rendered ({exc})"
                raise rule_problem(msg, fix, field=name) from exc
        return self

    # ---- computed

    @cached_property
    def version(self) -> str:
        """First 12 hex digits of the sha256 of the canonical definition (``enabled`` aside)."""
        data = self.model_dump(mode="json", exclude={"enabled"})
        return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:12]

    @property
    def window_s(self) -> float:
        """The window in seconds."""
        return self.window

    @cached_property
    def group_names(self) -> tuple[str, ...]:
        """The group names after the implicit tenant key, e.g. ``("source",)``."""
        return tuple(k.as_ for k in self.group_by)

    @property
    def monotone(self) -> bool:
        """True when adding events can only make the condition hold."""
        raise NotImplementedError

    @property
    def threshold(self) -> int:
        """The count that makes the rule fire, for templates."""
        raise NotImplementedError

    def fields(self) -> frozenset[str]:
        """Every dotted path the rule reads, so the decoder knows what to decode."""
        paths = set(filter_fields(self.filter))
        for key in self.group_by:
            paths.update(key.coalesce)
        return frozenset(paths)

    def template_values(
        self, *, count: int, tenant: str, group: Sequence[object]
    ) -> dict[str, object]:
        """Every placeholder's value for one alert; ``group`` follows :attr:`group_names`."""
        if len(group) != len(self.group_by):
            msg = f"rule {self.id!r} has {len(self.group_by)} group keys, got {len(group)} values"
            raise ValueError(msg)
        values: dict[str, object] = {
            "count": count,
            "threshold": self.threshold,
            "window_seconds": round(self.window_s),
            "window": format_duration(self.window_s),
            "tenant": tenant,
            "rule_id": self.id,
            "group": ", ".join(str(v) for v in group),
        }
        for key, value in zip(self.group_by, group, strict=True):
            values[key.placeholder] = value
        return values

    def render(self, template_field: str, values: Mapping[str, object]) -> str:
        """Render ``title`` or ``description`` with ``values`` (see :meth:`template_values`)."""
        if template_field not in ("title", "description"):
            msg = f"template_field must be 'title' or 'description', got {template_field!r}"
            raise ValueError(msg)
        template: str = getattr(self, template_field)
        return template.format_map(values)


def _condition_shorthand(data: Any) -> Any:
    """Turn ``threshold: n`` into ``condition: {gte: n}``; both given is an error."""
    if not isinstance(data, Mapping) or "threshold" not in data:
        return data
    if "condition" in data:
        msg = "got both threshold and condition"
        raise rule_problem(
            msg,
            "keep one: threshold: 5 is shorthand for condition: {gte: 5}",
            field="threshold",
        )
    n = data["threshold"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        msg = f"got {n!r}"
        raise rule_problem(msg, "use a whole number >= 1", field="threshold")
    out = {k: v for k, v in data.items() if k != "threshold"}
    out["condition"] = {"gte": n}
    return out


class _CountedRule(RuleBase):
    condition: CountCondition = Field(description="The condition on the count in the window.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return _condition_shorthand(data)

    @property
    def monotone(self) -> bool:
        """True when the condition has only gt/gte bounds."""
        return self.condition.monotone

    @property
    def threshold(self) -> int:
        """The condition's lower bound."""
        return self.condition.lower_bound


class ThresholdRule(_CountedRule):
    """Fires when the count of matching events in the window, per group, meets the condition."""

    kind: Literal["threshold"] = Field(description="The rule kind.")


class DistinctRule(_CountedRule):
    """Fires when the number of distinct values of ``field`` in the window meets the condition."""

    kind: Literal["distinct"] = Field(description="The rule kind.")
    field: FieldPath = Field(description="The path whose distinct values are counted.")

    def fields(self) -> frozenset[str]:
        """Every dotted path the rule reads, the distinct field included."""
        return super().fields() | {self.field}


class SequenceRule(RuleBase):
    """Fires when its steps match in order, per group, within the window."""

    kind: Literal["sequence"] = Field(description="The rule kind.")
    steps: tuple[SequenceStep, ...] = Field(
        min_length=2, max_length=16, description="The steps, in order."
    )

    @model_validator(mode="before")
    @classmethod
    def _no_condition(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key in ("condition", "threshold"):
                if key in data:
                    msg = f"a sequence rule takes no {key}: completing the steps is the condition"
                    raise rule_problem(
                        msg,
                        f"remove {key}; set count: on a step to require repeats",
                        field=key,
                    )
        return data

    @model_validator(mode="after")
    def _check_steps(self) -> SequenceRule:
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            msg = f"got step names {names}"
            raise rule_problem(msg, "give each step a distinct name", field="steps")
        return self

    @property
    def monotone(self) -> bool:
        """Sequences are monotone: more events can only complete them."""
        return True

    @property
    def threshold(self) -> int:
        """The total number of events the steps need."""
        return sum(s.count for s in self.steps)

    def fields(self) -> frozenset[str]:
        """Every dotted path the rule reads, the steps' filters included."""
        out = set(super().fields())
        for step in self.steps:
            out |= filter_fields(step.filter)
        return frozenset(out)


class TimeOfDayRule(_CountedRule):
    """Counts matching events outside business hours (local time), per group."""

    kind: Literal["time_of_day"] = Field(description="The rule kind.")
    business_hours: BusinessHours = Field(description="Business hours in local time.")
    timezone: str = Field(
        default="UTC",
        max_length=64,
        description="IANA timezone of the business hours (a tenant override may replace it).",
    )
    condition: CountCondition = Field(
        default=CountCondition(gte=1), description="The condition on the off-hours count."
    )
    window: Duration = Field(default=3600.0, description="Sliding window length; default 1h.")

    @field_validator("timezone")
    @classmethod
    def _check_tz(cls, value: str) -> str:
        return validate_timezone(value)


Rule: TypeAlias = Annotated[
    ThresholdRule | DistinctRule | SequenceRule | TimeOfDayRule,
    Field(discriminator="kind"),
]
"""Any rule, discriminated by ``kind``."""
