"""Backtest points as Ray tasks give exactly what they give in-process."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

import rayworker
from rayworker import FixedClock
from rayworker.backtest import LocalRunner, jsonl_batches, run_backtest
from rayworker.backtest_points import parse_sweep
from rayworker.backtest_ray import RayRunner
from rayworker.cli import main
from rayworker.rules import builtin_pack

pytestmark = pytest.mark.integration

CLOCK = FixedClock(datetime(2030, 1, 1, tzinfo=UTC))
SAMPLE = Path(rayworker.__file__).parent / "data" / "sample_events.jsonl"


@pytest.mark.parametrize(
    ("rule_id", "specs", "detector_only"),
    [
        ("failed_auth", ["threshold=2..6", "window=1m,5m,15m"], False),
        ("password_spraying", ["threshold=3,5,10", "window=5m,10m"], False),
        ("brute_force_success", ["window=1m,5m,10m"], False),
        ("brute_force_success", ["window=1m,10m"], True),
    ],
)
def test_ray_tasks_equal_the_local_runner(
    ray_cluster: str, rule_id: str, specs: list[str], detector_only: bool
) -> None:
    """Vectorised windows and detector points on Ray: the same results and alerts."""
    pack, sweep = builtin_pack(), parse_sweep(specs)
    source = jsonl_batches(SAMPLE)
    done: list[tuple[int, int]] = []
    on_ray = run_backtest(
        source,
        pack,
        rule_id,
        sweep,
        clock=CLOCK,
        runner=RayRunner(ray_cluster),
        progress=lambda d, t: done.append((d, t)),
        detector_only=detector_only,
    )
    local = run_backtest(
        source, pack, rule_id, sweep, clock=CLOCK, runner=LocalRunner(), detector_only=detector_only
    )
    assert {p.path for p in on_ray.points} == {"detector" if detector_only else "vectorised"}
    assert on_ray.points == local.points
    assert done[-1] == (len(sweep), len(sweep))
    for point in sweep.points():
        assert on_ray.alerts(point) == local.alerts(point)


def test_cli_runs_points_on_ray(
    ray_cluster: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rayworker backtest --ray` attaches to the cluster and writes the same CSV."""
    on_ray, local = tmp_path / "ray.csv", tmp_path / "local.csv"
    common = ["backtest", "--sample", "--rule", "failed_auth", "--sweep", "threshold=3..5"]
    assert main([*common, "--ray", "--out", str(on_ray), "--quiet"]) == 0
    assert main([*common, "--out", str(local), "--quiet"]) == 0
    assert on_ray.read_text() == local.read_text()
    assert capsys.readouterr().err == ""
