"""Columnar window state of rules, and persistent codes for group values.

Between batches every rule with a monotone condition keeps the same retained events a
:class:`rayworker.windows.KeyWindow` per key would, but all keys of the rule share a few numpy
arrays sorted by ``(key code, time, event id)``: a batch updates thousands of keys with a
handful of ``searchsorted``/``insert`` calls instead of Python work per key, and a retained
event costs about 34 bytes (key, time, 128-bit id, flags; 4 more for a tag) instead of a
window's list slots, boxed ints and id text. Count rules are evaluated on the arrays
directly; distinct and out-of-order keys take their rows out into windows for the batch and
put them back at its end. A distinct rule's tag is its value's code.

Key codes are ``tenant code << 32 | group code``. :class:`ValueVocab` gives a value the same
code in every batch for as long as some state refers to it; codes of forgotten values are
reused, so they stay small however long the detector runs. One vocabulary serves every
group key and distinct field of a detector, so a principal's text is held once.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

__all__ = [
    "GROUP_BITS",
    "GROUP_MASK",
    "NUMERIC_TYPES",
    "Block",
    "CountStore",
    "IdWords",
    "ValueVocab",
    "Vocab",
    "decode_id",
    "decode_ids",
    "digest_ids",
    "encode_ids",
    "plain_classes",
    "typed_key",
]

GROUP_BITS = 32
"""Low bits of a key code that hold the group code; the tenant code is above them."""
GROUP_MASK = (1 << GROUP_BITS) - 1

_I64 = npt.NDArray[np.int64]
_U64 = npt.NDArray[np.uint64]

_DERIVED = re.compile(r"ev-[0-9a-f]{32}")
_DERIVED_LEN = 35
_NIBBLE = np.full(256, -1, dtype=np.int16)
for _i, _c in enumerate(b"0123456789abcdef"):
    _NIBBLE[_c] = _i


class IdWords(NamedTuple):
    """Event ids as 128 bits: a derived id (``ev-`` + 32 hex digits) is its number, which
    orders as its text; any other id is ``named`` and its text is in ``text`` (in row
    order)."""

    hi: _U64
    lo: _U64
    named: npt.NDArray[np.bool_]
    text: list[str]


def digest_ids(digests: bytes) -> IdWords:
    """Derived ids from their concatenated 16-byte xxh3-128 digests."""
    words = np.frombuffer(digests, dtype=">u8").reshape(-1, 2)
    n = len(words)
    return IdWords(
        words[:, 0].astype(np.uint64),
        words[:, 1].astype(np.uint64),
        np.zeros(n, dtype=np.bool_),
        [],
    )


def encode_ids(ids: Sequence[str]) -> IdWords:
    """Event ids (text) as :class:`IdWords`."""
    hi, lo, named = _parse_ids(ids)
    text = [ids[i] for i in np.flatnonzero(named).tolist()]
    return IdWords(hi, lo, named, text)


def _parse_ids(ids: Sequence[str]) -> tuple[_U64, _U64, npt.NDArray[np.bool_]]:
    n = len(ids)
    hi = np.zeros(n, dtype=np.uint64)
    lo = np.zeros(n, dtype=np.uint64)
    named = np.ones(n, dtype=np.bool_)
    if not n:
        return hi, lo, named
    # Every id 35 characters and the text 35 bytes each: all ASCII, rows line up.
    text = b"" if set(map(len, ids)) != {_DERIVED_LEN} else "".join(ids).encode("utf-8", "replace")
    if len(text) == n * _DERIVED_LEN:
        rows = np.arange(n)
        chars = np.frombuffer(text, dtype=np.uint8).reshape(n, _DERIVED_LEN)
    else:  # some ids are not 35 ASCII characters: parse the ones that are
        rows = np.array([i for i, s in enumerate(ids) if _DERIVED.fullmatch(s)], dtype=np.intp)
        if not len(rows):
            return hi, lo, named
        picked = "".join(ids[i] for i in rows.tolist()).encode("ascii")
        chars = np.frombuffer(picked, dtype=np.uint8).reshape(len(rows), _DERIVED_LEN)
    digits = _NIBBLE[chars[:, 3:]]
    ok = (
        (chars[:, 0] == ord("e"))
        & (chars[:, 1] == ord("v"))
        & (chars[:, 2] == ord("-"))
        & (digits >= 0).all(axis=1)
    )
    packed = ((digits[:, 0::2] << 4) | digits[:, 1::2]).astype(np.uint8)
    words = np.frombuffer(packed.tobytes(), dtype=">u8").reshape(len(rows), 2)
    good = rows[ok]
    hi[good] = words[ok, 0]
    lo[good] = words[ok, 1]
    named[good] = False
    return hi, lo, named


def decode_id(hi: int, lo: int) -> str:
    """The text of a derived id from its 128 bits."""
    return f"ev-{hi:016x}{lo:016x}"


def decode_ids(hi: _U64, lo: _U64) -> list[str]:
    """The texts of derived ids from their 128 bits (:func:`decode_id` of each, in one hex
    conversion: about a quarter of the time of formatting them one by one)."""
    n = len(hi)
    words = np.empty((n, 2), dtype=">u8")
    words[:, 0] = hi
    words[:, 1] = lo
    text = words.tobytes().hex()
    return ["ev-" + text[i : i + 32] for i in range(0, 32 * n, 32)]


def typed_key(value: Any) -> Any:
    """A dict key that keeps ``1``, ``1.0`` and ``True`` apart (routing hashes them apart)."""
    if type(value) is str or value is None:
        return value
    if type(value) is tuple:
        return tuple(typed_key(v) for v in value)
    if isinstance(value, dict | list):
        return (type(value).__name__, msgspec.json.encode(value, order="sorted"))
    return (type(value).__name__, value)


class CodeValues(Protocol):
    """``vocab.values``: the value of each code."""

    def __getitem__(self, code: int, /) -> Any: ...

    def __len__(self) -> int: ...


class Vocab(Protocol):
    """What the detector asks of a vocabulary (:class:`ValueVocab`, or the packed one of
    :mod:`rayworker.packed_vocab`)."""

    numeric: bool

    @property
    def values(self) -> CodeValues: ...

    def __len__(self) -> int: ...

    def code(self, value: Any) -> int: ...

    def codes(self, values: Sequence[Any]) -> _I64: ...

    def codes_from(self, values: Callable[[], Iterable[Any]]) -> _I64: ...

    def code_if_known(self, value: Any) -> int | None: ...

    def retain(self, live: Iterable[int]) -> None: ...


def plain_classes(vocab: Vocab, codes: npt.NDArray[Any]) -> _I64:
    """Which coded values are equal in plain Python (``1 == 1.0 == True``), as one class
    number per code: a distinct rule counts values as a dict does, while the vocabulary keeps
    the types apart so that each value comes back exactly."""
    if not vocab.numeric:  # only strings and None: equal exactly when their codes are
        return codes.astype(np.int64)
    unique, inverse = np.unique(codes, return_inverse=True)
    classes: dict[Any, int] = {}
    values = vocab.values
    per_code = [classes.setdefault(values[c], len(classes)) for c in unique.tolist()]
    return np.array(per_code, dtype=np.int64)[inverse]


class _CodeTable(dict[Any, int]):
    """A vocabulary's dict: strings and None are their own keys; a lookup that misses (a new
    value, or any other type, which is stored under its :func:`typed_key`) asks the
    vocabulary, so that looking up many values is one C-level pass."""

    __slots__ = ("vocab",)

    def __init__(self, vocab: ValueVocab) -> None:
        super().__init__()
        self.vocab = vocab

    def __missing__(self, value: Any) -> int:
        return self.vocab.code(value)


NUMERIC_TYPES = frozenset({bool, int, float})
"""The types plain equality may mix (``1 == 1.0 == True``)."""


class ValueVocab:
    """Persistent small-integer codes for values; :meth:`retain` frees the unused ones."""

    __slots__ = ("_codes", "_free", "numeric", "values")

    def __init__(self) -> None:
        self._codes = _CodeTable(self)
        self._free: list[int] = []
        self.values: list[Any] = []
        # Whether a number or bool was ever coded (values that plain equality may mix).
        self.numeric = False

    def __len__(self) -> int:
        return len(self._codes)

    def code(self, value: Any) -> int:
        """The code of a value, assigned on first sight."""
        k = typed_key(value)
        c = self._codes.get(k)
        if c is None:
            if type(value) in NUMERIC_TYPES:
                self.numeric = True
            if self._free:
                c = self._free.pop()
                self.values[c] = value
            else:
                c = len(self.values)
                self.values.append(value)
            self._codes[k] = c
        return c

    def codes(self, values: Sequence[Any]) -> _I64:
        """The codes of many values (assigned on first sight)."""
        return self.codes_from(lambda: values)

    def codes_from(self, values: Callable[[], Iterable[Any]]) -> _I64:
        """The codes of the values a fresh iterator from ``values()`` yields."""
        try:
            # A string or None hits its own key; anything else misses into ``code``, which
            # looks it up (or stores it) under its typed key, never under itself.
            out = list(map(self._codes.__getitem__, values()))
        except TypeError:  # a list or dict value: start again, value by value
            out = [self.code(v) for v in values()]
        return np.array(out, dtype=np.int64)

    def code_if_known(self, value: Any) -> int | None:
        """The code of a value, or None when it has none."""
        return self._codes.get(typed_key(value))

    def retain(self, live: Iterable[int]) -> None:
        """Forget every value whose code is not in ``live``; its code is reused later."""
        keep = set(live)
        if len(keep) >= len(self._codes):
            return
        for k, c in list(self._codes.items()):
            if c not in keep:
                del self._codes[k]
                self.values[c] = None
                self._free.append(c)


class Block(NamedTuple):
    """One key's rows as plain lists."""

    code: int
    times: list[int]
    ids: list[str]
    tags: list[Any]
    hits: bytearray


class CountStore:
    """Retained events of many keys of one rule, sorted by (key, time, id).

    ``tagged`` stores add a tag per row: step bits (sequence rules) or value codes (distinct
    rules); count rules have no tags.
    """

    __slots__ = ("_next_name", "hits", "id_hi", "id_lo", "keys", "named", "names", "tags", "times")

    def __init__(self, *, tagged: bool = False) -> None:
        self.keys: _I64 = np.zeros(0, dtype=np.int64)
        self.times: _I64 = np.zeros(0, dtype=np.int64)
        # Event ids: derived ids as 128 bits; other ids are ``named``: their text is in
        # ``names`` under the number in ``id_lo``.
        self.id_hi: _U64 = np.zeros(0, dtype=np.uint64)
        self.id_lo: _U64 = np.zeros(0, dtype=np.uint64)
        self.named: npt.NDArray[np.bool_] = np.zeros(0, dtype=np.bool_)
        self.names: dict[int, str] = {}
        self._next_name = 0
        self.hits: npt.NDArray[np.uint8] = np.zeros(0, dtype=np.uint8)
        # Tags are step bits (at most 16 steps) or value codes (below 2**32): 4 bytes each.
        self.tags: npt.NDArray[np.uint32] | None = np.zeros(0, dtype=np.uint32) if tagged else None

    def __len__(self) -> int:
        return len(self.keys)

    def n_keys(self) -> int:
        """Number of keys holding events."""
        k = self.keys
        return int(np.count_nonzero(k[1:] != k[:-1])) + 1 if len(k) else 0

    def key_codes(self) -> _I64:
        """The distinct key codes held, ascending."""
        k = self.keys
        if not len(k):
            return k
        return k[np.r_[True, k[1:] != k[:-1]]]

    def ranges(self, codes: _I64) -> tuple[_I64, _I64]:
        """For each key code: the ``[start, end)`` rows holding it (empty when absent)."""
        start = np.searchsorted(self.keys, codes, side="left").astype(np.int64)
        end = np.searchsorted(self.keys, codes, side="right").astype(np.int64)
        return start, end

    def insert(
        self,
        keys: _I64,
        times: _I64,
        ids: IdWords,
        hits: npt.NDArray[np.uint8],
        tags: _I64 | None = None,
    ) -> None:
        """Add rows sorted by (key, time, id), each later than the rows of its key here."""
        if not len(keys):
            return
        at = np.searchsorted(self.keys, keys, side="right")
        hi, lo, named = ids.hi, ids.lo, ids.named
        if ids.text:
            lo = lo.copy()
            for j, text in zip(np.flatnonzero(named).tolist(), ids.text, strict=True):
                self.names[self._next_name] = text
                lo[j] = self._next_name
                self._next_name += 1
        # ``at`` ascends, so new row j lands at at[j] + j; old rows fill the other slots.
        new_at = at + np.arange(len(at))
        old = np.ones(len(self.keys) + len(at), dtype=np.bool_)
        old[new_at] = False
        self.keys = _merge(self.keys, keys, new_at, old)
        self.times = _merge(self.times, times, new_at, old)
        self.id_hi = _merge(self.id_hi, hi, new_at, old)
        self.id_lo = _merge(self.id_lo, lo, new_at, old)
        self.named = _merge(self.named, named, new_at, old)
        self.hits = _merge(self.hits, hits, new_at, old)
        if self.tags is not None:
            if tags is None:
                msg = "a tagged store needs the tags of the rows it is given"
                raise ValueError(msg)
            self.tags = _merge(self.tags, tags, new_at, old)

    def rows_of(self, code: int) -> Block:
        """One key's rows."""
        lo = int(np.searchsorted(self.keys, code, side="left"))
        hi = int(np.searchsorted(self.keys, code, side="right"))
        return self._block(code, lo, hi)

    def _block(self, code: int, lo: int, hi: int) -> Block:
        n = hi - lo
        id_lo = self.id_lo[lo:hi]
        ids = decode_ids(self.id_hi[lo:hi], id_lo)
        for j in np.flatnonzero(self.named[lo:hi]).tolist():
            ids[j] = self.names[int(id_lo[j])]
        return Block(
            code,
            self.times[lo:hi].tolist(),
            ids,
            self.tags[lo:hi].tolist() if self.tags is not None else [None] * n,
            bytearray(self.hits[lo:hi].tobytes()),
        )

    def blocks(self) -> list[Block]:
        """Every key's rows."""
        k = self.keys
        bounds = np.flatnonzero(np.r_[True, k[1:] != k[:-1], True]).tolist() if len(k) else []
        return [self._block(int(k[a]), a, b) for a, b in itertools.pairwise(bounds)]

    def take(self, codes: _I64) -> list[Block]:
        """Remove the given keys; return their rows (only keys that held some)."""
        if not len(self.keys) or not len(codes):
            return []
        start, end = self.ranges(np.unique(codes))
        held = end > start
        if not held.any():
            return []
        out = [
            self._block(int(self.keys[a]), a, b)
            for a, b in zip(start[held].tolist(), end[held].tolist(), strict=True)
        ]
        gone = np.zeros(len(self.keys), dtype=np.bool_)
        for block, a in zip(out, start[held].tolist(), strict=True):
            gone[a : a + len(block.times)] = True
        self._keep(~gone)
        return out

    def compact(
        self,
        wm: _I64,
        width: _I64,
        keep: _I64 | None,
        finished_tag: int | None = None,
        *,
        distinct: _I64 | None = None,
    ) -> None:
        """Evict what no future window can see; keep the latest ``keep`` settled rows per key.

        ``wm``, ``width`` and ``keep`` are per row (from the row's tenant); the same rule as
        :meth:`rayworker.windows.KeyWindow.compact` for a monotone rule: settled rows whose
        tag is exactly ``finished_tag`` go too. ``distinct`` (a distinct rule's value per
        row, as small integers): of the settled rows only the latest of each value is kept,
        for the ``keep`` values seen last.
        """
        n = len(self.keys)
        if not n:
            return
        t = self.times
        alive = t > wm - width
        settled = alive & (t < wm)
        drop = ~alive
        if finished_tag is not None and self.tags is not None:
            drop |= settled & (self.tags == finished_tag)
        if distinct is not None and keep is not None:
            rows = np.flatnonzero(settled & ~drop)
            if len(rows):
                drop[self._distinct_surplus(rows, distinct[rows], keep)] = True
        elif keep is not None and settled.any():
            settled &= ~drop
            k = self.keys
            first = np.r_[True, k[1:] != k[:-1]]
            starts = np.flatnonzero(first)
            key_of = np.cumsum(first) - 1
            flags: _I64 = settled.astype(np.int64)
            per_key = np.add.reduceat(flags, starts)
            csum: _I64 = np.cumsum(flags)
            before: _I64 = csum[starts] - flags[starts]
            rank = csum - 1 - before[key_of]
            drop |= settled & (rank < per_key[key_of] - keep)
        if drop.any():
            self._keep(~drop)

    def _distinct_surplus(
        self, rows: npt.NDArray[np.intp], tags: npt.NDArray[Any], keep: _I64
    ) -> npt.NDArray[np.intp]:
        """Of settled ``rows`` (ascending) with values ``tags``, those a distinct rule no
        longer needs: every occurrence of a value but its latest, and values beyond the
        ``keep`` latest ones."""
        keys = self.keys[rows]
        order = np.lexsort((rows, tags, keys))
        k, g, r = keys[order], tags[order], rows[order]
        latest = np.r_[(k[1:] != k[:-1]) | (g[1:] != g[:-1]), True]
        older = r[~latest]
        # The latest occurrences, by key and then newest first: the first ``keep`` stay.
        lk, lr = k[latest], r[latest]
        by_recency = np.lexsort((-lr, lk))
        lk, lr = lk[by_recency], lr[by_recency]
        first = np.flatnonzero(np.r_[True, lk[1:] != lk[:-1]])
        rank = np.arange(len(lk)) - np.repeat(first, np.diff(np.r_[first, len(lk)]))
        return np.concatenate([older, lr[rank >= keep[lr]]])

    def _keep(self, mask: npt.NDArray[np.bool_]) -> None:
        if self.names:
            for number in self.id_lo[~mask & self.named].tolist():
                del self.names[number]
        self.keys = self.keys[mask]
        self.times = self.times[mask]
        self.id_hi = self.id_hi[mask]
        self.id_lo = self.id_lo[mask]
        self.named = self.named[mask]
        self.hits = self.hits[mask]
        if self.tags is not None:
            self.tags = self.tags[mask]


_A = TypeVar("_A", bound=np.generic)


def _merge(
    current: npt.NDArray[_A],
    new: npt.NDArray[Any],
    new_at: npt.NDArray[np.intp],
    old: npt.NDArray[np.bool_],
) -> npt.NDArray[_A]:
    out = np.empty(len(old), dtype=current.dtype)
    out[new_at] = new
    out[old] = current
    return out
