"""Unit tests never start Ray: the core must work without it."""

from __future__ import annotations

import importlib
import importlib.util

import pytest


@pytest.fixture(autouse=True)
def _disallow_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any unit test that tries to start or attach to Ray."""
    if importlib.util.find_spec("ray") is None:
        return
    ray = importlib.import_module("ray")

    def refuse(*args: object, **kwargs: object) -> None:
        msg = "unit tests must not start Ray; put this test under tests/integration"
        raise RuntimeError(msg)

    monkeypatch.setattr(ray, "init", refuse)
