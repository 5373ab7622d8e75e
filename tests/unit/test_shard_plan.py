"""Load-aware shard plans: measured on history, saved, checked and used by the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayworker.cli import main
from rayworker.errors import ConfigError
from rayworker.pipeline.app import Pipeline
from rayworker.routing import Assignment
from rayworker.rules import builtin_pack
from rayworker.settings import Settings
from rayworker.shard_plan import imbalance, plan_shards, read_assignment, write_assignment
from rayworker.sources.synthetic import SyntheticConfig, generate


def _zipf(events: int, seed: int) -> list[bytes]:
    return list(generate(SyntheticConfig(events=events, tenants=60, zipf_a=1.1, seed=seed)))


def _batches(lines: list[bytes], size: int = 5000) -> list[list[bytes]]:
    return [lines[i : i + size] for i in range(0, len(lines), size)]


def test_plan_evens_out_zipf_tenants_on_unseen_traffic() -> None:
    """A plan made on one day's Zipf traffic also evens out another day's, round-robin does not."""
    plan = plan_shards(_batches(_zipf(60_000, 1)), builtin_pack(), shards=8, groups=256)
    assert plan.before > 1.3
    assert plan.after < 1.1
    assert plan.moved == len(Assignment.balanced(8).moves(plan.assignment)) > 0
    holdout = plan_shards(_batches(_zipf(60_000, 2)), builtin_pack(), shards=8, groups=256)
    assert imbalance(plan.assignment, holdout.load) < holdout.before


def test_plan_round_trips_through_its_file(tmp_path: Path) -> None:
    """A written plan reads back as the same assignment."""
    plan = plan_shards(_batches(_zipf(5000, 3)), builtin_pack(), shards=3, groups=64)
    path = tmp_path / "plan.json"
    write_assignment(plan, path)
    assert read_assignment(path, shards=3, groups=64) == plan.assignment


@pytest.mark.parametrize(
    ("content", "shards", "groups", "message"),
    [
        ("not json", 2, 4, "not JSON"),
        (json.dumps({"groups": 4, "owner": [0, 1, 0, 1], "version": 0}), 2, 8, "key_groups is 8"),
        (json.dumps({"groups": 4, "owner": [0, 1, 2, 3], "version": 0}), 2, 4, r"shards \[2, 3\]"),
        (json.dumps({"groups": 4, "owner": [0, 1], "version": 0}), 2, 4, "owner"),
    ],
)
def test_bad_plan_fails_naming_the_setting(
    tmp_path: Path, content: str, shards: int, groups: int, message: str
) -> None:
    """A plan that does not fit the cluster fails at start-up naming assignment_path and why."""
    path = tmp_path / "plan.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match="assignment_path") as info:
        read_assignment(path, shards=shards, groups=groups)
    assert info.match(message)


def test_missing_plan_file_fails_naming_the_setting(tmp_path: Path) -> None:
    """A plan path that does not exist fails naming the setting."""
    with pytest.raises(ConfigError, match="RAYWORKER_ASSIGNMENT_PATH"):
        read_assignment(tmp_path / "nope.json", shards=2, groups=4)


def test_pipeline_uses_the_planned_assignment(tmp_path: Path) -> None:
    """A pipeline given assignment_path routes by the plan, not round-robin."""
    plan = plan_shards(_batches(_zipf(20_000, 5)), builtin_pack(), shards=4, groups=128)
    path = tmp_path / "plan.json"
    write_assignment(plan, path)
    pipeline = Pipeline(Settings(shards=4, key_groups=128, assignment_path=path))
    assert pipeline.assignment == plan.assignment
    assert Pipeline(Settings(shards=4, key_groups=128)).assignment == Assignment.balanced(
        4, groups=128
    )


def test_cli_plan_writes_a_usable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`rayworker shards plan` reports both imbalances and writes a plan the pipeline accepts."""
    events = tmp_path / "history.jsonl"
    events.write_bytes(b"\n".join(_zipf(20_000, 6)) + b"\n")
    out = tmp_path / "plan.json"
    code = main(
        ["shards", "plan", str(events), "--shards", "4", "--key-groups", "64", "--out", str(out)]
    )
    assert code == 0
    assert "round-robin ->" in capsys.readouterr().out
    assert read_assignment(out, shards=4, groups=64).groups == 64
