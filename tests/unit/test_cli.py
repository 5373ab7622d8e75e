"""The rayworker command, run in-process through ``main([...])``."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from rayworker.cli import main
from rayworker.rules import builtin_pack, load_rules

if TYPE_CHECKING:
    from pathlib import Path

REQUIRED_ALERT_KEYS = {
    "id",
    "tenant_id",
    "rule_id",
    "group",
    "severity",
    "first_seen",
    "last_seen",
    "occurrences",
    "evidence",
    "title",
    "description",
}
OVERRIDES_YAML = """\
tenants:
  org-a:
    rules:
      failed_auth: {threshold: 10}
"""
T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


def event(
    seconds: float,
    *,
    tenant: str = "org-a",
    principal: str = "user-1",
    action: str = "auth.login.failure",
    status: str = "failure",
    **extra: Any,
) -> dict[str, Any]:
    stamp = (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    return {
        "timestamp": stamp,
        "organizationId": tenant,
        "principalId": principal,
        "action": action,
        "status": status,
        **extra,
    }


def failed_logins(n: int) -> list[dict[str, Any]]:
    """n failed logins by one principal, 5 s apart (all within one minute for n <= 12)."""
    return [event(5.0 * i) for i in range(n)]


def write_events(path: Path, events: list[dict[str, Any]], *extra_lines: str) -> Path:
    lines = [json.dumps(e) for e in events] + list(extra_lines)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def alerts_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- replay ------------------------------------------------------------------------------------


def test_replay_writes_one_alert_per_line_with_the_required_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """replay prints one JSON alert per line on stdout, each with the documented keys."""
    events = write_events(tmp_path / "e.jsonl", [*failed_logins(6), event(0, principal="u2")])
    assert main(["replay", str(events), "--no-progress"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines
    for line in lines:
        alert = json.loads(line)
        assert alert.keys() >= REQUIRED_ALERT_KEYS


def test_six_failed_logins_in_a_minute_give_one_high_failed_auth_alert(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Six failed logins by one principal within a minute give exactly one HIGH failed_auth."""
    events = write_events(tmp_path / "e.jsonl", failed_logins(6))
    out = tmp_path / "alerts.jsonl"
    assert main(["replay", str(events), "--out", str(out), "--quiet"]) == 0
    alerts = read_jsonl(out)
    assert [(a["rule_id"], a["severity"]) for a in alerts] == [("failed_auth", "HIGH")]
    assert alerts[0]["tenant_id"] == "org-a"
    assert "user-1" in json.dumps(alerts[0]["group"])
    assert capsys.readouterr().out == ""


def test_three_failed_logins_give_no_alert(tmp_path: Path) -> None:
    """Three failed logins are below the threshold: the alerts file is empty."""
    events = write_events(tmp_path / "e.jsonl", failed_logins(3))
    out = tmp_path / "alerts.jsonl"
    assert main(["replay", str(events), "--out", str(out), "--quiet"]) == 0
    assert out.read_text(encoding="utf-8") == ""


def test_dash_reads_events_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`replay -` reads the events from standard input."""
    data = "".join(json.dumps(e) + "\n" for e in failed_logins(6))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data.encode())))
    assert main(["replay", "-", "--quiet"]) == 0
    assert [a["rule_id"] for a in alerts_of(capsys.readouterr().out)] == ["failed_auth"]


def test_rejects_file_gets_malformed_lines_with_reasons(tmp_path: Path) -> None:
    """Bad lines do not fail the replay; each lands in --rejects with its reason and payload."""
    no_tenant = event(1)
    del no_tenant["organizationId"]
    events = write_events(
        tmp_path / "e.jsonl",
        [event(0)],
        "{not json",
        json.dumps(no_tenant),
        json.dumps(event(2) | {"timestamp": "yesterday"}),
    )
    rejects = tmp_path / "rejects.jsonl"
    code = main(["replay", str(events), "--rejects", str(rejects), "--out", "/dev/null", "--quiet"])
    assert code == 0
    records = read_jsonl(rejects)
    assert [(r["reason"], r["field"], r["index"]) for r in records] == [
        ("malformed_json", None, 1),
        ("missing_field", "organizationId", 2),
        ("bad_timestamp", "timestamp", 3),
    ]
    assert records[0]["payload"] == "{not json"
    assert all(r["message"] for r in records)


def test_late_file_gets_events_behind_the_watermark(tmp_path: Path) -> None:
    """An event older than its tenant's watermark is written to --late, not counted."""
    events = write_events(tmp_path / "e.jsonl", [event(600, principal="u9"), event(0)])
    late = tmp_path / "late.jsonl"
    args = ["replay", str(events), "--late", str(late), "--lateness", "60", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a.jsonl")]) == 0
    assert [r["index"] for r in read_jsonl(late)] == [1]


def test_summary_shows_rejected_counts_by_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The summary (on stderr when alerts go to stdout) counts rejections per reason."""
    events = write_events(tmp_path / "e.jsonl", failed_logins(6), "{bad", "[1, 2]", "also bad", "")
    assert main(["replay", str(events), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert [a["rule_id"] for a in alerts_of(captured.out)] == ["failed_auth"]
    summary = {
        row[0]: row[1]
        for row in (
            [cell.strip() for cell in line.strip("│|").split("│")]
            for line in captured.err.splitlines()
            if "│" in line
        )
        if len(row) >= 2
    }
    assert summary["events read"] == "9"
    assert summary["accepted"] == "6"
    assert summary["rejected"] == "3"
    assert summary["rejected: malformed_json"] == "2"
    assert summary["rejected: not_an_object"] == "1"
    assert "failed_auth" in captured.err


def test_with_out_the_summary_goes_to_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --out the alerts go to the file and the summary to stdout."""
    events = write_events(tmp_path / "e.jsonl", failed_logins(6))
    out = tmp_path / "alerts.jsonl"
    assert main(["replay", str(events), "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "events read" in captured.out
    assert captured.err == ""
    assert len(read_jsonl(out)) == 1


def test_quiet_prints_no_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--quiet leaves only the alerts on stdout and nothing on stderr."""
    events = write_events(tmp_path / "e.jsonl", failed_logins(6))
    assert main(["replay", str(events), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert len(alerts_of(captured.out)) == 1


def test_batch_size_does_not_change_the_alerts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replaying in batches of one line gives the same alerts as one batch."""
    events = write_events(tmp_path / "e.jsonl", [*failed_logins(8), event(3, principal="u2")])
    assert main(["replay", str(events), "--quiet"]) == 0
    whole = capsys.readouterr().out
    assert main(["replay", str(events), "--quiet", "--batch-size", "1"]) == 0
    assert capsys.readouterr().out == whole


def test_overrides_change_a_tenants_threshold(tmp_path: Path) -> None:
    """An overrides file raising org-a's failed_auth threshold to 10 silences six failures."""
    events = write_events(tmp_path / "e.jsonl", failed_logins(6))
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(OVERRIDES_YAML, encoding="utf-8")
    out = tmp_path / "alerts.jsonl"
    args = ["replay", str(events), "--overrides", str(overrides), "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert out.read_text(encoding="utf-8") == ""


def test_sample_fires_several_rule_kinds_and_shows_rejections(tmp_path: Path) -> None:
    """`replay --sample` replays the bundled events: several rules fire, bad lines are rejected."""
    out = tmp_path / "alerts.jsonl"
    rejects = tmp_path / "rejects.jsonl"
    args = ["replay", "--sample", "--out", str(out), "--rejects", str(rejects), "--quiet"]
    assert main(args) == 0
    kinds = {builtin_pack().get(a["rule_id"]).kind for a in read_jsonl(out)}
    assert {"threshold", "distinct", "sequence", "time_of_day"} <= kinds
    reasons = {r["reason"] for r in read_jsonl(rejects)}
    assert {"malformed_json", "missing_field", "bad_timestamp"} <= reasons


def test_missing_input_file_exits_1_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing events file exits 1 with `error:` naming the file and the reason."""
    missing = tmp_path / "missing.jsonl"
    assert main(["replay", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "missing.jsonl" in err
    assert "No such file or directory" in err
    assert "Traceback" not in err


def test_unwritable_output_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An --out path that cannot be created exits 1 naming the option and the path."""
    events = write_events(tmp_path / "e.jsonl", failed_logins(1))
    bad = tmp_path / "no-such-dir" / "alerts.jsonl"
    assert main(["replay", str(events), "--out", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "--out" in err
    assert "alerts.jsonl" in err


def test_invalid_rules_file_exits_1_naming_the_rule_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rules file with a bad window exits 1; the message names the rule and the field."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(invalid_rules_yaml(), encoding="utf-8")
    events = write_events(tmp_path / "e.jsonl", failed_logins(1))
    assert main(["replay", str(events), "--rules", str(rules)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "failed_auth" in err
    assert "window" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["replay"], id="no-input"),
        pytest.param(["replay", "x.jsonl", "--sample"], id="input-and-sample"),
        pytest.param(["replay", "x.jsonl", "--batch-size", "0"], id="zero-batch"),
        pytest.param(["replay", "x.jsonl", "--suppression", "0"], id="zero-suppression"),
        pytest.param(["replay", "x.jsonl", "--lateness", "-1"], id="negative-lateness"),
        pytest.param([], id="no-command"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Bad or missing arguments are usage errors: exit 2 with argparse's message."""
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_version_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the program name and version and exits 0."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("rayworker ")


# --- rules -------------------------------------------------------------------------------------


def test_rules_show_output_loads_back_as_the_builtin_pack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rules show` prints YAML that load_rules reads back equal to the built-in pack."""
    assert main(["rules", "show"]) == 0
    shown = tmp_path / "shown.yaml"
    shown.write_text(capsys.readouterr().out, encoding="utf-8")
    assert load_rules(shown) == builtin_pack()


def test_rules_validate_ok_lists_the_rule_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rules validate` on a good file prints OK with the number of rules and their ids."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(builtin_pack().dump_yaml(), encoding="utf-8")
    assert main(["rules", "validate", str(rules)]) == 0
    out = capsys.readouterr().out
    ids = [rule.id for rule in builtin_pack().rules]
    assert out.startswith(f"OK: {len(ids)} rules (")
    assert all(rule_id in out for rule_id in ids)


def test_rules_validate_checks_overrides_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rules validate --overrides` reports good overrides and exits 1 on a bad one."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(builtin_pack().dump_yaml(), encoding="utf-8")
    good = tmp_path / "good.yaml"
    good.write_text(OVERRIDES_YAML, encoding="utf-8")
    assert main(["rules", "validate", str(rules), "--overrides", str(good)]) == 0
    assert "overrides OK: 1 tenants" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(OVERRIDES_YAML.replace("failed_auth", "no_such_rule"), encoding="utf-8")
    assert main(["rules", "validate", str(rules), "--overrides", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "no_such_rule" in err


def test_rules_show_prints_a_given_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`rules show --rules FILE` prints that pack, which loads back equal to itself."""
    source = tmp_path / "one.yaml"
    data = yaml.safe_load(builtin_pack().dump_yaml())
    data["rules"] = [r for r in data["rules"] if r["id"] == "failed_auth"]
    source.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    assert main(["rules", "show", "--rules", str(source)]) == 0
    shown = tmp_path / "shown.yaml"
    shown.write_text(capsys.readouterr().out, encoding="utf-8")
    assert load_rules(shown).ids == ("failed_auth",)
    assert load_rules(shown) == load_rules(source)


def test_rules_validate_invalid_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`rules validate` on a bad file exits 1 with `error:` naming the rule and field."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(invalid_rules_yaml(), encoding="utf-8")
    assert main(["rules", "validate", str(rules)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ")
    assert "failed_auth" in captured.err


def test_rules_validate_missing_file_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rules validate` on a missing file exits 1 with a message naming it."""
    assert main(["rules", "validate", str(tmp_path / "nope.yaml")]) == 1
    assert "nope.yaml" in capsys.readouterr().err


def invalid_rules_yaml() -> str:
    """The built-in pack with failed_auth's window made negative."""
    data = yaml.safe_load(builtin_pack().dump_yaml())
    rules = data["rules"] if isinstance(data, dict) else data
    for rule in rules:
        if rule["id"] == "failed_auth":
            rule["window"] = "-5s"
    return yaml.safe_dump(data, sort_keys=False)
