"""The packed vocabulary gives codes exactly as the dict vocabulary does, in less memory."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayworker import packed_vocab
from rayworker.columnar import ValueVocab
from rayworker.packed_vocab import PackedVocab

TEXT = st.text(alphabet=st.sampled_from(["a", "b", "é", "😀", "\ud800", "-", "0"]), max_size=4)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("codes"), st.lists(TEXT | st.none(), max_size=12)),
        st.tuples(st.just("retain"), st.lists(st.integers(0, 30), max_size=8)),
    ),
    max_size=12,
)
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextmanager
def _colliding() -> Iterator[None]:
    saved = packed_vocab._string_hash
    packed_vocab._string_hash = lambda s: len(s) % 2
    try:
        yield
    finally:
        packed_vocab._string_hash = saved


@pytest.fixture
def colliding_hash() -> Iterator[None]:
    """Every string hashes to one of two values, so nearly every lookup meets a collision."""
    with _colliding():
        yield


def _check_same_as_dict_vocab(steps: list[tuple[str, list[object]]]) -> None:
    packed, plain = PackedVocab(), ValueVocab()
    # Packed code -> plain code: the two must pair their codes one to one while live.
    pairs: dict[int, int] = {}
    for op, arg in steps:
        if op == "codes":
            got = packed.codes(arg).tolist()
            want = plain.codes(arg).tolist()
            for value, p, w in zip(arg, got, want, strict=True):
                assert pairs.setdefault(p, w) == w
                assert packed.values[p] == value
            assert len(set(got)) == len(set(want))
        else:
            live = [c for c in arg if c in pairs]
            packed.retain(live)
            plain.retain([pairs[c] for c in live])
            pairs = {c: pairs[c] for c in live}
        assert len(packed) == len(plain)
    for p, w in pairs.items():
        assert packed.values[p] == plain.values[w]
        assert packed.code(plain.values[w]) == p


@PROPS
@given(STEPS)
def test_codes_pair_one_to_one_with_the_dict_vocabulary(
    steps: list[tuple[str, list[object]]],
) -> None:
    """Through any codes/retain sequence, codes pair one to one with the dict vocabulary's."""
    _check_same_as_dict_vocab(steps)


@PROPS
@given(STEPS)
def test_hash_collisions_never_merge_different_strings(
    steps: list[tuple[str, list[object]]],
) -> None:
    """With a hash that collides almost always, codes are still exact (bytes decide)."""
    with _colliding():
        _check_same_as_dict_vocab(steps)


def test_a_collided_string_keeps_its_code_after_its_rival_is_forgotten(
    colliding_hash: None,
) -> None:
    """A string coded through the collision dict keeps its code after its rival is freed."""
    vocab = PackedVocab()
    first, second = vocab.codes(["ab", "cd"]).tolist()
    assert first != second
    vocab.retain([second])
    assert vocab.code("cd") == second
    assert vocab.code_if_known("ab") is None
    again = vocab.codes(["cd", "ab", "cd"]).tolist()
    assert again[0] == again[2] == second != again[1]
    assert vocab.values[again[1]] == "ab"


def test_forgetting_most_strings_compacts_the_text() -> None:
    """Freed strings' bytes are reclaimed; the survivors keep their codes and values."""
    vocab = PackedVocab()
    codes = vocab.codes([f"principal-{i:05d}" for i in range(1000)]).tolist()
    full = len(vocab._blob)
    vocab.retain(codes[:10])
    assert len(vocab._blob) < full // 10
    assert [vocab.values[c] for c in codes[:10]] == [f"principal-{i:05d}" for i in range(10)]
    assert vocab.codes([f"principal-{i:05d}" for i in range(10)]).tolist() == codes[:10]


def _held_bytes(make: type[PackedVocab] | type[ValueVocab], n: int) -> int:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    vocab = make()
    for start in range(0, n, 1000):
        # Fresh string objects, as a decoder hands them over.
        vocab.codes([f"u-{i:05d}" for i in range(start, start + 1000)])
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(vocab) == n
    return held


def test_packed_strings_take_under_half_the_memory_of_the_dict() -> None:
    """10k principal ids cost the packed vocabulary less than half what the dict holds."""
    packed = _held_bytes(PackedVocab, 10_000)
    plain = _held_bytes(ValueVocab, 10_000)
    assert packed * 2 < plain, (packed, plain)
