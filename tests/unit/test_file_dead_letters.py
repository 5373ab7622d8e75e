"""The dead letters of a file source: every rejected or late event kept, with where it came
from, byte for byte."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest

from rayworker.cli import main
from rayworker.detect import LateEvent
from rayworker.errors import ConfigError
from rayworker.events import Rejection, RejectReason
from rayworker.pipeline.app import Batch
from rayworker.pipeline.sources import FileDeadLetters, file_batches


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_file_batches_skip_blank_lines_and_name_each_line_by_its_number(tmp_path: Path) -> None:
    """Each kept line's owner is FILE:LINE (1-based, blank lines counted), across batches."""
    events = tmp_path / "audit.jsonl"
    events.write_bytes(b'{"a":1}\n\n{"a":2}\n   \n{"a":3}\n')
    batches = list(file_batches(events, batch_size=2))
    assert [b.lines for b in batches] == [[b'{"a":1}'], [b'{"a":2}'], [b'{"a":3}']]
    assert [b.owners for b in batches] == [["audit.jsonl:1"], ["audit.jsonl:3"], ["audit.jsonl:5"]]


def test_rejections_and_late_events_are_appended_with_reason_entry_and_payload(
    tmp_path: Path,
) -> None:
    """A rejection and a late event each become one JSON line naming reason, tenant, the
    input line and the original bytes; a second batch appends."""
    path = tmp_path / "dl.jsonl"
    sink = FileDeadLetters(path)
    lines = [b'{"broken', b'{"organizationId":"t1","timestamp":"2026-01-01T00:00:00Z"}']
    batch = Batch(lines, owners=["in.jsonl:7", "in.jsonl:9"])
    rejection = Rejection(RejectReason.MALFORMED_JSON, None, "not JSON", lines[0], 0, None)
    late = LateEvent("ev-1", "t1", 1_700_000_000_000_000, 1_700_000_100_000_000, 1)
    asyncio.run(sink([rejection], [late], batch))
    asyncio.run(sink([rejection], [], Batch([lines[0]], owners=["in.jsonl:11"])))
    sink.close()
    first, second, third = _records(path)
    assert first["reason"] == "malformed_json"
    assert first["entry"] == "in.jsonl:7"
    assert first["payload"] == '{"broken'
    assert second["reason"] == "late"
    assert second["tenant"] == "t1"
    assert second["entry"] == "in.jsonl:9"
    assert second["payload"] == lines[1].decode()
    assert "watermark" in str(second["message"])
    assert third["entry"] == "in.jsonl:11"
    assert sink.written == 3


def test_a_payload_that_is_not_utf8_is_kept_exactly_as_base64(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are stored as payload_base64, which decodes to them exactly."""
    path = tmp_path / "dl.jsonl"
    raw = b'{"x":"\xff\xfe"}'
    sink = FileDeadLetters(path)
    rejection = Rejection(RejectReason.MALFORMED_JSON, None, "not UTF-8", raw, 0, None)
    asyncio.run(sink([rejection], [], Batch([raw], owners=["in.jsonl:1"])))
    sink.close()
    [record] = _records(path)
    assert "payload" not in record
    assert base64.b64decode(str(record["payload_base64"])) == raw


def test_nothing_to_dead_letter_leaves_no_file(tmp_path: Path) -> None:
    """A run without bad events creates no empty dead-letter file."""
    path = tmp_path / "dl.jsonl"
    sink = FileDeadLetters(path)
    asyncio.run(sink([], [], Batch([b"{}"])))
    sink.close()
    assert not path.exists()


def test_a_missing_directory_fails_at_start_naming_the_option(tmp_path: Path) -> None:
    """A path whose directory does not exist raises ConfigError before any event is read."""
    with pytest.raises(ConfigError, match=r"does not exist; pass --dead-letters"):
        FileDeadLetters(tmp_path / "nowhere" / "dl.jsonl")


def test_a_directory_is_not_a_dead_letter_file(tmp_path: Path) -> None:
    """A directory given as the file raises ConfigError that says so."""
    with pytest.raises(ConfigError, match="it is a directory"):
        FileDeadLetters(tmp_path)


def test_run_on_a_missing_events_file_fails_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rayworker run --events` on a file that is not there exits 1 naming the file, before
    any Ray or store is started (so the dead-letter path is not what it complains about)."""
    missing = tmp_path / "nowhere" / "audit.jsonl"
    assert main(["run", "--events", str(missing), "--no-serve", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"no events file at '{missing}'" in err


def test_run_with_an_unwritable_dead_letter_path_fails_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--dead-letters` in a directory that does not exist exits 1 naming the option."""
    events = tmp_path / "audit.jsonl"
    events.write_bytes(b"{}\n")
    dead = tmp_path / "nowhere" / "dl.jsonl"
    argv = ["run", "--events", str(events), "--dead-letters", str(dead), "--no-serve"]
    assert main(argv) == 1
    assert "pass --dead-letters" in capsys.readouterr().err


def test_dead_letters_without_a_file_source_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`run --dead-letters` without `--events` exits 1: a stream's dead letters have their
    own stream, and the option would silently do nothing."""
    assert main(["run", "--dead-letters", "dl.jsonl", "--no-serve"]) == 1
    assert "--dead-letters is for a file source" in capsys.readouterr().err
