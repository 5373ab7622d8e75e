"""The router's check for shards that restarted while idle (``Router._watch_shards``)."""

from __future__ import annotations

import asyncio
from typing import Any

from rayworker.detect import DetectorConfig
from rayworker.pipeline.router import Router
from rayworker.routing import Assignment
from rayworker.rules import builtin_pack
from rayworker.settings import load_settings


class _Method:
    def __init__(self, answer: asyncio.Future[Any]) -> None:
        self._answer = answer

    def remote(self) -> asyncio.Future[Any]:
        return self._answer


class _Shard:
    """A shard handle whose ``current_epoch`` answers when the test says so."""

    def __init__(self, answer: asyncio.Future[Any]) -> None:
        self.current_epoch = _Method(answer)


def _router() -> Router:
    return Router(
        load_settings(),
        builtin_pack(),
        DetectorConfig(),
        Assignment.balanced(1),
        {0: object()},
        recoverable=True,
    )


def _watch(router: Router, *, during_recovery: bool, answer: Any) -> list[tuple[int, str]]:
    async def scenario() -> list[tuple[int, str]]:
        pending: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        router.shards = {0: _Shard(pending)}
        router.epoch = 7
        router._recovering = during_recovery
        watch = asyncio.create_task(router._watch_shards(router.epoch))
        await asyncio.sleep(0)
        router._recovering = False  # the recovery ends before the shard's answer is judged
        pending.set_result(answer)
        await watch
        return router.failed

    return asyncio.run(scenario())


def test_a_check_begun_during_a_recovery_reports_no_restart(ray_cluster: str) -> None:
    """A shard not yet restored when the check began is not reported as restarted."""
    assert _watch(_router(), during_recovery=True, answer=None) == []


def test_a_check_outside_recovery_reports_a_restarted_shard(ray_cluster: str) -> None:
    """A shard whose state epoch is not the router's is reported (ticket -1)."""
    failed = _watch(_router(), during_recovery=False, answer=None)
    assert failed == [(-1, "shard 0 restarted (state epoch None)")]


def test_a_check_outside_recovery_accepts_a_restored_shard(ray_cluster: str) -> None:
    """A shard in the router's epoch is not reported."""
    assert _watch(_router(), during_recovery=False, answer=7) == []
