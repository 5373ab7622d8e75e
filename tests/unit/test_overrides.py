"""Per-tenant overrides: overlay, precedence, versions, caching and errors."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from rayworker.errors import ConfigError, OverrideError
from rayworker.rules import (
    BusinessHours,
    CountCondition,
    Overrides,
    builtin_pack,
    load_overrides,
    parse_overrides,
)

if TYPE_CHECKING:
    from pathlib import Path

PACK = builtin_pack()
FAILED = PACK.get("failed_auth")
OFF = PACK.get("off_hours")
BRUTE = PACK.get("brute_force_success")

EXAMPLE = """
defaults:
  suppression: 10m
tenants:
  org-1:
    timezone: Europe/Paris
    business_hours: {start: "08:00", end: "18:00", days: [mon, tue, wed, thu, fri]}
    suppression: 15m
    rules:
      failed_auth: {threshold: 10, window: 10m, enabled: true, suppression: 1m}
      off_hours: {enabled: false}
  org-2:
    rules:
      failed_auth: {condition: {gte: 2, lt: 4}}
"""


def overrides(text: str = EXAMPLE) -> Overrides:
    """Overrides of the built-in pack from YAML text."""
    return load_overrides(text, PACK)


def error_of(text: str) -> str:
    """The OverrideError message for overrides text."""
    with pytest.raises(OverrideError) as info:
        overrides(text)
    return str(info.value)


def test_empty_overrides_give_the_rule_as_defined() -> None:
    """Without overrides a tenant gets the rule's own parameters and version."""
    eff = Overrides.empty().effective(FAILED, "org-9")
    assert eff.enabled
    assert eff.condition == CountCondition(gte=5)
    assert eff.window_s == 300
    assert eff.suppression_s is None
    assert eff.timezone == "UTC"
    assert eff.business_hours is None
    assert eff.version == FAILED.version


def test_rule_override_overlays_threshold_window_suppression() -> None:
    """A tenant's rule override replaces threshold, window and suppression."""
    eff = overrides().effective(FAILED, "org-1")
    assert eff.condition == CountCondition(gte=10)
    assert eff.window_s == 600
    assert eff.suppression_s == 60
    assert eff.enabled


def test_condition_override_and_defaults_for_other_tenants() -> None:
    """A condition override applies to its tenant; other tenants get the defaults layer."""
    o = overrides()
    assert o.effective(FAILED, "org-2").condition == CountCondition(gte=2, lt=4)
    other = o.effective(FAILED, "org-3")
    assert other.condition == CountCondition(gte=5)
    assert other.suppression_s == 600


def test_precedence_rule_then_tenant_then_defaults() -> None:
    """Suppression: tenant rule override > tenant > defaults > rule definition."""
    o = overrides()
    assert o.effective(FAILED, "org-1").suppression_s == 60
    assert o.effective(PACK.get("data_velocity"), "org-1").suppression_s == 900
    assert o.effective(PACK.get("data_velocity"), "org-2").suppression_s == 600


def test_enabled_and_time_of_day_overrides() -> None:
    """enabled: false disables; time_of_day rules take the tenant's timezone and hours."""
    eff = overrides().effective(OFF, "org-1")
    assert not eff.enabled
    assert eff.timezone == "Europe/Paris"
    assert eff.business_hours == BusinessHours(
        start="08:00",
        end="18:00",
        days=("mon", "tue", "wed", "thu", "fri"),
    )
    base = overrides().effective(OFF, "org-2")
    assert base.timezone == "UTC"
    assert base.business_hours == OFF.business_hours  # type: ignore[union-attr]


def test_rule_level_timezone_beats_tenant_timezone() -> None:
    """A time_of_day rule override's timezone wins over the tenant's."""
    o = overrides(
        "tenants:\n  t:\n    timezone: Europe/Paris\n"
        "    rules:\n      off_hours: {timezone: Asia/Tokyo}\n"
    )
    assert o.effective(OFF, "t").timezone == "Asia/Tokyo"


def test_versions_name_the_definition_that_fired() -> None:
    """An override changes the effective version; enabled alone and no override do not."""
    o = overrides()
    v1 = o.effective(FAILED, "org-1").version
    assert v1 != FAILED.version
    assert len(v1) == 12
    assert v1 != o.effective(FAILED, "org-2").version
    assert overrides().effective(FAILED, "org-1").version == v1
    only_enabled = overrides("tenants:\n  t:\n    rules:\n      failed_auth: {enabled: true}\n")
    assert only_enabled.effective(FAILED, "t").version == FAILED.version
    same_as_rule = overrides("tenants:\n  t:\n    rules:\n      failed_auth: {threshold: 5}\n")
    assert same_as_rule.effective(FAILED, "t").version == FAILED.version


def test_effective_is_cached() -> None:
    """Repeated effective() calls return the same cached object."""
    o = overrides()
    assert o.effective(FAILED, "org-1") is o.effective(FAILED, "org-1")


def test_sequence_rules_keep_no_condition() -> None:
    """A sequence rule's effective condition is None; its window can be overridden."""
    o = overrides("tenants:\n  t:\n    rules:\n      brute_force_success: {window: 20m}\n")
    eff = o.effective(BRUTE, "t")
    assert eff.condition is None
    assert eff.window_s == 1200


def test_load_from_file_and_empty_file(tmp_path: Path) -> None:
    """Overrides load from a file path; an empty file means no overrides."""
    path = tmp_path / "overrides.yaml"
    path.write_text(EXAMPLE, encoding="utf-8")
    assert load_overrides(path, PACK).effective(FAILED, "org-1").window_s == 600
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert load_overrides(empty, PACK).tenants == ()


ERRORS: list[tuple[str, str, list[str]]] = [
    (
        "unknown rule id",
        "tenants:\n  org-1:\n    rules:\n      faild_auth: {threshold: 3}\n",
        ['tenant "org-1"', 'rule "faild_auth"', "unknown rule", "failed_auth, unauthorized_access"],
    ),
    (
        "threshold on a sequence",
        "tenants:\n  org-1:\n    rules:\n      brute_force_success: {threshold: 3}\n",
        ['tenant "org-1"', 'rule "brute_force_success"', 'field "threshold"', "sequence"],
    ),
    (
        "bad tenant timezone",
        "tenants:\n  org-1:\n    timezone: Mars/Base\n",
        ['tenant "org-1"', 'field "timezone"', "Mars/Base", "IANA"],
    ),
    (
        "bad rule timezone",
        "tenants:\n  org-1:\n    rules:\n      off_hours: {timezone: Nowhere}\n",
        ['tenant "org-1"', 'field "rules.off_hours.timezone"', "Nowhere"],
    ),
    (
        "business hours on a threshold rule",
        (
            "tenants:\n  org-1:\n    rules:\n      failed_auth:\n"
            "        business_hours: {start: '08:00', end: '18:00'}\n"
        ),
        ['rule "failed_auth"', 'field "business_hours"', "only time_of_day"],
    ),
    (
        "both threshold and condition",
        "tenants:\n  org-1:\n    rules:\n      failed_auth: {threshold: 3, condition: {gte: 2}}\n",
        ['tenant "org-1"', "rules.failed_auth.threshold", "keep one"],
    ),
    (
        "bad duration",
        "defaults:\n  suppression: 5x\n",
        ["defaults", 'field "suppression"', '"5m"'],
    ),
    (
        "unknown field",
        "tenants:\n  org-1:\n    rules:\n      failed_auth: {treshold: 3}\n",
        ['tenant "org-1"', "rules.failed_auth.treshold", "unknown field"],
    ),
    (
        "start equals end",
        "tenants:\n  org-1:\n    business_hours: {start: '08:00', end: '08:00'}\n",
        ['tenant "org-1"', "business_hours.end", "start after end"],
    ),
    ("not a mapping", "- a\n", ["expected a mapping"]),
]


@pytest.mark.parametrize(("case", "text", "expected"), ERRORS, ids=[c[0] for c in ERRORS])
def test_override_errors_name_tenant_rule_and_fix(
    case: str, text: str, expected: list[str]
) -> None:
    """Each invalid override gives an OverrideError naming the tenant, rule, field and a fix."""
    message = error_of(text)
    assert message.startswith("<string>: "), message
    for part in expected:
        assert part in message, (case, message)


def test_unknown_ids_are_reported_with_other_problems() -> None:
    """An unknown rule id is reported even when another field is invalid too."""
    message = error_of(
        "tenants:\n  org-1:\n    suppression: 5x\n    rules:\n      nope: {enabled: false}\n"
    )
    assert len(message.splitlines()) == 2
    assert 'rule "nope"' in message


def test_override_error_is_a_config_error() -> None:
    """OverrideError sits under ConfigError in the exception tree."""
    with pytest.raises(ConfigError):
        parse_overrides({"tenants": 3}, PACK, origin="o.yaml")


def test_missing_file(tmp_path: Path) -> None:
    """A missing overrides file gives an OverrideError naming it."""
    with pytest.raises(OverrideError, match=r"missing\.yaml: cannot read"):
        load_overrides(tmp_path / "missing.yaml", PACK)
