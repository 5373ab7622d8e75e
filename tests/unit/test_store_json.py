"""The JSON columns' text: every value comes back as it went in, and no NUL reaches a store."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from rayworker.sinks.alert_store import NUL_ESCAPE, load_json, store_json

_TEXT = st.text(alphabet=st.sampled_from(["a", "é", "\x00", NUL_ESCAPE, "\ud800", "0", '"']))
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)


@given(_JSON)
@example({"k": NUL_ESCAPE + "0"})
@example([NUL_ESCAPE + NUL_ESCAPE, "a\x00b"])
def test_any_value_round_trips_and_never_holds_a_nul(value: Any) -> None:
    """load_json(store_json(v)) == v for NUL, the escape, lone surrogates and non-ASCII text,
    and the stored text never holds NUL in any form (PostgreSQL refuses it)."""
    text = store_json(value)
    assert load_json(text) == value
    assert "\x00" not in text
    assert "\\u0000" not in text


def test_a_lone_surrogate_falls_back_to_the_escaped_form() -> None:
    """msgspec refuses a lone surrogate; the text is then json.dumps's escaped form."""
    assert store_json({"principal": "\ud800"}) == '{"principal": "\\ud800"}'
    assert store_json({"principal": "x"}) == '{"principal":"x"}'
