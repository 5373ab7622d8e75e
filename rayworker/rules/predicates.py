"""Filter evaluation: vectorised over an event batch, and scalar over one event dict.

Semantics of a field condition ``{field: <dotted path>, <op>: ..., ignore_case: false}``:

* The value is looked up by dotted path in the camelCase event (``sessionContext.ipAddress``).
  A path that is absent, or whose value is ``null``, or that runs through a non-object, is
  **missing**. A missing value makes every operator false except ``exists: false``.
* ``equals: v`` and ``in: [v, ...]`` use JSON equality: strings equal strings, numbers equal
  numbers (``1 == 1.0``), booleans equal booleans, and a boolean never equals ``1`` or ``0``.
  Objects and arrays never equal anything.
* ``contains``, ``startswith``, ``endswith``: the value must be a string (anything else is
  false).
* ``regex``: :func:`re.search` on string values (anything else is false); the pattern is
  compiled when the rules load.
* ``exists: true``: present and not null; ``exists: false``: missing or null.
* ``gt``, ``gte``, ``lt``, ``lte``, ``eq``, ``neq``: the value must be a number (int or float,
  never a bool, never NaN) and is compared as a float; anything else is false, ``neq``
  included.
* ``ignore_case: true`` makes ``equals``, ``in``, ``contains``, ``startswith`` and ``endswith``
  compare :meth:`str.casefold`-ed strings, and compiles ``regex`` with :data:`re.IGNORECASE`.
* Several operators in one condition must all hold. ``all`` holds when every sub-filter holds,
  ``any`` when one does, ``not`` when its sub-filter does not. No filter matches every event.

:meth:`Predicate.mask` evaluates a whole batch: string and equality operators run once per
distinct value of the column (its vocabulary) and are spread to events with :func:`numpy.take`;
numeric operators run on the float column. :meth:`Predicate.matches` is the scalar reference
on one event dict, used by tests, oracles and backtests; a property test checks both agree.
"""

from __future__ import annotations

import math
import operator
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from rayworker.rules.model import AllOf, AnyOf, FieldCondition, Filter, NotOf

if TYPE_CHECKING:
    from rayworker.rules.model import SequenceRule

__all__ = [
    "ColumnView",
    "Predicate",
    "compile_filter",
    "compile_steps",
    "lookup",
]


class ColumnView(Protocol):
    """What an event batch offers to predicates (implemented by ``rayworker.events.EventBatch``)."""

    def __len__(self) -> int:
        """The number of events."""
        ...

    def codes(self, path: str) -> tuple[npt.NDArray[np.int32], Sequence[object]]:
        """The column factorised: ``vocab[codes[i]]`` is event i's value (None = missing)."""
        ...

    def numbers(self, path: str) -> npt.NDArray[np.float64]:
        """The column as floats; NaN when missing or not an int/float (bools are NaN)."""
        ...


def lookup(event: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path of a camelCase event dict, or None when missing."""
    value: Any = event
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
        if value is None:
            return None
    return value


class Predicate(ABC):
    """A compiled filter."""

    @abstractmethod
    def mask(self, view: ColumnView) -> npt.NDArray[np.bool_]:
        """One bool per event of the batch: does the event match."""

    @abstractmethod
    def matches(self, event: Mapping[str, Any]) -> bool:
        """Whether one camelCase event dict matches (the scalar reference)."""


class _Always(Predicate):
    def mask(self, view: ColumnView) -> npt.NDArray[np.bool_]:
        return np.ones(len(view), dtype=np.bool_)

    def matches(self, event: Mapping[str, Any]) -> bool:
        return True


# --------------------------------------------------------------------------- scalar tests

_ValueTest = Callable[[object], bool]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _json_equal(a: object, b: object) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return a == b
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return False


def _fold(value: object) -> object:
    return value.casefold() if isinstance(value, str) else value


def _value_tests(cond: FieldCondition) -> list[_ValueTest]:
    """Tests of a (present or missing) value for the non-numeric operators of ``cond``."""
    tests: list[_ValueTest] = []
    fold = cond.ignore_case
    prep: Callable[[object], object] = _fold if fold else (lambda v: v)

    if cond.equals is not None:
        target = prep(cond.equals)
        tests.append(lambda v: _json_equal(prep(v), target))
    if cond.in_ is not None:
        targets = [prep(t) for t in cond.in_]
        tests.append(lambda v: any(_json_equal(prep(v), t) for t in targets))
    for op, method in (
        (cond.contains, str.__contains__),
        (cond.startswith, str.startswith),
        (cond.endswith, str.endswith),
    ):
        if op is not None:
            needle = op.casefold() if fold else op

            def test(
                v: object, needle: str = needle, method: Callable[[str, str], bool] = method
            ) -> bool:
                return isinstance(v, str) and method(v.casefold() if fold else v, needle)

            tests.append(test)
    if cond.regex is not None:
        search = re.compile(cond.regex, re.IGNORECASE if fold else 0).search
        tests.append(lambda v: isinstance(v, str) and search(v) is not None)
    if cond.exists is not None:
        want = cond.exists
        tests.append(lambda v: (v is not None) is want)
    return tests


_NUMERIC_OPS: tuple[tuple[str, Callable[[Any, Any], Any]], ...] = (
    ("gt", operator.gt),
    ("gte", operator.ge),
    ("lt", operator.lt),
    ("lte", operator.le),
    ("eq", operator.eq),
    ("neq", operator.ne),
)


def _as_float(value: object) -> float:
    """The float the batch's ``numbers()`` column holds for a value (NaN if not a number)."""
    if not _is_number(value):
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]  # _is_number checked int | float
    except OverflowError:
        return math.nan


_MEMO_LIMIT = 4096  # verdicts a field predicate remembers


def _only_strings(values: Sequence[Any]) -> bool:
    return set(map(type, values)) <= {str}


class _FieldPredicate(Predicate):
    def __init__(self, cond: FieldCondition) -> None:
        self.path = cond.field
        self.value_tests = _value_tests(cond)
        self.numeric: list[tuple[Callable[[Any, Any], Any], float]] = [
            (fn, float(getattr(cond, name)))
            for name, fn in _NUMERIC_OPS
            if getattr(cond, name) is not None
        ]
        self._memo: dict[str, bool] = {}

    def _value_ok(self, value: object) -> bool:
        return all(test(value) for test in self.value_tests)

    def _table(self, vocab: Sequence[Any]) -> npt.NDArray[np.bool_]:
        """Whether each value of a batch's vocabulary passes the value tests.

        Batches repeat the same few values (tenants, actions, outcomes), so verdicts on
        strings are remembered: a string's verdict depends on nothing but the string. The
        memo is emptied when it fills, so a column of ever-new values costs no memory."""
        memo = self._memo
        verdicts: list[bool | None] = (
            list(map(memo.get, vocab)) if _only_strings(vocab) else [None] * len(vocab)
        )
        if None in verdicts:
            if len(memo) + len(vocab) > _MEMO_LIMIT:
                memo.clear()
            for i, value in enumerate(vocab):
                if verdicts[i] is None:
                    verdicts[i] = ok = self._value_ok(value)
                    if type(value) is str:
                        memo[value] = ok
        return np.array(verdicts, dtype=np.bool_)

    def _number_ok(self, value: object) -> bool:
        x = _as_float(value)
        return not math.isnan(x) and all(fn(x, t) for fn, t in self.numeric)

    def matches(self, event: Mapping[str, Any]) -> bool:
        value = lookup(event, self.path)
        if self.value_tests and not self._value_ok(value):
            return False
        return not self.numeric or self._number_ok(value)

    def mask(self, view: ColumnView) -> npt.NDArray[np.bool_]:
        n = len(view)
        out = np.ones(n, dtype=np.bool_)
        if self.value_tests:
            codes, vocab = view.codes(self.path)
            out &= np.take(self._table(vocab), codes)
        if self.numeric:
            x = view.numbers(self.path)
            ok = ~np.isnan(x)
            for fn, t in self.numeric:
                ok &= fn(x, t)
            out &= ok
        return out


class _All(Predicate):
    def __init__(self, parts: Sequence[Predicate]) -> None:
        self.parts = tuple(parts)

    def mask(self, view: ColumnView) -> npt.NDArray[np.bool_]:
        out = self.parts[0].mask(view)
        for part in self.parts[1:]:
            if not out.any():
                break
            out = out & part.mask(view)
        return out

    def matches(self, event: Mapping[str, Any]) -> bool:
        return all(p.matches(event) for p in self.parts)


class _Any(Predicate):
    def __init__(self, parts: Sequence[Predicate]) -> None:
        self.parts = tuple(parts)

    def mask(self, view: ColumnView) -> npt.NDArray[np.bool_]:
        out = self.parts[0].mask(view)
        for part in self.parts[1:]:
            if out.all():
                break
            out = out | part.mask(view)
        return out

    def matches(self, event: Mapping[str, Any]) -> bool:
        return any(p.matches(event) for p in self.parts)


class _Not(Predicate):
    def __init__(self, inner: Predicate) -> None:
        self.inner = inner

    def mask(self, view: ColumnView) -> npt.NDArray[np.bool_]:
        return ~self.inner.mask(view)

    def matches(self, event: Mapping[str, Any]) -> bool:
        return not self.inner.matches(event)


def compile_filter(f: Filter | None) -> Predicate:
    """Compile a filter (None: match every event) into a :class:`Predicate`."""
    if f is None:
        return _Always()
    if isinstance(f, FieldCondition):
        return _FieldPredicate(f)
    if isinstance(f, AllOf):
        return _All([compile_filter(c) for c in f.all_])
    if isinstance(f, AnyOf):
        return _Any([compile_filter(c) for c in f.any_])
    if isinstance(f, NotOf):
        return _Not(compile_filter(f.not_))
    msg = f"not a filter: {f!r}"
    raise TypeError(msg)


def compile_steps(rule: SequenceRule) -> tuple[Predicate, ...]:
    """One predicate per step of a sequence rule, each including the rule-level filter."""
    base = compile_filter(rule.filter)
    steps = [compile_filter(step.filter) for step in rule.steps]
    if rule.filter is None:
        return tuple(steps)
    return tuple(_All([base, step]) for step in steps)
