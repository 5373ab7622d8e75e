"""The built-in rule pack, shipped as ``builtin.yaml`` beside this module."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from rayworker.rules.loader import RulePack, parse_rules

__all__ = ["BUILTIN_RULE_IDS", "builtin_pack", "builtin_yaml"]

BUILTIN_RULE_IDS = (
    "failed_auth",
    "unauthorized_access",
    "data_velocity",
    "bulk_operation",
    "off_hours",
    "password_spraying",
    "brute_force_success",
)
"""The ids of the built-in rules, in pack order."""


def builtin_yaml() -> str:
    """The text of ``builtin.yaml``, a commented starting point for a custom pack."""
    return files("rayworker.rules").joinpath("builtin.yaml").read_text(encoding="utf-8")


@cache
def builtin_pack() -> RulePack:
    """The built-in rule pack (loaded once; the pack is immutable)."""
    import yaml  # noqa: PLC0415 - only needed on first call

    return parse_rules(yaml.safe_load(builtin_yaml()), origin="builtin.yaml")
