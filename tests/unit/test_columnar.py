"""The columnar state of count rules and the vectorised watermarks equal their per-key twins."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xxhash import xxh3_128_digest

from rayworker import detect as detect_module
from rayworker.columnar import CountStore, ValueVocab, digest_ids, encode_ids
from rayworker.events import EventBatch, derive_event_id
from rayworker.windows import KeyWindow
from tests.unit.test_detect_properties import SMALL_RULES, comparable, run, streams

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


def test_vocab_keeps_typed_values_apart_and_reuses_freed_codes() -> None:
    """1, 1.0 and True get different codes; a retained code survives, a freed one is reused."""
    vocab = ValueVocab()
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
