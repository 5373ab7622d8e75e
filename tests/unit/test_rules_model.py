"""The rule model, the built-in pack and the rule loader's errors."""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rayworker.errors import ConfigError, RuleError
from rayworker.rules import (
    BUILTIN_RULE_IDS,
    BusinessHours,
    CountCondition,
    DistinctRule,
    SequenceRule,
    Severity,
    TimeOfDayRule,
    builtin_pack,
    compile_filter,
    format_duration,
    load_rules,
    parse_duration,
    parse_rules,
)

if TYPE_CHECKING:
    from pathlib import Path

BASE: dict[str, Any] = {
    "id": "my_rule",
    "kind": "threshold",
    "title": "Suspicious Pattern Detected: MY_RULE",
    "description": "{count} events from {principalId} within {window_seconds} seconds",
    "severity": "HIGH",
    "filter": {"field": "status", "equals": "failure"},
    "group_by": ["principalId"],
    "window": "5m",
    "condition": {"gte": 5},
}

TOD: dict[str, Any] = {
    **BASE,
    "kind": "time_of_day",
    "description": "{count} events",
    "business_hours": {"start": "08:00", "end": "18:00"},
}

SEQ: dict[str, Any] = {
    **BASE,
    "kind": "sequence",
    "condition": None,
    "steps": [
        {"name": "fail", "filter": {"field": "status", "equals": "failure"}, "count": 3},
        {"name": "ok", "filter": {"field": "status", "equals": "success"}},
    ],
}
del SEQ["condition"]


def one(**changes: Any) -> dict[str, Any]:
    """A rules document with BASE changed (a value of ... deletes the key)."""
    rule = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is ...:
            rule.pop(key, None)
        else:
            rule[key] = value
    return {"rules": [rule]}


def error_of(data: object) -> str:
    """The RuleError message parse_rules gives for data."""
    with pytest.raises(RuleError) as info:
        parse_rules(data, origin="rules.yaml")
    return str(info.value)


# --------------------------------------------------------------------------- built-in pack


def test_builtin_pack_has_the_listed_rules_in_order() -> None:
    """The built-in pack loads and holds exactly the seven documented rule ids, in order."""
    assert builtin_pack().ids == BUILTIN_RULE_IDS


@pytest.mark.parametrize(
    ("rule_id", "kind", "severity", "window_s", "groups", "threshold"),
    [
        ("failed_auth", "threshold", Severity.HIGH, 300, ("source",), 5),
        ("unauthorized_access", "threshold", Severity.CRITICAL, 600, ("principalId",), 3),
        ("data_velocity", "threshold", Severity.MEDIUM, 60, ("principalId",), 50),
        ("bulk_operation", "threshold", Severity.MEDIUM, 300, (), 100),
        ("off_hours", "time_of_day", Severity.LOW, 3600, (), 1),
        ("password_spraying", "distinct", Severity.HIGH, 600, ("sessionContext.ipAddress",), 10),
        ("brute_force_success", "sequence", Severity.CRITICAL, 600, ("principalId",), 6),
    ],
)
def test_builtin_rule_parameters(
    rule_id: str,
    kind: str,
    severity: Severity,
    window_s: float,
    groups: tuple[str, ...],
    threshold: int,
) -> None:
    """Each built-in rule has the documented kind, severity, window, groups and threshold."""
    rule = builtin_pack().get(rule_id)
    assert rule.kind == kind
    assert rule.severity is severity
    assert rule.window_s == window_s
    assert rule.group_names == groups
    assert rule.threshold == threshold
    assert rule.monotone
    assert rule.enabled
    assert rule.title == f"Suspicious Pattern Detected: {rule_id.upper()}"
    assert rule.tags == ("suspicious-pattern", rule_id.replace("_", "-"))
    if kind != "sequence":
        assert rule.condition == CountCondition(gte=threshold)  # type: ignore[union-attr]


def test_builtin_kind_specific_parameters() -> None:
    """failed_auth coalesces principal then IP; spraying counts principals; the rest as listed."""
    pack = builtin_pack()
    failed = pack.get("failed_auth")
    assert failed.group_by[0].coalesce == ("principalId", "sessionContext.ipAddress")
    spray = pack.get("password_spraying")
    assert isinstance(spray, DistinctRule)
    assert spray.field == "principalId"
    assert spray.skip_missing
    brute = pack.get("brute_force_success")
    assert isinstance(brute, SequenceRule)
    assert [(s.name, s.count) for s in brute.steps] == [("failures", 5), ("success", 1)]
    off = pack.get("off_hours")
    assert isinstance(off, TimeOfDayRule)
    assert (off.business_hours.start, off.business_hours.end) == ("06:00", "22:00")
    assert len(off.business_hours.days) == 7
    assert off.timezone == "UTC"


def ev(action: str, status: str, **extra: Any) -> dict[str, Any]:
    """A minimal event dict."""
    return {"action": action, "status": status, "organizationId": "org-1", **extra}


@pytest.mark.parametrize(
    ("rule_id", "event", "expected"),
    [
        ("failed_auth", ev("auth.login.failure", "failure"), True),
        ("failed_auth", ev("auth.login", "failure"), True),
        ("failed_auth", ev("auth.login", "success"), False),
        ("failed_auth", ev("auth.login.failure.extra", "failure"), False),
        ("unauthorized_access", ev("data.read", "failure", outcomeDescription="Forbidden"), True),
        ("unauthorized_access", ev("record.access.denied", "failure"), True),
        (
            "unauthorized_access",
            ev("auth.login.failure", "failure", outcomeDescription="unauthorized"),
            False,
        ),
        (
            "unauthorized_access",
            ev("data.read", "failure", outcomeDescription="unforbiddenx"),
            False,
        ),
        ("unauthorized_access", ev("data.read", "success", outcomeDescription="Forbidden"), False),
        ("data_velocity", ev("fhir.patient.read", "success"), True),
        ("data_velocity", ev("data.read.bulk", "success"), True),
        ("data_velocity", ev("fhir.patient.update", "success"), False),
        ("data_velocity", ev("metadata.reader", "success"), False),
        ("data_velocity", ev("data.update", "success", targetResourceType="Patient"), False),
        ("bulk_operation", ev("data.export", "success"), True),
        ("bulk_operation", ev("records.bulk.delete", "success"), True),
        ("bulk_operation", ev("system.bulkhead", "success"), False),
        ("bulk_operation", ev("data.update", "success", recordCount=11), True),
        ("bulk_operation", ev("data.update", "success", recordCount=10), False),
        ("bulk_operation", ev("data.export", "failure"), False),
        ("off_hours", ev("data.read", "success"), True),
        ("off_hours", ev("auth.login", "success"), False),
    ],
)
def test_builtin_filters(rule_id: str, event: dict[str, Any], expected: bool) -> None:
    """The built-in filters match exact actions, never loose substrings."""
    assert compile_filter(builtin_pack().get(rule_id).filter).matches(event) is expected


def test_builtin_fields_are_what_the_rules_read() -> None:
    """fields() lists every path a rule reads: filters, group keys and the distinct field."""
    pack = builtin_pack()
    assert pack.get("failed_auth").fields() == {
        "action",
        "status",
        "principalId",
        "sessionContext.ipAddress",
    }
    assert "recordCount" in pack.get("bulk_operation").fields()
    assert "principalId" in pack.get("password_spraying").fields()


# --------------------------------------------------------------------------- dump and versions


def test_dump_yaml_round_trips_the_builtin_pack() -> None:
    """dump_yaml() loads back to an equal pack with equal versions."""
    pack = builtin_pack()
    again = load_rules(pack.dump_yaml())
    assert again == pack
    assert [r.version for r in again.rules] == [r.version for r in pack.rules]


def test_json_file_loads_like_yaml(tmp_path: Path) -> None:
    """A .json rule file gives the same rules as the YAML text."""
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(one()), encoding="utf-8")
    assert load_rules(path) == parse_rules(one(), origin="x")
    assert load_rules(str(path)) == load_rules(path)


def test_version_changes_with_definition_not_enabled() -> None:
    """The version hash changes with the definition and ignores enabled and input spelling."""
    v = parse_rules(one(), origin="x").rules[0].version
    assert len(v) == 12
    assert parse_rules(one(enabled=False), origin="x").rules[0].version == v
    assert parse_rules(one(window="300s"), origin="x").rules[0].version == v
    assert parse_rules(one(window=300), origin="x").rules[0].version == v
    assert parse_rules(one(condition=..., threshold=5), origin="x").rules[0].version == v
    assert parse_rules(one(window="6m"), origin="x").rules[0].version != v
    assert parse_rules(one(condition={"gte": 6}), origin="x").rules[0].version != v
    assert parse_rules(one(severity="LOW"), origin="x").rules[0].version != v


def test_threshold_shorthand_is_condition_gte() -> None:
    """threshold: n means condition: {gte: n}."""
    rule = parse_rules(one(condition=..., threshold=7), origin="x").rules[0]
    assert rule.condition == CountCondition(gte=7)  # type: ignore[union-attr]


# --------------------------------------------------------------------------- invalid input

INVALID: list[tuple[str, dict[str, Any], list[str]]] = [
    ("bad duration", one(window="5x"), ['field "window"', "5x", '"5m"']),
    ("zero duration", one(window=0), ['field "window"', "> 0"]),
    ("too long duration", one(window="8d"), ['field "window"', "7d"]),
    ("unknown kind", one(kind="thresh"), ['field "kind"', "thresh", "time_of_day"]),
    ("missing kind", one(kind=...), ['field "kind"', "missing"]),
    ("extra field", one(thresold=5), ['field "thresold"', "unknown field", "allowed here"]),
    (
        "bad regex",
        one(filter={"any": [{"field": "action", "regex": "a(+"}]}),
        ['field "filter.any[0].regex"', "a(+", "invalid regular expression"],
    ),
    (
        "start == end",
        {"rules": [{**TOD, "business_hours": {"start": "08:00", "end": "08:00"}}]},
        ['field "business_hours.end"', "08:00", 'start "22:00", end "06:00"'],
    ),
    (
        "unquoted time",
        {"rules": [{**TOD, "business_hours": {"start": 480, "end": "18:00"}}]},
        ['field "business_hours.start"', "quote the time"],
    ),
    (
        "bad timezone",
        {"rules": [{**TOD, "timezone": "Mars/Olympus"}]},
        ['field "timezone"', "Mars/Olympus", "Europe/Paris"],
    ),
    (
        "unknown placeholder",
        one(description="{cont} events"),
        ['field "description"', "{cont}", "count, threshold"],
    ),
    ("bad format", one(title="{count"), ['field "title"', "bad format string"]),
    (
        "both threshold and condition",
        one(threshold=5),
        ['field "threshold"', "both threshold and condition", "keep one"],
    ),
    (
        "tenant in group_by",
        one(group_by=["organizationId"]),
        ['field "group_by"', "organizationId", "remove it"],
    ),
    (
        "condition on a sequence",
        {"rules": [{**SEQ, "condition": {"gte": 1}}]},
        ['field "condition"', "sequence", "remove condition"],
    ),
    ("sequence of one step", {"rules": [{**SEQ, "steps": SEQ["steps"][:1]}]}, ['field "steps"']),
    ("bad severity", one(severity="SEVERE"), ['field "severity"', "SEVERE", "CRITICAL"]),
    ("bad id", one(id="Bad-Id"), ['field "id"', "lower-case"]),
    (
        "filter without kind",
        one(filter={"feld": "x"}),
        ['field "filter"', "field:", "equals"],
    ),
    ("no operator", one(filter={"field": "x"}), ['field "filter"', "no operator", "add one"]),
    ("empty in", one(filter={"field": "x", "in": []}), ['field "filter.in"']),
    (
        "never holds",
        one(condition={"gte": 5, "lt": 3}),
        ['field "condition"', "never hold", "overlap"],
    ),
    ("no bound", one(condition={}), ['field "condition"', "at least one"]),
    (
        "too deep",
        one(
            filter={
                "not": {
                    "not": {
                        "not": {
                            "not": {
                                "not": {"not": {"not": {"not": {"field": "a", "exists": True}}}}
                            }
                        }
                    }
                }
            }
        ),
        ['field "filter"', "at most 8"],
    ),
    ("numeric op with string", one(filter={"field": "x", "gt": "5"}), ['field "filter.gt"']),
]


@pytest.mark.parametrize(("case", "data", "expected"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_rules_name_rule_field_and_fix(
    case: str, data: dict[str, Any], expected: list[str]
) -> None:
    """Each kind of invalid rule gives a RuleError naming the origin, rule, field and a fix."""
    message = error_of(data)
    assert message.startswith(f'rules.yaml: rule "{data["rules"][0]["id"]}": '), message
    for part in expected:
        assert part in message, (case, message)


def test_rule_without_id_is_named_by_index() -> None:
    """A rule without an id is named by its index in the file."""
    assert 'rules[0] (no id): field "id": missing' in error_of(one(id=...))


def test_duplicate_ids_are_an_error() -> None:
    """Two rules with one id give a RuleError naming the id and both positions."""
    message = error_of({"rules": [BASE, BASE]})
    assert 'rule "my_rule": field "id"' in message
    assert "rules[0] and rules[1]" in message


def test_all_problems_are_listed_one_per_line() -> None:
    """Several problems are reported together, one line each."""
    message = error_of({"rules": [{**BASE, "window": "5x"}, {**BASE, "id": "b", "severity": "X"}]})
    lines = message.splitlines()
    assert len(lines) == 2
    assert 'rule "my_rule": field "window"' in lines[0]
    assert 'rule "b": field "severity"' in lines[1]


def test_rule_error_is_a_config_error() -> None:
    """RuleError sits under ConfigError in the exception tree."""
    with pytest.raises(ConfigError):
        parse_rules({"rules": "nope"}, origin="x")


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    """Bad YAML gives a RuleError naming the file and the line."""
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - id: a\n    title: [unclosed\n", encoding="utf-8")
    with pytest.raises(RuleError, match=r"rules\.yaml: line \d+"):
        load_rules(path)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    """An unreadable file gives a RuleError naming it."""
    with pytest.raises(RuleError, match=r"nope\.yaml: cannot read"):
        load_rules(tmp_path / "nope.yaml")


def test_top_level_must_have_rules() -> None:
    """A document without a rules: list says what to write."""
    with pytest.raises(RuleError, match="rules:"):
        load_rules("- a\n- b\n")


# --------------------------------------------------------------------------- templates


def test_render_fills_group_placeholders() -> None:
    """render() formats a template with template_values, dotted group names as _."""
    rule = parse_rules(
        one(
            group_by=["sessionContext.ipAddress", {"as": "who", "coalesce": ["principalId"]}],
            description="{count}/{threshold} {sessionContext_ipAddress} {who} [{group}] "
            "{window} {window_seconds} {tenant} {rule_id} {{literal}}",
        ),
        origin="x",
    ).rules[0]
    values = rule.template_values(count=6, tenant="org-1", group=["10.0.0.1", "alice"])
    assert rule.render("description", values) == (
        "6/5 10.0.0.1 alice [10.0.0.1, alice] 5m 300 org-1 my_rule {literal}"
    )
    with pytest.raises(ValueError, match="title"):
        rule.render("severity", values)


def test_group_name_may_not_shadow_a_placeholder() -> None:
    """A group named like a built-in placeholder is rejected."""
    assert "clashes" in error_of(one(group_by=[{"as": "count", "coalesce": ["principalId"]}]))


# --------------------------------------------------------------------------- parts


@given(st.integers(min_value=1, max_value=7 * 86400 * 1000))
def test_duration_format_round_trips(ms: int) -> None:
    """format_duration output parses back to the same number of seconds."""
    seconds = ms / 1000
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1d", 86400),
        (90, 90),
        ("7d", 604800),
    ],
)
def test_durations_parse(text: str | int, seconds: float) -> None:
    """Durations accept ms/s/m/h/d suffixes and plain seconds."""
    assert parse_duration(text) == seconds


def test_count_condition_holds_and_monotone() -> None:
    """All bounds must hold; only gt/gte conditions are monotone."""
    rng = CountCondition(gte=2, lt=5)
    assert [rng.holds(n) for n in range(7)] == [False, False, True, True, True, False, False]
    assert not rng.monotone
    assert CountCondition(gt=3).monotone
    assert CountCondition(gt=3).lower_bound == 4
    assert CountCondition(neq=2).holds(3)
    assert not CountCondition(neq=2).holds(2)
    assert CountCondition(eq=2).holds(2)


def test_business_hours_same_day() -> None:
    """08:00-18:00 Mon-Fri: inside on a weekday at 08:00, outside at 18:00 and at weekends."""
    hours = BusinessHours(start="08:00", end="18:00", days=("mon", "tue", "wed", "thu", "fri"))
    assert not hours.is_outside(8 * 60, 0)
    assert hours.is_outside(8 * 60 - 1, 0)
    assert hours.is_outside(18 * 60, 0)
    assert hours.is_outside(12 * 60, 5)


def test_business_hours_crossing_midnight() -> None:
    """22:00-06:00 on Friday covers Friday night and the early hours of Saturday only."""
    hours = BusinessHours(start="22:00", end="06:00", days=("fri",))
    assert not hours.is_outside(23 * 60, 4)
    assert not hours.is_outside(60, 5)
    assert hours.is_outside(60, 4)  # Friday 01:00 belongs to Thursday's shift
    assert hours.is_outside(12 * 60, 4)
    assert hours.is_outside(23 * 60, 5)


def test_time_of_day_defaults() -> None:
    """A time_of_day rule defaults to {gte: 1}, a one-hour window and UTC."""
    data = {k: v for k, v in TOD.items() if k not in ("window", "condition")}
    rule = parse_rules({"rules": [data]}, origin="x").rules[0]
    assert isinstance(rule, TimeOfDayRule)
    assert rule.condition == CountCondition(gte=1)
    assert rule.window_s == 3600
    assert rule.timezone == "UTC"


def test_severity_rank_orders_levels() -> None:
    """Severity.rank orders INFO < LOW < MEDIUM < HIGH < CRITICAL."""
    ranked = sorted(Severity, key=lambda s: s.rank)
    assert [s.value for s in ranked] == ["INFO", "LOW", "MEDIUM", "HIGH", "CRITICAL"]


def test_sequence_is_monotone_and_reads_step_fields() -> None:
    """A sequence rule is monotone, its threshold is the step total, and it reads step fields."""
    rule = parse_rules({"rules": [SEQ]}, origin="x").rules[0]
    assert isinstance(rule, SequenceRule)
    assert rule.monotone
    assert rule.threshold == 4
    assert "status" in rule.fields()
