"""A vocabulary of group values that holds its strings packed.

:class:`rayworker.columnar.ValueVocab` maps each value to a small persistent code with a dict,
which holds every value as a Python object: a 10-character principal id costs about 125
bytes there (the string, its dict slot, its boxed code and its list slot). The vocabulary of
group values holds one entry per principal and address of the traffic, about as many entries
as a detector has keys, so that is most of a key's state.

:class:`PackedVocab` gives the same codes for the same values with the same methods, but keeps
strings as UTF-8 bytes in one buffer, found by their hash in a sorted numpy array: about 35
bytes per string. A hash match is confirmed by comparing the bytes, so two different strings
never share a code; the rare string whose hash another string already holds gets its code
from a small dict instead. Other values (None, numbers, tuples, lists) keep the dict of
:class:`ValueVocab`, typed as there.

Python's string hash is salted per process, which is fine here: codes live only in memory
(snapshots hold the values themselves).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from rayworker.columnar import NUMERIC_TYPES, typed_key
from rayworker.events import FirstSeen

__all__ = ["PackedVocab"]

_I64 = npt.NDArray[np.int64]
_string_hash: Callable[[str], int] = hash  # a module attribute: a test forces collisions
_GROWTH = 1.25  # per-code arrays grow by a quarter: a doubling would idle half their bytes
_FEW_REPEATS = 50_000  # from this many values on, a batch factorises with a __missing__ dict


def _factorise(values: Iterable[Any]) -> tuple[_I64, list[Any]]:
    """Dense codes in first-seen order, and the distinct values (by plain equality)."""
    items = values if isinstance(values, list) else list(values)
    n = len(items)
    if n >= _FEW_REPEATS:
        # Long batches repeat most values: a Python call per new value costs little.
        table = FirstSeen()
        local = np.fromiter(map(table.__getitem__, items), dtype=np.int64, count=n)
        return local, list(table)
    # Short batches are mostly distinct values: no Python call per value at all. Each
    # value's code is the position where it first appears, made dense afterwards.
    first_at: dict[Any, int] = {}
    position = np.fromiter(map(first_at.setdefault, items, itertools.count()), np.int64, n)
    firsts = np.fromiter(first_at.values(), dtype=np.int64, count=len(first_at))
    dense = np.empty(n, dtype=np.int64)
    dense[firsts] = np.arange(len(firsts))
    return dense[position], list(first_at)


class _Values:
    """``vocab.values[code]``: the value of a code (None for a free one)."""

    __slots__ = ("_vocab",)

    def __init__(self, vocab: PackedVocab) -> None:
        self._vocab = vocab

    def __getitem__(self, code: int) -> Any:
        return self._vocab.value(code)

    def __len__(self) -> int:
        return self._vocab._size


class PackedVocab:
    """Persistent small-integer codes for values, strings held packed; the contract of
    :class:`rayworker.columnar.ValueVocab`."""

    __slots__ = (
        "_blob",
        "_collided",
        "_dead_bytes",
        "_free",
        "_hash",
        "_hash_code",
        "_len",
        "_off",
        "_other",
        "_other_values",
        "_size",
        "numeric",
        "values",
    )

    def __init__(self) -> None:
        self._blob = bytearray()
        self._dead_bytes = 0
        # Per code: where its text starts in the blob and its byte length (-1: not a string).
        self._off: _I64 = np.zeros(0, dtype=np.int64)
        self._len: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        # The strings' hashes, ascending, and the code of each.
        self._hash: _I64 = np.zeros(0, dtype=np.int64)
        self._hash_code: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        self._collided: dict[str, int] = {}
        # Every value that is not a string, under its typed key (1, 1.0 and True apart).
        self._other: dict[Any, int] = {}
        self._other_values: dict[int, Any] = {}
        self._free: list[int] = []
        self._size = 0
        self.numeric = False
        self.values = _Values(self)

    def __len__(self) -> int:
        return self._size - len(self._free)

    # --- lookups ----------------------------------------------------------------------------

    def value(self, code: int) -> Any:
        """The value of a code (None for a free one)."""
        if code >= self._size:
            raise IndexError(code)
        length = int(self._len[code])
        if length < 0:
            return self._other_values.get(code)
        start = int(self._off[code])
        return self._blob[start : start + length].decode("utf-8", "surrogatepass")

    def code(self, value: Any) -> int:
        """The code of a value, assigned on first sight."""
        if type(value) is str:
            return int(self._string_codes([value])[0])
        return self._other_code(value)

    def codes(self, values: Sequence[Any]) -> _I64:
        """The codes of many values (assigned on first sight)."""
        return self.codes_from(lambda: values)

    def codes_from(self, values: Callable[[], Iterable[Any]]) -> _I64:
        """The codes of the values a fresh iterator from ``values()`` yields."""
        try:
            # Batch-local codes first (a batch repeats its values several times over); the
            # packed strings are then searched once per distinct value.
            local, distinct = _factorise(values())
        except TypeError:  # a list or dict value: value by value
            return np.array([self.code(v) for v in values()], dtype=np.int64)
        kinds = set(map(type, distinct))
        if kinds <= {str}:
            per_value = self._string_codes(distinct)
        elif kinds & NUMERIC_TYPES:
            # 1, 1.0 and True shared a slot of the batch's dict: code value by value.
            return np.array([self.code(v) for v in values()], dtype=np.int64)
        else:
            per_value = np.array([self.code(v) for v in distinct], dtype=np.int64)
        return per_value[local] if len(local) else local

    def code_if_known(self, value: Any) -> int | None:
        """The code of a value, or None when it has none."""
        if type(value) is not str:
            return self._other.get(typed_key(value))
        known = self._find([value])[0]
        return int(known) if known >= 0 else None

    # --- strings ------------------------------------------------------------------------------

    def _find(self, strings: list[str]) -> _I64:
        """The codes of strings, -1 where a string has none."""
        n = len(strings)
        codes = np.full(n, -1, dtype=np.int64)
        if not n or not len(self._hash):
            if self._collided:
                self._find_collided(strings, codes, np.ones(n, dtype=np.bool_))
            return codes
        hashes = np.fromiter(map(_string_hash, strings), dtype=np.int64, count=n)
        # Searched in ascending order, numpy starts each search where the previous one ended
        # and its probes stay in cache: about 3x faster than unordered lookups, sort included.
        order = np.argsort(hashes)
        at = np.empty(n, dtype=np.intp)
        at[order] = np.searchsorted(self._hash, hashes[order])
        np.minimum(at, len(self._hash) - 1, out=at)
        candidate = self._hash[at] == hashes
        picked = np.flatnonzero(candidate)
        if len(picked):
            codes[picked] = self._hash_code[at[picked]]
            same = self._same_text(
                strings if len(picked) == n else [strings[i] for i in picked.tolist()],
                codes[picked],
            )
            codes[picked[~same]] = -1
        if self._collided:
            self._find_collided(strings, codes, codes < 0)
        return codes

    def _find_collided(
        self, strings: list[str], codes: _I64, unknown: npt.NDArray[np.bool_]
    ) -> None:
        collided = self._collided
        for i in np.flatnonzero(unknown).tolist():
            code = collided.get(strings[i])
            if code is not None:
                codes[i] = code

    def _same_text(self, strings: list[str], codes: _I64) -> npt.NDArray[np.bool_]:
        """Whether each string is the text held for the code beside it (byte comparison)."""
        data = "".join(strings).encode("utf-8", "surrogatepass")
        lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
        if len(data) != int(lengths.sum()):  # not all ASCII: byte lengths differ
            lengths = np.array(
                [len(s.encode("utf-8", "surrogatepass")) for s in strings], dtype=np.int64
            )
        same: npt.NDArray[np.bool_] = self._len[codes].astype(np.int64) == lengths
        rows = np.flatnonzero(same & (lengths > 0))
        if not len(rows):
            return same
        sizes = lengths[rows]
        total = int(sizes.sum())
        starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
        step = np.arange(total) - starts
        new_at = np.repeat((np.cumsum(lengths) - lengths)[rows], sizes) + step
        old_at = np.repeat(self._off[codes[rows]], sizes) + step
        held = np.frombuffer(self._blob, dtype=np.uint8)
        try:
            differ = np.frombuffer(data, dtype=np.uint8)[new_at] != held[old_at]
        finally:
            del held  # a live view would stop the blob from growing
        bad = np.add.reduceat(differ.astype(np.int64), np.cumsum(sizes) - sizes) > 0
        same[rows[bad]] = False
        return same

    def _string_codes(self, strings: list[str]) -> _I64:
        """The codes of strings (repeats allowed), assigning codes to the new ones."""
        codes = self._find(strings)
        new = np.flatnonzero(codes < 0)
        if len(new):
            first: dict[str, int] = {}
            at = [first.setdefault(strings[i], len(first)) for i in new.tolist()]
            codes[new] = self._add(list(first))[at]
        return codes

    def _add(self, strings: list[str]) -> _I64:
        """Codes for distinct strings that have none yet."""
        n = len(strings)
        codes = self._allocate(n)
        encoded = [s.encode("utf-8", "surrogatepass") for s in strings]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=n)
        self._off[codes] = len(self._blob) + np.cumsum(lengths) - lengths
        self._len[codes] = lengths
        self._blob += b"".join(encoded)
        hashes = np.fromiter(map(_string_hash, strings), dtype=np.int64, count=n)
        # A hash already in the table (or twice among these) belongs to another string: that
        # string is found through the dict of collisions instead.
        order = np.argsort(hashes, kind="stable")
        sorted_h = hashes[order]
        repeat = np.zeros(n, dtype=np.bool_)
        repeat[order[1:]] = sorted_h[1:] == sorted_h[:-1]
        if len(self._hash):
            at = np.minimum(np.searchsorted(self._hash, hashes), len(self._hash) - 1)
            repeat |= self._hash[at] == hashes
        for i in np.flatnonzero(repeat).tolist():
            self._collided[strings[i]] = int(codes[i])
        # Inserted in hash order: np.insert keeps the given order among equal positions.
        kept = order[~repeat[order]]
        at = np.searchsorted(self._hash, hashes[kept])
        self._hash = np.insert(self._hash, at, hashes[kept])
        self._hash_code = np.insert(self._hash_code, at, codes[kept].astype(np.int32))
        return codes

    def _allocate(self, n: int) -> _I64:
        """n codes: freed ones first, then new ones (growing the per-code arrays)."""
        reused = [self._free.pop() for _ in range(min(n, len(self._free)))]
        fresh = n - len(reused)
        if fresh:
            size = self._size + fresh
            if size > len(self._off):
                capacity = max(size, int(len(self._off) * _GROWTH), 64)
                self._off = np.resize(self._off, capacity)
                length = np.full(capacity, -1, dtype=np.int32)
                length[: len(self._len)] = self._len
                self._len = length
            reused.extend(range(self._size, size))
            self._size = size
        return np.array(reused, dtype=np.int64)

    def _other_code(self, value: Any) -> int:
        key = typed_key(value)
        known = self._other.get(key)
        if known is not None:
            return known
        code = int(self._allocate(1)[0])
        self._other[key] = code
        self._other_values[code] = value
        if type(value) in NUMERIC_TYPES:
            self.numeric = True
        return code

    # --- forgetting -------------------------------------------------------------------------

    def retain(self, live: Iterable[int]) -> None:
        """Forget every value whose code is not in ``live``; its code is reused later."""
        keep = np.zeros(self._size, dtype=np.bool_)
        wanted = np.fromiter(live, dtype=np.int64)
        keep[wanted[(wanted >= 0) & (wanted < self._size)]] = True
        held = self._len[: self._size] >= 0
        dead_strings = np.flatnonzero(held & ~keep)
        dead_other = [c for c in self._other_values if not keep[c]]
        if not len(dead_strings) and not dead_other:
            return
        if len(dead_strings):
            dead = np.zeros(self._size, dtype=np.bool_)
            dead[dead_strings] = True
            alive = ~dead[self._hash_code]
            self._hash = self._hash[alive]
            self._hash_code = self._hash_code[alive]
            if self._collided:
                self._collided = {s: c for s, c in self._collided.items() if not dead[c]}
            self._dead_bytes += int(self._len[dead_strings].sum())
            self._len[dead_strings] = -1
            self._off[dead_strings] = 0
            self._free.extend(dead_strings.tolist())
        if dead_other:
            gone = set(dead_other)
            self._other = {k: c for k, c in self._other.items() if c not in gone}
            for code in dead_other:
                del self._other_values[code]
            self._free.extend(dead_other)
        if self._dead_bytes * 2 > len(self._blob):
            self._compact_blob()

    def _compact_blob(self) -> None:
        """Rewrite the blob with the live strings only."""
        codes = np.flatnonzero(self._len[: self._size] >= 0)
        blob = self._blob
        parts = [
            blob[start : start + length]
            for start, length in zip(
                self._off[codes].tolist(), self._len[codes].tolist(), strict=True
            )
        ]
        lengths = self._len[codes].astype(np.int64)
        self._off[codes] = np.cumsum(lengths) - lengths
        self._blob = bytearray(b"".join(parts))
        self._dead_bytes = 0
