"""Backtest points as Ray tasks: the adapter between :mod:`rayworker.backtest` and a cluster.

The prepared events and the rules are put in the object store once per sweep; each task
evaluates one window's thresholds (vectorised) or one point (detector) and returns its small
per-point results. Progress follows the tasks as they finish.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import ray

from rayworker.pipeline.runtime import connect_ray

__all__ = ["RayRunner"]

_S = TypeVar("_S")
_T = TypeVar("_T")
_R = TypeVar("_R")


def _call(fn: Callable[[Any, Any], Any], shared: Any, item: Any) -> Any:
    return fn(shared, item)


_remote_call = ray.remote(num_cpus=1)(_call)


class RayRunner:
    """Runs backtest items as Ray tasks on the cluster ``RAY_ADDRESS`` names (or a local one)."""

    def __init__(self, address: str | None = None) -> None:
        self.address = connect_ray(address)

    def map(
        self,
        fn: Callable[[_S, _T], _R],
        shared: _S,
        items: Sequence[_T],
        on_done: Callable[[int], None],
    ) -> list[_R]:
        """The results in the order of ``items``; ``on_done(i)`` as each task finishes."""
        if not items:
            return []
        shared_ref = ray.put(shared)
        refs = [_remote_call.remote(fn, shared_ref, item) for item in items]
        index = {ref: i for i, ref in enumerate(refs)}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                on_done(index[ref])
        return list(ray.get(refs))
