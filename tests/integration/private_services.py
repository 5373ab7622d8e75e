"""Fixtures for private Redis and PostgreSQL servers that a test may stop and start at will.

The servers themselves live in :mod:`rayworker.chaos_services` (the chaos benchmark uses them
too): :class:`PrivateRedis` keeps nothing on disk, so a restart loses every key;
:class:`PrivatePostgres` keeps its data across restarts. Both keep their port.

The fixtures ``private_redis`` and ``private_postgres`` give one server per test and remove it
afterwards; a missing binary makes the test unavailable (skipped locally, failed in CI). Their
functions are named ``*_fixture`` so that a test module can import them (which registers the
fixtures there) without the import clashing with the parameter name::

    from tests.integration.private_services import private_redis_fixture  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NoReturn

import pytest

from rayworker.chaos_services import (
    PrivatePostgres,
    PrivateRedis,
    ServiceError,
    ServiceMissingError,
    free_port,
)

__all__ = [
    "PrivatePostgres",
    "PrivateRedis",
    "ServiceError",
    "ServiceMissingError",
    "free_port",
    "private_postgres_fixture",
    "private_redis_fixture",
]


def _unavailable(reason: str) -> NoReturn:
    # Imported here, not at the top: conftest may import this module for its fixtures.
    from tests.integration.conftest import unavailable  # noqa: PLC0415

    unavailable(reason)


@pytest.fixture(name="private_redis")
def private_redis_fixture() -> Iterator[PrivateRedis]:
    """A started private Redis for this test only; removed afterwards."""
    try:
        server = PrivateRedis()
    except ServiceMissingError as exc:
        _unavailable(str(exc))
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(name="private_postgres")
def private_postgres_fixture() -> Iterator[PrivatePostgres]:
    """A started private PostgreSQL (database ``test``) for this test only; removed afterwards."""
    try:
        server = PrivatePostgres()
    except ServiceMissingError as exc:
        _unavailable(str(exc))
    try:
        server.start()
        yield server
    finally:
        server.close()
