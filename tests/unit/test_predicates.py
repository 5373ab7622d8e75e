"""Filter predicates: documented operator semantics, and vectorised/scalar agreement."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from rayworker.rules import Filter, compile_filter, compile_steps, parse_rules
from rayworker.rules.predicates import ColumnView, lookup

if TYPE_CHECKING:
    from collections.abc import Sequence

FILTER: TypeAdapter[Filter] = TypeAdapter(Filter)


class ListView:
    """A ColumnView over a list of event dicts, factorised like EventBatch (types kept apart)."""

    def __init__(self, events: Sequence[dict[str, Any]]) -> None:
        self.events = list(events)
        self.code_calls = 0

    def __len__(self) -> int:
        return len(self.events)

    def codes(self, path: str) -> tuple[npt.NDArray[np.int32], Sequence[object]]:
        self.code_calls += 1
        table: dict[tuple[str, Any], int] = {}
        vocab: list[object] = []
        codes = []
        for event in self.events:
            value = lookup(event, path)
            hashable = (
                json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value
            )
            key = (type(value).__name__, hashable)
            if key not in table:
                table[key] = len(vocab)
                vocab.append(value)
            codes.append(table[key])
        return np.array(codes, dtype=np.int32), vocab

    def numbers(self, path: str) -> npt.NDArray[np.float64]:
        out = []
        for event in self.events:
            v = lookup(event, path)
            ok = isinstance(v, int | float) and not isinstance(v, bool)
            out.append(float(v) if ok else math.nan)
        return np.array(out, dtype=np.float64)


def check(filter_data: dict[str, Any], events: list[dict[str, Any]]) -> list[bool]:
    """Each event's match, asserting mask() and matches() agree."""
    predicate = compile_filter(FILTER.validate_python(filter_data))
    scalar = [predicate.matches(e) for e in events]
    vector = predicate.mask(ListView(events)).tolist()
    assert scalar == vector
    return scalar


def one(filter_data: dict[str, Any], value: Any) -> bool:
    """Whether an event with x = value (a missing value for ...) matches."""
    event: dict[str, Any] = {} if value is ... else {"x": value}
    return check(filter_data, [event])[0]


def test_list_view_is_a_column_view() -> None:
    """The in-test view satisfies the ColumnView protocol the predicates need."""
    view: ColumnView = ListView([])
    assert len(view) == 0


SEMANTICS: list[tuple[str, dict[str, Any], Any, bool]] = [
    ("equals str", {"equals": "a"}, "a", True),
    ("equals other str", {"equals": "a"}, "A", False),
    ("equals ignore_case", {"equals": "a", "ignore_case": True}, "A", True),
    ("equals int float", {"equals": 1}, 1.0, True),
    ("bool never equals 1", {"equals": 1}, True, False),
    ("1 never equals true", {"equals": True}, 1, False),
    ("bool equals bool", {"equals": False}, False, True),
    ("0 never equals false", {"equals": False}, 0, False),
    ("str never equals number", {"equals": "1"}, 1, False),
    ("equals missing", {"equals": "a"}, ..., False),
    ("equals null", {"equals": "a"}, None, False),
    ("equals object", {"equals": "a"}, {"a": 1}, False),
    ("in", {"in": ["a", 2]}, 2, True),
    ("in ignore_case", {"in": ["ABC"], "ignore_case": True}, "abc", True),
    ("in bool vs int", {"in": [1, 0]}, True, False),
    ("in missing", {"in": ["a"]}, ..., False),
    ("contains", {"contains": "ell"}, "hello", True),
    ("contains case", {"contains": "ELL"}, "hello", False),
    ("contains ignore_case", {"contains": "ELL", "ignore_case": True}, "hello", True),
    ("contains non-string", {"contains": "1"}, 12, False),
    ("contains list", {"contains": "a"}, ["a"], False),
    ("startswith", {"startswith": "data."}, "data.read", True),
    ("startswith no", {"startswith": "data."}, "metadata.read", False),
    ("startswith ignore_case", {"startswith": "DATA.", "ignore_case": True}, "data.x", True),
    ("endswith", {"endswith": ".read"}, "fhir.patient.read", True),
    ("endswith missing", {"endswith": ".read"}, ..., False),
    ("regex search", {"regex": "b+c"}, "abbbcd", True),
    ("regex no match", {"regex": "^b"}, "abc", False),
    ("regex ignore_case", {"regex": "^ABC$", "ignore_case": True}, "abc", True),
    ("regex non-string", {"regex": "1"}, 1, False),
    ("exists true", {"exists": True}, "", True),
    ("exists true missing", {"exists": True}, ..., False),
    ("exists true null", {"exists": True}, None, False),
    ("exists false missing", {"exists": False}, ..., True),
    ("exists false null", {"exists": False}, None, True),
    ("exists false present", {"exists": False}, 0, False),
    ("gt", {"gt": 10}, 11, True),
    ("gt equal", {"gt": 10}, 10, False),
    ("gte float", {"gte": 10}, 10.0, True),
    ("lt", {"lt": 1.5}, 1, True),
    ("lte", {"lte": 1}, 2, False),
    ("eq", {"eq": 3}, 3.0, True),
    ("neq", {"neq": 3}, 4, True),
    ("neq equal", {"neq": 3}, 3, False),
    ("neq missing is false", {"neq": 3}, ..., False),
    ("neq null is false", {"neq": 3}, None, False),
    ("neq string is false", {"neq": 3}, "4", False),
    ("neq bool is false", {"neq": 3}, True, False),
    ("gt bool is false", {"gt": 0}, True, False),
    ("gt numeric string is false", {"gt": 0}, "5", False),
    ("numeric range", {"gte": 1, "lt": 5}, 3, True),
    ("numeric range out", {"gte": 1, "lt": 5}, 5, False),
    ("string and numeric ops both must hold", {"equals": 5, "gt": 4}, 5, True),
    ("several ops all hold", {"startswith": "a", "endswith": "z"}, "abz", True),
    ("several ops one fails", {"startswith": "a", "endswith": "z"}, "aby", False),
]


@pytest.mark.parametrize(
    ("case", "ops", "value", "expected"), SEMANTICS, ids=[c[0] for c in SEMANTICS]
)
def test_operator_semantics(case: str, ops: dict[str, Any], value: Any, expected: bool) -> None:
    """Each operator follows the documented semantics, in mask() and matches() alike."""
    assert one({"field": "x", **ops}, value) is expected


def test_nested_paths_and_missing_parents() -> None:
    """A dotted path reads nested objects; a missing or non-object parent is missing."""
    f = {"field": "sessionContext.ipAddress", "equals": "10.0.0.1"}
    events: list[dict[str, Any]] = [
        {"sessionContext": {"ipAddress": "10.0.0.1"}},
        {"sessionContext": {"ipAddress": "10.0.0.2"}},
        {"sessionContext": "10.0.0.1"},
        {},
    ]
    assert check(f, events) == [True, False, False, False]
    missing = {"field": "sessionContext.ipAddress", "exists": False}
    assert check(missing, events) == [False, False, True, True]


def test_combinators() -> None:
    """all needs every part, any one part, not negates; no filter matches everything."""
    events = [{"a": 1, "b": 1}, {"a": 1}, {"b": 1}, {}]
    a = {"field": "a", "exists": True}
    b = {"field": "b", "exists": True}
    assert check({"all": [a, b]}, events) == [True, False, False, False]
    assert check({"any": [a, b]}, events) == [True, True, True, False]
    assert check({"not": a}, events) == [False, False, True, True]
    always = compile_filter(None)
    assert always.mask(ListView(events)).tolist() == [True] * 4
    assert always.matches({})


def test_empty_batch() -> None:
    """Every predicate gives an empty mask for an empty batch."""
    f = {"all": [{"field": "a", "equals": "x"}, {"field": "n", "gt": 1}]}
    assert compile_filter(FILTER.validate_python(f)).mask(ListView([])).shape == (0,)


def test_mask_reads_each_column_once_per_operator() -> None:
    """String operators run on the column's vocabulary, fetched once, not per event."""
    view = ListView([{"a": "x"}] * 1000)
    predicate = compile_filter(FILTER.validate_python({"field": "a", "in": ["x", "y"]}))
    assert predicate.mask(view).all()
    assert view.code_calls == 1


def test_compile_steps_include_the_rule_filter() -> None:
    """Each step of a sequence also requires the rule-level filter."""
    rule = parse_rules(
        {
            "rules": [
                {
                    "id": "seq",
                    "kind": "sequence",
                    "title": "t",
                    "description": "d",
                    "severity": "LOW",
                    "window": "1m",
                    "filter": {"field": "org", "equals": "a"},
                    "steps": [
                        {"name": "one", "filter": {"field": "s", "equals": 1}},
                        {"name": "two", "filter": {"field": "s", "equals": 2}},
                    ],
                }
            ]
        },
        origin="x",
    ).rules[0]
    steps = compile_steps(rule)  # type: ignore[arg-type]
    assert steps[0].matches({"org": "a", "s": 1})
    assert not steps[0].matches({"org": "b", "s": 1})
    assert steps[1].mask(ListView([{"org": "a", "s": 2}, {"s": 2}])).tolist() == [True, False]


# --------------------------------------------------------------------------- property test

FIELDS = ("a", "b", "n.x")
values = st.one_of(
    st.sampled_from(["", "x", "X", "xy", "yx", "ab", "AB", "a.b", "1"]),
    st.integers(min_value=-3, max_value=3),
    st.sampled_from([0.5, 1.0, -1.5, 2.0]),
    st.booleans(),
    st.none(),
    st.just({"k": 1}),
    st.just(["x"]),
)
scalars = st.one_of(
    st.sampled_from(["x", "X", "ab", "1", ""]),
    st.integers(min_value=-2, max_value=2),
    st.sampled_from([1.0, 0.5]),
    st.booleans(),
)
numbers = st.one_of(st.integers(min_value=-2, max_value=2), st.sampled_from([0.5, 1.0]))
texts = st.sampled_from(["x", "X", "a", "b", ""])
operators = st.fixed_dictionaries(
    {},
    optional={
        "equals": scalars,
        "in": st.lists(scalars, min_size=1, max_size=3),
        "contains": texts,
        "startswith": texts,
        "endswith": texts,
        "regex": st.sampled_from(["x", "^a", "b$", "[xy]+", "1"]),
        "exists": st.booleans(),
        "gt": numbers,
        "gte": numbers,
        "lt": numbers,
        "lte": numbers,
        "eq": numbers,
        "neq": numbers,
        "ignore_case": st.booleans(),
    },
).filter(lambda d: set(d) - {"ignore_case"})
leaves = st.builds(lambda f, ops: {"field": f, **ops}, st.sampled_from(FIELDS), operators)
filters = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"all": xs}),
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"any": xs}),
        inner.map(lambda x: {"not": x}),
    ),
    max_leaves=6,
)


events = st.fixed_dictionaries(
    {},
    optional={
        "a": values,
        "b": values,
        "n": st.one_of(st.fixed_dictionaries({}, optional={"x": values}), values),
    },
)


@settings(max_examples=300, deadline=None)
@given(filters, st.lists(events, max_size=12))
def test_mask_agrees_with_matches(filter_data: dict[str, Any], batch: list[dict[str, Any]]) -> None:
    """For random filters and events, the vectorised mask equals the scalar matches."""
    check(filter_data, batch)


@settings(max_examples=100, deadline=None)
@given(filters, st.lists(st.lists(events, max_size=8), min_size=2, max_size=4))
def test_one_predicate_over_many_batches_agrees_with_matches(
    filter_data: dict[str, Any], batches: list[list[dict[str, Any]]]
) -> None:
    """A predicate reused batch after batch (remembering verdicts) still equals matches."""
    predicate = compile_filter(FILTER.validate_python(filter_data))
    for batch in batches:
        expected = [predicate.matches(event) for event in batch]
        assert predicate.mask(ListView(batch)).tolist() == expected


def test_remembered_verdicts_are_bounded() -> None:
    """A column of ever-new strings never grows a predicate's memory past its limit."""
    predicate = compile_filter(FILTER.validate_python({"field": "a", "contains": "7"}))
    for start in range(0, 20_000, 1_000):
        batch = [{"a": f"v{i}"} for i in range(start, start + 1_000)]
        assert predicate.mask(ListView(batch)).tolist() == ["7" in e["a"] for e in batch]
    memo = predicate._memo  # type: ignore[attr-defined]
    assert 0 < len(memo) <= 4096
