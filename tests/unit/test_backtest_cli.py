"""``rayworker backtest`` end to end, sweep parsing, labels, budgets and suggested overrides."""

from __future__ import annotations

import ast
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
import yaml
from rich.console import Console

import rayworker
from rayworker import ConfigError, FixedClock
from rayworker.backtest import line_batches, load_labels, run_backtest
from rayworker.backtest_points import Sweep, SweepPoint, parse_sweep, point_overrides_data
from rayworker.backtest_suggest import suggest, suggested_overrides, write_overrides
from rayworker.cli import main
from rayworker.cli_backtest import _Bars
from rayworker.rules import builtin_pack, load_overrides
from rayworker.sources.synthetic import AttackLabel, SyntheticConfig, write_jsonl

CLOCK = FixedClock(datetime(2030, 1, 1, tzinfo=UTC))
T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
PACKAGE = Path(rayworker.__file__).parent
PURE = ["backtest.py", "backtest_points.py", "backtest_vector.py", "backtest_suggest.py"]


def failed_login(seconds: float, principal: str, tenant: str = "org-a") -> bytes:
    """One failed login of ``principal`` at T0 + seconds."""
    stamp = (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    return msgspec.json.encode(
        {
            "timestamp": stamp,
            "organizationId": tenant,
            "principalId": principal,
            "action": "auth.login.failure",
            "status": "failure",
        }
    )


def label(principal: str, start: float, end: float, tenant: str = "org-a") -> AttackLabel:
    """A labelled failed_auth attack on ``principal`` between two offsets from T0."""
    return AttackLabel(
        "failed_auth",
        tenant,
        {"principalId": principal},
        T0 + timedelta(seconds=start),
        T0 + timedelta(seconds=end),
    )


@pytest.fixture(scope="module")
def small_input(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small synthetic events file with its attack labels."""
    folder = tmp_path_factory.mktemp("backtest")
    events, labels = folder / "events.jsonl", folder / "labels.jsonl"
    config = SyntheticConfig(
        events=6_000, tenants=4, principals=80, duration_s=1_800, attacks_per_tenant_hour=10.0
    )
    write_jsonl(events, config, labels_path=labels)
    return events, labels


@pytest.mark.parametrize(
    ("specs", "thresholds", "windows"),
    [
        (["threshold=3..6"], (3, 4, 5, 6), None),
        (["threshold=5,10,20..40:10"], (5, 10, 20, 30, 40), None),
        (["window=1m,5m", "threshold=2"], (2,), (60.0, 300.0)),
        (["window=30s..2m:30s"], None, (30.0, 60.0, 90.0, 120.0)),
    ],
)
def test_sweep_specs_parse(
    specs: list[str], thresholds: tuple[int, ...] | None, windows: tuple[float, ...] | None
) -> None:
    """Lists, ranges and stepped ranges of thresholds and windows parse to sorted values."""
    assert parse_sweep(specs) == Sweep(thresholds, windows)


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["limit=3"], "threshold=LIST or window=LIST"),
        (["threshold=0..3"], "whole numbers of at least 1"),
        (["threshold=9..3"], "empty range"),
        (["threshold=3", "threshold=4"], "given twice"),
        (["window=5x"], "window"),
        (["window=1m..5m"], "needs a step"),
        (["threshold=1,,2"], "without empty items"),
    ],
)
def test_bad_sweep_specs_say_how_to_fix_them(specs: list[str], message: str) -> None:
    """A bad --sweep names the parameter and the fix."""
    with pytest.raises(ConfigError, match=message):
        parse_sweep(specs)


def test_sweep_points_run_window_by_window() -> None:
    """Points are the cross product, thresholds ascending within each window."""
    points = parse_sweep(["threshold=3,4", "window=1m,5m"]).points()
    assert points == [
        SweepPoint(60.0, 3),
        SweepPoint(60.0, 4),
        SweepPoint(300.0, 3),
        SweepPoint(300.0, 4),
    ]
    assert points[0].label == "threshold=3 window=1m"


def test_recall_and_precision_follow_the_labels() -> None:
    """Recall counts labels with an alert in their span; precision, alerts on a label."""
    lines = [failed_login(s, "u-1") for s in (0, 10, 20, 30)]  # attack 1: 4 failures
    lines += [failed_login(s, "u-2") for s in (600, 610)]  # attack 2: 2 failures
    lines += [failed_login(s, "u-3") for s in (1200, 1205, 1210)]  # unlabelled: 3 failures
    labels = [label("u-1", 0, 30), label("u-2", 600, 610)]
    sweep = Sweep((2, 3, 4, 5), (300.0,))
    result = run_backtest(
        line_batches(lines), builtin_pack(), "failed_auth", sweep, labels=labels, clock=CLOCK
    )
    got = [(p.alerts, p.recall, p.precision) for p in result.points]
    assert got == [(3, 1.0, 2 / 3), (2, 0.5, 0.5), (1, 0.5, 1.0), (0, 0.0, None)]
    assert result.labels == 2


def test_label_scenarios_choose_which_labels_count() -> None:
    """Labels of other scenarios are ignored unless named."""
    lines = [failed_login(s, "u-1") for s in (0, 10, 20)]
    brute = AttackLabel(
        "brute_force_success", "org-a", {"principalId": "u-1"}, T0, T0 + timedelta(seconds=20)
    )
    pack, sweep = builtin_pack(), Sweep((3,), None)
    alone = run_backtest(
        line_batches(lines), pack, "failed_auth", sweep, labels=[brute], clock=CLOCK
    )
    both = run_backtest(
        line_batches(lines),
        pack,
        "failed_auth",
        sweep,
        labels=[brute],
        label_scenarios=["failed_auth", "brute_force_success"],
        clock=CLOCK,
    )
    assert (alone.points[0].recall, alone.points[0].precision) == (None, 0.0)
    assert (both.points[0].recall, both.points[0].precision) == (1.0, 1.0)


def test_suggestions_take_the_lowest_threshold_within_budget(tmp_path: Path) -> None:
    """Noisy tenants get a higher threshold, quiet ones a lower; the file validates."""
    lines = []
    for k in range(6):  # org-a: six bursts of 4 failures, one every 10 minutes
        lines += [failed_login(600 * k + s, f"u-{k}") for s in (0, 5, 10, 15)]
    lines += [failed_login(s, "u-9", tenant="org-b") for s in (0, 5)]
    lines.sort(key=lambda line: msgspec.json.decode(line)["timestamp"])
    pack = builtin_pack()
    result = run_backtest(
        line_batches(lines), pack, "failed_auth", Sweep((2, 3, 4, 5), None), clock=CLOCK
    )
    budget = 24 * 3  # per day; the input counts as one hour: 3 alerts
    by_tenant = {s.tenant: s for s in suggest(result, budget, pack)}
    assert by_tenant["org-a"].point.threshold == 5
    assert by_tenant["org-a"].within_budget
    assert by_tenant["org-b"].point.threshold == 2
    data = suggested_overrides(list(by_tenant.values()), "failed_auth", pack)
    path = tmp_path / "suggested.yaml"
    write_overrides(path, data, "test header")
    assert path.read_text().startswith("# test header\n")
    overrides = load_overrides(path, pack)
    assert overrides.effective(pack.get("failed_auth"), "org-a").condition.gte == 5
    assert overrides.effective(pack.get("failed_auth"), "org-b").condition.gte == 2


def test_tenants_that_cannot_meet_the_budget_get_the_quietest_point() -> None:
    """When no point fits, the fewest alerts are suggested and marked over budget."""
    lines = [failed_login(s, "u-1") for s in range(0, 600, 5)]
    pack = builtin_pack()
    result = run_backtest(
        line_batches(lines), pack, "failed_auth", Sweep((2, 3), (60.0, 300.0)), clock=CLOCK
    )
    (only,) = suggest(result, 0.0, pack)
    assert not only.within_budget
    assert only.point == SweepPoint(60.0, 3)


def test_point_overrides_replace_a_tenant_condition() -> None:
    """A swept threshold replaces a tenant's own condition; other settings stay."""
    pack = builtin_pack()
    base = load_overrides(
        "tenants:\n  org-a:\n    suppression: 10m\n"
        "    rules:\n      failed_auth: {condition: {lt: 3}}\n",
        pack,
    )
    data = point_overrides_data(base, pack, "failed_auth", SweepPoint(120.0, 7))
    assert data["defaults"]["rules"]["failed_auth"] == {"threshold": 7, "window": "2m"}
    assert data["tenants"]["org-a"] == {
        "suppression": "10m",
        "rules": {"failed_auth": {"threshold": 7, "window": "2m"}},
    }


def test_cli_end_to_end(
    small_input: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """CSV per point, a table, suggestions, and an overrides file replay accepts."""
    events, labels = small_input
    out, suggested = tmp_path / "results.csv", tmp_path / "suggested.yaml"
    code = main(
        [
            "backtest", str(events), "--rule", "failed_auth",
            "--sweep", "threshold=3..6", "--sweep", "window=1m,5m",
            "--labels", str(labels), "--out", str(out),
            "--budget", "24", "--overrides-out", str(suggested), "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "backtest of rule failed_auth" in printed
    assert "labelled attacks" in printed
    with out.open() as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["threshold"], r["window_s"]) for r in rows] == [
        (str(n), w) for w in ("60", "300") for n in range(3, 7)
    ]
    assert all(r["recall"] != "" for r in rows)
    assert load_overrides(suggested, builtin_pack()) is not None
    assert (
        main(
            [
                "replay",
                str(events),
                "--overrides",
                str(suggested),
                "--quiet",
                "--out",
                str(tmp_path / "a.jsonl"),
            ]
        )
        == 0
    )


def test_cli_alerts_equal_rayworker_replay(small_input: tuple[Path, Path], tmp_path: Path) -> None:
    """For sweep points, `rayworker replay` of the whole pack under the point's overrides
    gives exactly the backtest's alerts (ids, counts, occurrences, first and last seen)."""
    events, _ = small_input
    pack = builtin_pack()
    sweep = parse_sweep(["threshold=2,5", "window=1m,10m"])
    result = run_backtest(
        line_batches(events.read_bytes().splitlines()), pack, "failed_auth", sweep
    )
    for point in sweep.points():
        overrides = tmp_path / "point.yaml"
        overrides.write_text(
            yaml.safe_dump(
                point_overrides_data(load_overrides("{}", pack), pack, "failed_auth", point)
            )
        )
        alerts = tmp_path / "alerts.jsonl"
        assert (
            main(
                [
                    "replay",
                    str(events),
                    "--overrides",
                    str(overrides),
                    "--out",
                    str(alerts),
                    "--quiet",
                ]
            )
            == 0
        )
        keys = ("id", "count", "occurrences", "first_seen", "last_seen", "tenant_id", "group")
        want = [
            {k: a[k] for k in keys}
            for line in alerts.read_text().splitlines()
            if (a := json.loads(line))["rule_id"] == "failed_auth"
        ]
        got = [{k: a.to_json()[k] for k in keys} for a in result.alerts(point)]
        assert sorted(got, key=lambda a: a["id"]) == sorted(want, key=lambda a: a["id"])
        assert want, point.label


def test_cli_usage_and_input_errors(
    small_input: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Missing --budget, an unknown rule and a bad labels file fail with a clear message."""
    events, _ = small_input
    base = ["backtest", str(events), "--sweep", "threshold=3", "--no-progress"]
    assert main([*base, "--rule", "failed_auth", "--overrides-out", str(tmp_path / "x")]) == 2
    assert "needs --budget" in capsys.readouterr().err
    assert main([*base, "--rule", "nope"]) == 1
    assert 'no rule "nope"' in capsys.readouterr().err
    bad = tmp_path / "labels.jsonl"
    bad.write_text('{"scenario": "failed_auth"}\n')
    assert main([*base, "--rule", "failed_auth", "--labels", str(bad)]) == 1
    assert "line 1: not an attack label" in capsys.readouterr().err
    assert (
        main(
            ["backtest", "--sample", str(events), "--rule", "failed_auth", "--sweep", "threshold=3"]
        )
        == 2
    )


def test_cli_runs_on_the_bundled_sample(capsys: pytest.CaptureFixture[str]) -> None:
    """--sample sweeps the bundled events."""
    assert (
        main(
            [
                "backtest",
                "--sample",
                "--rule",
                "password_spraying",
                "--sweep",
                "threshold=5,10",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "password_spraying" in capsys.readouterr().out


def test_labels_round_trip_through_a_file(tmp_path: Path) -> None:
    """Labels written by the synthetic generator load back."""
    path = tmp_path / "labels.jsonl"
    written = [label("u-1", 0, 30), label("u-2", 60, 90)]
    path.write_text("".join(item.to_json() + "\n" for item in written))
    assert load_labels(path) == written


@pytest.mark.parametrize("name", PURE)
def test_backtest_core_imports_no_infrastructure(name: str) -> None:
    """The backtest core imports no ray, redis or asyncpg (the Ray path is an adapter)."""
    tree = ast.parse((PACKAGE / name).read_text())
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
        if isinstance(node, ast.ImportFrom) and node.module:
            assert not node.module.startswith("rayworker.pipeline"), node.module
    assert roots & {"ray", "redis", "asyncpg"} == set()


def test_progress_bars_follow_the_reading_and_the_points(small_input: tuple[Path, Path]) -> None:
    """On a terminal, bars show the bytes read and the points swept, then vanish."""
    events, _ = small_input
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=100)
    seen: list[tuple[int, int]] = []
    with _Bars(console, enabled=True) as bars:

        def sweeping(done: int, total: int) -> None:
            seen.append((done, total))
            bars.sweeping(done, total)

        run_backtest(
            bars.reading(events, 1_000),
            builtin_pack(),
            "failed_auth",
            parse_sweep(["threshold=3..5", "window=1m,5m"]),
            progress=sweeping,
            clock=CLOCK,
        )
    assert seen[-1] == (6, 6)
    assert "sweeping points" in stream.getvalue()


def test_cli_detector_flag_gives_the_same_points(tmp_path: Path) -> None:
    """--detector runs every point on the detector; only the path column differs."""
    fast, slow = tmp_path / "fast.csv", tmp_path / "slow.csv"
    common = ["backtest", "--sample", "--rule", "brute_force_success", "--sweep", "window=2m,10m"]
    assert main([*common, "--out", str(fast), "--quiet"]) == 0
    assert main([*common, "--detector", "--out", str(slow), "--quiet"]) == 0
    rows = [list(csv.DictReader(path.read_text().splitlines())) for path in (fast, slow)]
    assert [r.pop("path") for r in rows[0]] == ["vectorised", "vectorised"]
    assert [r.pop("path") for r in rows[1]] == ["detector", "detector"]
    assert rows[0] == rows[1]
