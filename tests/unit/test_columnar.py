"""The columnar state of rules and the vectorised watermarks equal their per-key twins."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xxhash import xxh3_128_digest

from rayworker import detect as detect_module
from rayworker.columnar import (
    CountStore,
    ValueVocab,
    Vocab,
    decode_id,
    decode_ids,
    digest_ids,
    encode_ids,
    plain_classes,
)
from rayworker.events import EventBatch, EventDecoder, derive_event_id
from rayworker.packed_vocab import PackedVocab
from rayworker.windows import KeyWindow
from tests.unit.test_detect_properties import SMALL_RULES, comparable, run, streams

VOCABS = pytest.mark.parametrize("make_vocab", [ValueVocab, PackedVocab])
"""The vocabulary contract tests run against the dict vocabulary and the packed one."""

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _batch(tenants: list[str], times: list[int]) -> EventBatch:
    events = [_Event(t) for t in tenants]
    return EventBatch(events, [b"{}"] * len(tenants), np.array(times, dtype=np.int64))


class _Event:
    """The one attribute the watermark code reads from a decoded event."""

    def __init__(self, tenant: str) -> None:
        self.organization_id = tenant


@FAST
@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(0, 200), st.booleans()),
        min_size=1,
        max_size=60,
    ),
    st.dictionaries(st.sampled_from("abcd"), st.integers(0, 200)),
    st.integers(0, 50),
)
def test_vectorised_watermarks_equal_the_loop(
    rows: list[tuple[str, int, bool]], prior: dict[str, int], lateness: int
) -> None:
    """Watermarks, late flags and max-seen updates equal the per-event loop's."""
    tenants = [r[0] for r in rows]
    batch = _batch(tenants, [r[1] for r in rows])
    accepted = np.array([r[2] for r in rows], dtype=np.bool_)
    seen_vec = dict(prior)
    seen_loop = dict(prior)
    wm_v, late_v = detect_module._advance_watermarks(seen_vec, lateness, batch, accepted)
    wm_l, late_l = detect_module._advance_watermarks_loop(
        seen_loop, lateness, tenants, batch.ts, accepted
    )
    assert wm_v.tolist() == wm_l.tolist()
    assert late_v.tolist() == late_l.tolist()
    assert seen_vec == seen_loop


@FAST
@given(
    st.dictionaries(
        st.integers(0, 5),
        st.lists(st.integers(0, 100), min_size=1, max_size=15, unique=True),
        min_size=1,
    ),
    st.integers(0, 120),
    st.integers(1, 40),
    st.integers(1, 6),
)
def test_store_compaction_equals_key_windows(
    keys: dict[int, list[int]], wm: int, width: int, keep: int
) -> None:
    """Compacting the store keeps exactly what each key's window keeps."""
    store = CountStore()
    expected: dict[int, list[int]] = {}
    codes: list[int] = []
    times: list[int] = []
    ids: list[str] = []
    for code in sorted(keys):
        ts = sorted(keys[code])
        window = KeyWindow()
        for t in ts:
            window.insert(t, f"e{code}-{t}")
        window.compact(wm, width, keep, distinct=False)
        if window.times:
            expected[code] = window.times
        codes += [code] * len(ts)
        times += ts
        ids += [f"e{code}-{t}" for t in ts]
    store.insert(
        np.array(codes, dtype=np.int64),
        np.array(times, dtype=np.int64),
        encode_ids(ids),
        np.zeros(len(codes), dtype=np.uint8),
    )
    n = len(store)
    store.compact(np.full(n, wm), np.full(n, width), np.full(n, keep))
    got = {block.code: block.times for block in store.blocks()}
    assert got == expected
    assert store.n_keys() == len(expected)


@VOCABS
def test_vocab_keeps_typed_values_apart_and_reuses_freed_codes(
    make_vocab: type[Vocab],
) -> None:
    """1, 1.0 and True get different codes; a retained code survives, a freed one is reused."""
    vocab = make_vocab()
    codes = vocab.codes([1, 1.0, True, "1", None, 1]).tolist()
    assert len(set(codes[:5])) == 5
    assert codes[5] == codes[0]
    vocab.retain([codes[3]])
    assert len(vocab) == 1
    assert vocab.code("1") == codes[3]
    fresh = vocab.code("new")
    assert fresh in codes[:5]
    assert vocab.values[fresh] == "new"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.lists(st.integers(0, 70), max_size=6))
def test_forgetting_codes_after_every_batch_changes_nothing(
    lines: list[bytes], cuts: list[int]
) -> None:
    """Freeing and reusing group-value codes after every batch gives the same alerts."""
    saved = detect_module._VOCAB_GC_MIN
    detect_module._VOCAB_GC_MIN = 0
    try:
        forgetful = comparable(run(lines, SMALL_RULES, cuts))
    finally:
        detect_module._VOCAB_GC_MIN = saved
    assert forgetful == comparable(run(lines, SMALL_RULES, cuts))


def test_snapshot_of_columnar_keys_is_plain_data() -> None:
    """Keys held in the columnar store appear in the snapshot as plain lists."""
    lines = [
        b'{"timestamp":"2026-01-05T21:58:0' + str(s).encode() + b'Z","action":"data.read",'
        b'"status":"failure","organizationId":"org-a","principalId":"u1"}'
        for s in range(5)
    ]
    det = detect_module.Detector(SMALL_RULES)
    saved = detect_module._VECTOR_MIN
    detect_module._VECTOR_MIN = 1
    try:
        det.process_lines(lines)
    finally:
        detect_module._VECTOR_MIN = saved
    rules: dict[str, Any] = det.snapshot()["rules"]
    (key, window) = rules["fails"]["keys"][0]
    assert key == ["org-a", "u1"]
    assert window[0] == sorted(window[0])
    assert all(type(t) is int for t in window[0])
    assert all(type(i) is str for i in window[1])


@FAST
@given(
    st.lists(
        st.one_of(
            st.binary(min_size=1, max_size=40).map(lambda b: f"ev-{int.from_bytes(b):032x}"[:35]),
            st.text(max_size=40),
            st.sampled_from(["ev-" + "f" * 32, "ev-" + "0" * 32, "ev-" + "A" * 32, "é" * 35]),
        ),
        max_size=20,
    )
)
def test_store_gives_back_every_id_and_orders_derived_ids_as_text(ids: list[str]) -> None:
    """Ids come back unchanged, and derived ids compare as numbers exactly as their text."""
    store = CountStore()
    n = len(ids)
    store.insert(
        np.zeros(n, dtype=np.int64),
        np.arange(n, dtype=np.int64),
        encode_ids(ids),
        np.zeros(n, dtype=np.uint8),
    )
    assert store.rows_of(0).ids == ids
    derived = [(i, s) for i, s in enumerate(ids) if not store.named[i]]
    by_number = sorted(derived, key=lambda p: (int(store.id_hi[p[0]]), int(store.id_lo[p[0]])))
    assert [s for _, s in by_number] == sorted(s for _, s in derived)
    store.compact(np.full(n, n), np.full(n, 1), None)
    assert not store.names


@FAST
@given(st.lists(st.binary(max_size=50), max_size=10))
def test_digested_ids_equal_the_derived_ids(raws: list[bytes]) -> None:
    """Ids taken from raw-byte digests equal the parsed text of the derived ids."""
    from_text = encode_ids([derive_event_id(r) for r in raws])
    from_digest = digest_ids(b"".join(xxh3_128_digest(r.strip()) for r in raws))
    assert from_text.hi.tolist() == from_digest.hi.tolist()
    assert from_text.lo.tolist() == from_digest.lo.tolist()
    assert not from_text.named.any()


@FAST
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)), max_size=20))
def test_ids_decoded_together_equal_ids_decoded_one_by_one(words: list[tuple[int, int]]) -> None:
    """decode_ids gives decode_id's text for every row (leading zeros, extremes, none)."""
    hi = np.array([w[0] for w in words], dtype=np.uint64)
    lo = np.array([w[1] for w in words], dtype=np.uint64)
    texts = decode_ids(hi, lo)
    assert texts == [decode_id(a, b) for a, b in words]
    assert encode_ids(texts).hi.tolist() == hi.tolist()


def test_sequence_keys_at_the_state_cap_behave_as_on_the_per_event_path() -> None:
    """A sequence key that reaches max_events_per_key is capped the same on both paths."""
    lines = [
        b'{"timestamp":"2026-01-05T21:58:'
        + f"{s:02d}".encode()
        + b'Z","action":"auth.login","status":"'
        + (b"success" if s % 7 == 6 else b"failure")
        + b'","organizationId":"org-a","principalId":"u1"}'
        for s in range(40)
    ]
    config = detect_module.DetectorConfig(max_events_per_key=10)
    outcomes = []
    saved = detect_module._VECTOR_MIN
    for vector_min in (1, 10**9):
        detect_module._VECTOR_MIN = vector_min
        try:
            det = detect_module.Detector(SMALL_RULES, config=config)
            capped = 0
            alerts = {}
            for start in range(0, len(lines), 15):
                result = det.process_lines(lines[start : start + 15])
                capped += sum(result.metrics.state_capped.values())
                alerts.update({a.id: a.to_json() for a in result.alerts})
        finally:
            detect_module._VECTOR_MIN = saved
        outcomes.append((capped, alerts))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] > 0


@FAST
@given(
    st.dictionaries(
        st.integers(0, 5),
        st.lists(
            st.tuples(st.integers(0, 100), st.sampled_from(["a", "b", "c", 1, 1.0, True, 2])),
            min_size=1,
            max_size=15,
            unique_by=lambda row: row[0],
        ),
        min_size=1,
    ),
    st.integers(0, 120),
    st.integers(1, 40),
    st.integers(1, 4),
)
@VOCABS
def test_distinct_store_compaction_equals_key_windows(
    make_vocab: type[Vocab], keys: dict[int, list[tuple[int, Any]]], wm: int, width: int, keep: int
) -> None:
    """A distinct rule's store keeps exactly what each key's window keeps (1, 1.0, True: one)."""
    vocab = make_vocab()
    store = CountStore(tagged=True)
    expected: dict[int, list[tuple[int, Any]]] = {}
    codes: list[int] = []
    times: list[int] = []
    ids: list[str] = []
    tags: list[Any] = []
    for code in sorted(keys):
        rows = sorted(keys[code], key=lambda row: row[0])
        window = KeyWindow()
        for t, value in rows:
            window.insert(t, f"e{code}-{t}", value)
        window.compact(wm, width, keep, distinct=True)
        if window.times:
            expected[code] = list(zip(window.times, window.ids, strict=True))
        codes += [code] * len(rows)
        times += [t for t, _ in rows]
        ids += [f"e{code}-{t}" for t, _ in rows]
        tags += [value for _, value in rows]
    tag_codes = vocab.codes(tags)
    store.insert(
        np.array(codes, dtype=np.int64),
        np.array(times, dtype=np.int64),
        encode_ids(ids),
        np.zeros(len(codes), dtype=np.uint8),
        tag_codes,
    )
    n = len(store)
    assert store.tags is not None
    classes = plain_classes(vocab, store.tags)
    store.compact(np.full(n, wm), np.full(n, width), np.full(n, keep), distinct=classes)
    got = {b.code: list(zip(b.times, b.ids, strict=True)) for b in store.blocks()}
    assert got == expected


@VOCABS
def test_plain_classes_join_equal_values_of_different_types(make_vocab: type[Vocab]) -> None:
    """1, 1.0 and True are one class (as dict keys are); "1" and None are others."""
    vocab = make_vocab()
    codes = vocab.codes(["a", "b", "a"])
    assert not vocab.numeric
    assert plain_classes(vocab, codes.astype(np.uint32)).tolist() == codes.tolist()
    mixed = vocab.codes([1, 1.0, True, "1", None, 2])
    assert vocab.numeric
    classes = plain_classes(vocab, mixed).tolist()
    assert classes[0] == classes[1] == classes[2]
    assert len(set(classes[2:])) == 4


@VOCABS
def test_vocab_codes_from_an_iterator_fall_back_for_unhashable_values(
    make_vocab: type[Vocab],
) -> None:
    """Codes from a fresh iterator equal codes of a list, lists and dicts included."""
    values: list[Any] = ["x", [1, 2], {"a": 1}, None, [1, 2], "x", 3]
    vocab = make_vocab()
    from_iter = vocab.codes_from(lambda: iter(values)).tolist()
    assert from_iter == vocab.codes(values).tolist()
    assert from_iter[1] == from_iter[4]
    assert len(set(from_iter)) == 5
    assert vocab.values[from_iter[2]] == {"a": 1}


@FAST
@given(streams())
def test_factorising_columns_together_equals_one_by_one(lines: list[bytes]) -> None:
    """Codes and vocabularies of columns factorised together equal those of codes() alone."""
    decoder = EventDecoder(["recordCount", "outcomeDescription"])
    paths = ["organizationId", "action", "status", "principalId", "recordCount", "id"]
    together = decoder.decode(lines).batch
    together.factorise([*paths, "sessionContext.ipAddress"])
    alone = decoder.decode(lines).batch
    for path in [*paths, "sessionContext.ipAddress"]:
        codes_t, vocab_t = together.codes(path)
        codes_a, vocab_a = alone.codes(path)
        assert codes_t.tolist() == codes_a.tolist()
        assert vocab_t == vocab_a
        assert [type(v) for v in vocab_t] == [type(v) for v in vocab_a]


def test_distinct_rule_keeps_its_keys_columnar_between_batches() -> None:
    """After a batch a distinct rule holds no per-key window; its snapshot has the values."""
    lines = [
        b'{"timestamp":"2026-01-05T21:58:0' + str(s).encode() + b'Z","action":"auth.login",'
        b'"status":"failure","organizationId":"org-a","principalId":"u' + str(s).encode() + b'",'
        b'"sessionContext":{"ipAddress":"10.0.0.9"}}'
        for s in range(5)
    ]
    det = detect_module.Detector(SMALL_RULES)
    alerts = det.process_lines(lines).alerts
    assert [a.rule_id for a in alerts if a.rule_id == "spray"] == ["spray"]
    spray = next(r for r in det._rules if r.rule.id == "spray")
    assert not spray.windows
    assert spray.store is not None
    assert spray.store.n_keys() == 1
    rules: dict[str, Any] = det.snapshot()["rules"]
    (key, window) = rules["spray"]["keys"][0]
    assert key == ["org-a", "10.0.0.9"]
    assert window[2] == [f"u{s}" for s in range(5)]
    restored = detect_module.Detector.restore(SMALL_RULES, det.snapshot())
    assert restored.snapshot()["rules"]["spray"] == rules["spray"]
