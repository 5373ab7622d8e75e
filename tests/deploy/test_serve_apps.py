"""The Serve application builders refuse bad args at build time, before anything deploys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from rayworker.errors import ConfigError
from rayworker.serve_apps import health_app, pipeline_app


@pytest.mark.parametrize("builder", [health_app, pipeline_app])
def test_builders_refuse_dsns_in_the_serve_config(builder: Callable[[Any], Any]) -> None:
    """A DSN in args.settings is refused with the Secret-backed variable to use instead."""
    with pytest.raises(ConfigError, match="RAYWORKER_ALERTS_DSN from a Secret"):
        builder({"settings": {"alerts_dsn": "postgresql://u:pw@db/x"}})


def test_builders_name_unknown_settings_and_args() -> None:
    """A misspelt setting and an unknown argument are both named."""
    with pytest.raises(ConfigError) as caught:
        pipeline_app({"settings": {"shardz": 2}, "migrat": True})
    assert "shardz: not a setting" in str(caught.value)
    assert "args.migrat" in str(caught.value)


def test_builders_fail_on_bad_setting_values_naming_the_variable() -> None:
    """A bad value fails the build with the settings error that names the variable."""
    with pytest.raises(ConfigError, match="RAYWORKER_SHARDS"):
        health_app({"settings": {"shards": 0}})


def test_pipeline_app_needs_a_stream_source() -> None:
    """The pipeline app reads a Redis Stream; another source is refused with the fix."""
    with pytest.raises(ConfigError, match="RAYWORKER_SOURCE=redis"):
        pipeline_app({"settings": {"source": "synthetic"}})


def test_secret_fields_are_found_inside_nested_settings() -> None:
    """A secret nested in a settings group (e.g. a header map of SecretStr) is refused too."""
    from pydantic import BaseModel, SecretStr  # noqa: PLC0415

    from rayworker.serve_apps import _secret_paths  # noqa: PLC0415

    class Group(BaseModel):
        headers: dict[str, SecretStr] = {}
        ratio: float = 0.1

    class Top(BaseModel):
        dsn: SecretStr = SecretStr("")
        group: Group = Group()
        shards: int = 2

    values = {"dsn": "x", "group": {"headers": {"a": "b"}, "ratio": 0.5}, "shards": 3}
    assert _secret_paths(Top, values) == ["dsn", "group.headers"]
    assert _secret_paths(Top, {"group": {"ratio": 0.5}, "shards": 3}) == []
