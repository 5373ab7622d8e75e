"""JSON lines from a file, standard input or a binary stream, in batches of raw lines.

The replay hot path wants ``list[bytes]`` batches it can hand straight to the decoder, so this
module reads large binary chunks (not line by line) and splits them itself:

* A line is what lies between two ``\\n``; a trailing ``\\r`` (a CRLF file) is dropped too.
* A final line without a newline is still a line; a file ending in ``\\n`` has no extra empty
  line after it. Blank lines are kept, so a line's index in the stream is its line number
  minus one, which is what rejections report; the decoder skips them.
* A UTF-8 byte order mark at the very start is dropped (some editors write one).
* Every batch but the last holds exactly ``batch_size`` lines; empty input yields no batch.

:class:`JsonlReader` also reports the total size of a regular file (``None`` for a pipe) and
the bytes read so far, which is what the CLI's progress bar shows. A file that cannot be
opened or read raises :class:`rayworker.errors.InputError` naming the path and the OS reason.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Self

from rayworker.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_CHUNK_BYTES", "JsonlReader", "iter_line_batches"]

DEFAULT_BATCH_SIZE = 10_000
"""Lines per batch unless told otherwise."""
DEFAULT_CHUNK_BYTES = 1 << 20
"""Bytes asked of the operating system per read."""

_BOM = b"\xef\xbb\xbf"


class JsonlReader:
    """Reads JSON lines from a path, ``"-"`` (standard input) or an open binary stream.

    A path is opened at construction, so a missing file fails before any work starts, and is
    closed by :meth:`close` (or the ``with`` block). A stream given by the caller, and standard
    input, are never closed here.
    """

    def __init__(
        self,
        source: str | Path | BinaryIO,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        if batch_size < 1:
            msg = f"Got {batch_size} for batch_size; a batch must hold at least one line"
            raise ValueError(msg)
        if chunk_bytes < 1:
            msg = f"Got {chunk_bytes} for chunk_bytes; read at least one byte at a time"
            raise ValueError(msg)
        self.batch_size = batch_size
        self.chunk_bytes = chunk_bytes
        self.bytes_read = 0
        """Bytes read from the source so far."""
        self._owned = False
        self._stream: BinaryIO
        if isinstance(source, str | Path):
            if str(source) == "-":
                self.name = "<stdin>"
                self._stream = sys.stdin.buffer
            else:
                self.name = str(source)
                self._stream = self._open(Path(source))
                self._owned = True
        else:
            self.name = str(getattr(source, "name", "<stream>"))
            self._stream = source
        self.size: int | None = _regular_file_size(self._stream)
        """Total bytes when the source is a regular file; None for pipes and terminals."""

    def _open(self, path: Path) -> BinaryIO:
        try:
            return path.open("rb")
        except OSError as exc:
            msg = f"cannot read events file {str(path)!r}: {exc.strerror or exc}"
            raise InputError(msg) from exc

    def __iter__(self) -> Iterator[list[bytes]]:
        """Batches of lines without their line endings (see the module docstring)."""
        size = self.batch_size
        pending: list[bytes] = []
        tail = b""
        for chunk in _without_bom(self._chunks()):
            buf = tail + chunk if tail else chunk
            lines = buf.split(b"\n")
            tail = lines.pop()
            if lines:
                pending.extend(_strip_cr(lines) if b"\r" in buf else lines)
            if len(pending) >= size:
                cut = len(pending) - len(pending) % size
                for start in range(0, cut, size):
                    yield pending[start : start + size]
                pending = pending[cut:]
        if tail:
            pending.append(tail.removesuffix(b"\r"))
        if pending:
            yield pending

    def _chunks(self) -> Iterator[bytes]:
        read = self._stream.read
        want = self.chunk_bytes
        while True:
            try:
                chunk = read(want)
            except OSError as exc:
                msg = f"cannot read events from {self.name!r}: {exc.strerror or exc}"
                raise InputError(msg) from exc
            if not chunk:
                return
            self.bytes_read += len(chunk)
            yield chunk

    def close(self) -> None:
        """Close the file if this reader opened it; streams it was given stay open."""
        if self._owned:
            self._stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def iter_line_batches(
    source: str | Path | BinaryIO, *, batch_size: int = DEFAULT_BATCH_SIZE
) -> Iterator[list[bytes]]:
    """Batches of JSON lines (bytes, without line endings) from a path, ``"-"`` or a stream.

    The file is opened on the first ``next()``; use :class:`JsonlReader` to fail earlier or to
    follow the bytes read.
    """
    with JsonlReader(source, batch_size=batch_size) as reader:
        yield from reader


def _without_bom(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The chunks with a leading byte order mark removed, even if split across chunks."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= len(_BOM):
            break
    if head := head.removeprefix(_BOM):
        yield head
    yield from chunks


def _strip_cr(lines: list[bytes]) -> list[bytes]:
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _regular_file_size(stream: BinaryIO) -> int | None:
    try:
        info = os.fstat(stream.fileno())
    except (OSError, AttributeError, ValueError):
        # No file descriptor (BytesIO raises io.UnsupportedOperation, an OSError), or closed.
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None
