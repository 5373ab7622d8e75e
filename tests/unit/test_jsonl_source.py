"""The JSONL source splits a byte stream into exactly the lines that were written."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rayworker.errors import InputError
from rayworker.sources.jsonl import JsonlReader, iter_line_batches

if TYPE_CHECKING:
    from pathlib import Path


def read_all(data: bytes, *, batch_size: int = 10_000, chunk_bytes: int = 1 << 20) -> list[bytes]:
    reader = JsonlReader(io.BytesIO(data), batch_size=batch_size, chunk_bytes=chunk_bytes)
    return [line for batch in reader for line in batch]


def test_lf_lines_are_split_without_newlines() -> None:
    """Lines separated by LF come back without the newline."""
    assert read_all(b'{"a":1}\n{"b":2}\n') == [b'{"a":1}', b'{"b":2}']


def test_crlf_line_endings_are_dropped_whole() -> None:
    """CRLF endings lose both the CR and the LF, even when a chunk ends between them."""
    data = b"one\r\ntwo\r\nthree\r\n"
    for chunk in (1, 2, 3, 4, 1 << 20):
        assert read_all(data, chunk_bytes=chunk) == [b"one", b"two", b"three"]


def test_final_line_without_newline_is_kept() -> None:
    """A last line with no newline is still a line, with or without a CR."""
    assert read_all(b"one\ntwo") == [b"one", b"two"]
    assert read_all(b"one\r\ntwo\r") == [b"one", b"two"]


def test_blank_lines_are_kept_so_indexes_are_line_numbers() -> None:
    """Blank lines stay in the batch (the decoder skips them) so positions match lines."""
    assert read_all(b"a\n\n\nb\n") == [b"a", b"", b"", b"b"]


def test_empty_input_yields_no_batch() -> None:
    """Empty input gives no batches at all, not one empty batch."""
    assert list(JsonlReader(io.BytesIO(b""))) == []


def test_a_lone_newline_is_one_blank_line() -> None:
    """A stream holding only a newline has one (blank) line."""
    assert read_all(b"\n") == [b""]


def test_batches_are_full_except_the_last() -> None:
    """Every batch holds batch_size lines except the last, across chunk boundaries."""
    data = b"".join(b"line-%d\n" % i for i in range(25))
    batches = list(JsonlReader(io.BytesIO(data), batch_size=10, chunk_bytes=7))
    assert [len(b) for b in batches] == [10, 10, 5]
    assert [line for b in batches for line in b] == [b"line-%d" % i for i in range(25)]


def test_exact_multiple_of_batch_size_has_no_trailing_empty_batch() -> None:
    """Input of exactly k * batch_size lines yields k batches."""
    data = b"x\n" * 20
    assert [len(b) for b in JsonlReader(io.BytesIO(data), batch_size=10)] == [10, 10]


def test_leading_byte_order_mark_is_dropped() -> None:
    """A UTF-8 BOM at the start of the stream is not part of the first line."""
    assert read_all(b"\xef\xbb\xbf{}\n{}\n", chunk_bytes=2) == [b"{}", b"{}"]


@given(
    lines=st.lists(
        st.binary(max_size=12).filter(lambda b: b"\n" not in b and not b.endswith(b"\r")),
        max_size=40,
    ),
    crlf=st.booleans(),
    final_newline=st.booleans(),
    batch_size=st.integers(1, 9),
    chunk_bytes=st.integers(1, 17),
)
def test_any_split_round_trips(
    lines: list[bytes], crlf: bool, final_newline: bool, batch_size: int, chunk_bytes: int
) -> None:
    """Whatever the chunk and batch sizes, the lines read are exactly the lines written."""
    if lines and lines[0].startswith(b"\xef\xbb\xbf"):
        lines[0] = lines[0][3:]
    if lines and lines[-1] == b"":
        final_newline = True  # an empty last line only exists when a newline ends it
    sep = b"\r\n" if crlf else b"\n"
    data = sep.join(lines) + (sep if final_newline and lines else b"")
    batches = list(JsonlReader(io.BytesIO(data), batch_size=batch_size, chunk_bytes=chunk_bytes))
    assert [line for b in batches for line in b] == lines
    assert all(len(b) == batch_size for b in batches[:-1])
    assert all(batches)


def test_reads_a_path_and_reports_its_size(tmp_path: Path) -> None:
    """A path is read in full, and its size and the bytes read are reported."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"n":1}\n{"n":2}\n')
    with JsonlReader(path, batch_size=1) as reader:
        assert reader.size == 16
        assert list(reader) == [[b'{"n":1}'], [b'{"n":2}']]
        assert reader.bytes_read == 16


def test_a_stream_has_no_size() -> None:
    """A stream that is not a regular file reports no total size."""
    assert JsonlReader(io.BytesIO(b"{}\n")).size is None


def test_dash_reads_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path "-" reads standard input's bytes."""
    fake = io.TextIOWrapper(io.BytesIO(b"a\nb\n"))
    monkeypatch.setattr("sys.stdin", fake)
    assert list(iter_line_batches("-")) == [[b"a", b"b"]]


def test_iter_line_batches_closes_the_file(tmp_path: Path) -> None:
    """iter_line_batches reads a path and closes it when exhausted."""
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"1\n2\n3")
    assert list(iter_line_batches(path, batch_size=2)) == [[b"1", b"2"], [b"3"]]


def test_missing_file_raises_input_error_naming_path_and_reason(tmp_path: Path) -> None:
    """A missing file is an InputError whose message names the path and the OS reason."""
    path = tmp_path / "nope.jsonl"
    with pytest.raises(InputError, match=r"nope\.jsonl.*No such file or directory"):
        JsonlReader(path)


def test_directory_raises_input_error(tmp_path: Path) -> None:
    """A directory given as the events file is an InputError, not a traceback."""
    with pytest.raises(InputError, match=str(tmp_path.name)):
        list(iter_line_batches(tmp_path))


def test_batch_size_must_be_positive() -> None:
    """A batch size below one is refused with a message naming the parameter."""
    with pytest.raises(ValueError, match="batch_size"):
        JsonlReader(io.BytesIO(b""), batch_size=0)
