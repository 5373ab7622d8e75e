"""Routing invariants: one shard per key, stable typed hashes, minimal balanced moves, spread."""

from __future__ import annotations

import json
import os
from itertools import combinations
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayworker.routing import MAX_KEY_GROUPS, Assignment, key_group, key_groups, route

# RAYWORKER_PROPERTY_EXAMPLES=1500 runs a deeper search (minutes instead of seconds).
EXAMPLES = int(os.environ.get("RAYWORKER_PROPERTY_EXAMPLES", "150"))
PROPS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
shard_ids = st.integers(0, 40)
shard_sets = st.sets(shard_ids, min_size=1, max_size=12)
group_counts = st.integers(1, 300)


@st.composite
def assignments(draw: st.DrawFn) -> Assignment:
    """Any valid assignment: random owners, not necessarily balanced."""
    groups = draw(group_counts)
    pool = sorted(draw(shard_sets))  # few shards, so their loads sit near the shares
    owner = draw(st.lists(st.sampled_from(pool), min_size=groups, max_size=groups))
    return Assignment(groups, tuple(owner), draw(st.integers(0, 5)))


def counts(assignment: Assignment, shards: set[int]) -> dict[int, int]:
    """How many key groups each of ``shards`` owns."""
    return {s: assignment.owner.count(s) for s in shards}


def fewest_moves(old: Assignment, after: set[int]) -> int:
    """Brute force: the fewest moves over every way of handing out the larger shares."""
    base, extra = divmod(old.groups, len(after))
    held = counts(old, after)
    best_kept = max(
        sum(min(held[s], base + (s in bigger)) for s in after)
        for bigger in map(set, combinations(sorted(after), extra))
    )
    return old.groups - best_kept


# --- key -> key group ---------------------------------------------------------------------


def test_key_group_is_pinned() -> None:
    """Hard-coded hashes guard against a silent change (state would land on the wrong shard)."""
    assert [
        key_group("org-1", ["alice"]),
        key_group("org-1", []),
        key_group("org-2", ["10.0.0.1", None]),
    ] == [196, 134, 73]
    big = MAX_KEY_GROUPS
    assert [
        key_group("org-1", v, groups=big)
        for v in (["alice"], ["1"], [1], [True], [1.0], [None], [{"b": 1, "a": [2]}])
    ] == [29124, 48975, 6095, 61170, 56419, 24086, 50699]
    vectorised = key_groups(["org-1", "org-2"], [["alice", "10.0.0.1"], [None, None]], groups=big)
    assert vectorised.tolist() == [key_group("org-1", ["alice", None], groups=big), 33609]


def test_types_and_tenants_are_part_of_the_key() -> None:
    """'1', 1, 1.0, true, null and 'null' are different keys, and so are tenant boundaries."""
    keys: list[tuple[str, list[object]]] = [
        ("t", ["1"]),
        ("t", [1]),
        ("t", [1.0]),
        ("t", [True]),
        ("t", [None]),
        ("t", ["null"]),
        ("t", ["true"]),
        ("t", []),
        ("t", [""]),
        ("t1", []),
        ("t", ["1", None]),
        ("u", ["1"]),
    ]
    found = [key_group(tenant, values, groups=MAX_KEY_GROUPS) for tenant, values in keys]
    assert len(set(found)) == len(keys)


def test_tenant_is_part_of_the_key() -> None:
    """The same values under two tenants hash independently (agreeing about 1 time in 256)."""
    principals = [f"user-{i}" for i in range(2000)]
    a = key_groups(["org-a"] * 2000, [principals])
    b = key_groups(["org-b"] * 2000, [principals])
    assert np.mean(a == b) < 0.02


def test_dict_keys_are_sorted_before_hashing() -> None:
    """Two dicts equal as JSON objects are one key, whatever their insertion order."""
    assert key_group("t", [{"a": 1, "b": 2}]) == key_group("t", [{"b": 2, "a": 1}])


@PROPS
@given(st.text(max_size=8), st.lists(scalars, max_size=4), st.integers(1, MAX_KEY_GROUPS))
def test_key_group_in_range_and_vectorised_agrees(
    tenant: str, values: list[object], groups: int
) -> None:
    """Each key maps to one key group in [0, groups); the vectorised form agrees."""
    g = key_group(tenant, values, groups=groups)
    assert 0 <= g < groups
    out = key_groups([tenant, tenant], [[v, v] for v in values], groups=groups)
    assert out.dtype == np.int32
    assert out.tolist() == [g, g]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: key_group("t", [], groups=0), "groups"),
        (lambda: key_group("t", [], groups=MAX_KEY_GROUPS + 1), "groups"),
        (lambda: key_group("t", [], groups=True), "groups"),
        (lambda: key_group(b"t", []), "tenant"),  # type: ignore[arg-type]
        (lambda: key_group("t", ["x", b"x"]), r"values\[1\]"),
        (lambda: key_group("t", [float("nan")]), r"values\[0\]"),
        (lambda: key_group("t", [float("-inf")]), r"values\[0\]"),
        (lambda: key_group("t", [np.int64(1)]), r"values\[0\]"),
        (lambda: key_groups(["t", None], [], groups=8), "tenants"),  # type: ignore[list-item]
        (lambda: key_groups(["t"], [["a"], ["a", "b"]]), r"columns\[1\]"),
        (lambda: key_groups(["t"], [[(1, 2)]]), r"columns\[0\]"),
    ],
)
def test_bad_keys_raise_value_error_naming_the_field(call: Any, field: str) -> None:
    """Unhashable-as-JSON values, bad tenants and bad group counts name the offending field."""
    with pytest.raises(ValueError, match=field):
        call()


# --- key group -> shard -------------------------------------------------------------------


@PROPS
@given(assignments(), st.lists(st.tuples(st.text(max_size=6), st.lists(scalars, max_size=3))))
def test_every_key_maps_to_exactly_one_shard(
    assignment: Assignment, keys: list[tuple[str, list[object]]]
) -> None:
    """groups_of partitions the key groups, so each key lands in exactly one shard's groups."""
    owned = [set(assignment.groups_of(s)) for s in assignment.shards]
    assert sum(map(len, owned)) == assignment.groups
    assert set().union(*owned) == set(range(assignment.groups))
    for tenant, values in keys:
        g = key_group(tenant, values, groups=assignment.groups)
        holders = [s for s, mine in zip(assignment.shards, owned, strict=True) if g in mine]
        assert holders == [assignment.shard_of(g)]


@PROPS
@given(st.integers(1, 100), st.integers(1, 2000))
def test_balanced_sizes_differ_by_at_most_one(shards: int, groups: int) -> None:
    """balanced() gives every shard floor or ceil of groups/shards."""
    assignment = Assignment.balanced(shards, groups=groups)
    sizes = counts(assignment, set(range(shards)))
    assert sum(sizes.values()) == groups
    assert set(sizes.values()) <= {groups // shards, -(-groups // shards)}


@PROPS
@given(assignments(), st.data())
def test_rebalance_is_balanced_and_moves_the_minimum(old: Assignment, data: st.DataObject) -> None:
    """From any assignment, rebalance balances within one and moves the fewest groups possible."""
    # Mostly the old shards, some leaving, some joining.
    after = data.draw(st.sets(st.sampled_from([*old.shards, 41, 42, 43]), min_size=1))
    new = old.rebalance(sorted(after))
    sizes = counts(new, after)
    assert sum(sizes.values()) == old.groups  # every group owned by one of ``after``
    assert max(sizes.values()) - min(sizes.values()) <= 1
    assert len(old.moves(new)) == fewest_moves(old, after)
    assert new.version == old.version + 1


@PROPS
@given(shard_sets, shard_sets, group_counts)
def test_adding_shards_moves_groups_only_to_them(
    before: set[int], joining: set[int], groups: int
) -> None:
    """Joining shards take exactly what they end with; no group moves between old shards."""
    joining -= before
    old = Assignment.balanced(1, groups=groups).rebalance(sorted(before))
    new = old.rebalance(sorted(before | joining))
    moves = old.moves(new)
    assert all(src in before and dst in joining for src, dst in moves.values())
    assert len(moves) == sum(len(new.groups_of(s)) for s in joining)
    surplus = sum(max(0, n - len(new.groups_of(s))) for s, n in counts(old, before).items())
    assert len(moves) == surplus


@PROPS
@given(shard_sets, st.data(), group_counts)
def test_removing_shards_moves_exactly_their_groups(
    before: set[int], data: st.DataObject, groups: int
) -> None:
    """Leaving shards give away all their groups, to the staying shards, and nothing else moves."""
    staying = data.draw(st.sets(st.sampled_from(sorted(before)), min_size=1))
    old = Assignment.balanced(1, groups=groups).rebalance(sorted(before))
    new = old.rebalance(sorted(staying))
    moves = old.moves(new)
    leaving = before - staying
    assert set(moves) == {g for s in leaving for g in old.groups_of(s)}
    assert {dst for _, dst in moves.values()} <= staying


def test_the_larger_share_goes_to_the_larger_holder() -> None:
    """Shares 2 and 1 over shards holding 2 and 1 groups: nothing needs to move."""
    old = Assignment(3, (5, 5, 1))
    assert old.moves(old.rebalance([1, 5])) == {}


def test_rebalance_to_the_same_shards_moves_nothing() -> None:
    """A balanced assignment is already where rebalance() would put it."""
    old = Assignment.balanced(7)
    assert old.moves(old.rebalance([0, 1, 2, 3, 4, 5, 6])) == {}


def test_adding_a_ninth_shard_moves_only_its_share() -> None:
    """8 -> 9 shards over 256 groups moves 28 groups, all to the new shard."""
    old = Assignment.balanced(8)
    moves = old.moves(old.rebalance(range(9)))
    assert len(moves) == 28
    assert {dst for _, dst in moves.values()} == {8}


# --- event -> shards ----------------------------------------------------------------------

events = st.integers(0, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.sampled_from(["org-a", "org-b", "org-c"]), min_size=n, max_size=n),
        st.lists(  # signatures: each a list of per-event columns (no columns = tenant only)
            st.lists(st.lists(scalars, min_size=n, max_size=n), max_size=2),
            max_size=3,
        ),
    )
)


@PROPS
@given(assignments(), events)
def test_route_sends_each_event_to_its_owners_only(
    assignment: Assignment, batch: tuple[list[str], list[list[list[object]]]]
) -> None:
    """Each event reaches the owner of each signature's key group, no other shard, in order."""
    tenants, signatures = batch
    routed = route(assignment, tenants, signatures)
    for index in routed.values():
        assert len(index) > 0
        assert np.all(np.diff(index) > 0)  # arrival order, no duplicates
    for i, tenant in enumerate(tenants):
        want = {
            assignment.shard_of(
                key_group(tenant, [column[i] for column in columns], groups=assignment.groups)
            )
            for columns in signatures
        }
        reached = {shard for shard, index in routed.items() if i in index}
        assert reached == want


def test_route_without_rules_or_events_sends_nothing() -> None:
    """No signatures (no enabled rules) or no events means no shard receives anything."""
    assignment = Assignment.balanced(4)
    assert route(assignment, ["t"], []) == {}
    assert route(assignment, [], [[], [[]]]) == {}


def test_route_names_the_bad_signature() -> None:
    """A column of the wrong length names its signature and column."""
    with pytest.raises(ValueError, match=r"signatures\[1\]: columns\[0\]"):
        route(Assignment.balanced(2), ["t", "t"], [[], [["only one"]]])


def test_a_hot_tenant_spreads_over_all_shards() -> None:
    """A tenant with 1,000 principals touches all 8 shards (256 key groups), none overloaded."""
    assignment = Assignment.balanced(8)
    principals = [f"user-{i}" for i in range(1000)]
    routed = route(assignment, ["org-hot"] * 1000, [[principals]])
    assert sorted(routed) == list(range(8))
    assert max(len(index) for index in routed.values()) < 2 * 1000 / 8


def test_a_tenant_only_rule_pins_the_tenant_to_one_shard() -> None:
    """The empty signature keys on the tenant alone, so all its events go to one shard."""
    routed = route(Assignment.balanced(8), ["org-hot"] * 50, [[]])
    assert len(routed) == 1
    assert next(iter(routed.values())).tolist() == list(range(50))


# --- persistence and validation -----------------------------------------------------------


@PROPS
@given(assignments())
def test_json_round_trip(assignment: Assignment) -> None:
    """to_json() survives a real JSON encode/decode and from_json() rebuilds the same thing."""
    assert Assignment.from_json(json.loads(json.dumps(assignment.to_json()))) == assignment


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: Assignment(0, ()), "groups"),
        (lambda: Assignment(MAX_KEY_GROUPS + 1, (0,) * (MAX_KEY_GROUPS + 1)), "groups"),
        (lambda: Assignment(4, (0, 1)), "owner"),
        (lambda: Assignment(2, [0, 1]), "owner"),  # type: ignore[arg-type]
        (lambda: Assignment(2, (0, -1)), "owner"),
        (lambda: Assignment(2, (0, True)), "owner"),
        (lambda: Assignment(1, (0,), -1), "version"),
        (lambda: Assignment.balanced(0), "shards"),
        (lambda: Assignment.balanced(2, groups=0), "groups"),
        (lambda: Assignment.balanced(2).rebalance([]), "shards"),
        (lambda: Assignment.balanced(2).rebalance([-1]), "shards"),
        (lambda: Assignment.balanced(2).shard_of(256), "group"),
        (lambda: Assignment.balanced(2).shard_of(-1), "group"),
        (lambda: Assignment.balanced(2).moves(Assignment.balanced(2, groups=8)), "groups"),
        (lambda: Assignment.from_json({"owner": [0], "version": 0}), "missing"),
        (lambda: Assignment.from_json({"groups": 1, "owner": [0], "version": 0, "x": 1}), "x"),
        (lambda: Assignment.from_json({"groups": 1.0, "owner": [0], "version": 0}), "groups"),
        (lambda: Assignment.from_json({"groups": 1, "owner": "0", "version": 0}), "owner"),
        (lambda: Assignment.from_json({"groups": 1, "owner": [0.0], "version": 0}), "owner"),
        (lambda: Assignment.from_json({"groups": 1, "owner": [0], "version": "1"}), "version"),
    ],
)
def test_invalid_assignments_raise_value_error_naming_the_field(call: Any, field: str) -> None:
    """Every invalid input raises ValueError whose message names the field to fix."""
    with pytest.raises(ValueError, match=field):
        call()


def test_repr_is_short() -> None:
    """The repr summarises the owner table instead of printing thousands of entries."""
    text = repr(Assignment.balanced(3, groups=MAX_KEY_GROUPS))
    assert text == "Assignment(groups=65536, shards=3 [0..2], version=0)"


# --- load-aware plans -----------------------------------------------------------------------


def shard_loads(assignment: Assignment, loads: list[int]) -> dict[int, int]:
    """Each owning shard's total load."""
    totals = dict.fromkeys(assignment.shards, 0)
    for group, shard in enumerate(assignment.owner):
        totals[shard] += loads[group]
    return totals


@PROPS
@given(assignments(), st.data())
def test_balance_load_never_raises_the_peak_and_keeps_the_shards(
    old: Assignment, data: st.DataObject
) -> None:
    """A load plan keeps the same shards, never raises the busiest one, and moves only off it."""
    loads = data.draw(st.lists(st.integers(0, 10_000), min_size=old.groups, max_size=old.groups))
    new = old.balance_load(loads)
    assert new.shards == old.shards
    before, after = shard_loads(old, loads), shard_loads(new, loads)
    assert max(after.values()) <= max(before.values())
    moves = old.moves(new)
    assert all(loads[g] > 0 for g in moves)
    assert (new.version == old.version + 1) == bool(moves)


def test_balance_load_spreads_a_skewed_load() -> None:
    """One heavy group per shard plus many light ones end close to even."""
    rng = np.random.default_rng(4)
    loads = (rng.zipf(1.3, 256) * 10).clip(max=4000).tolist()
    old = Assignment.balanced(8)
    new = old.balance_load(loads, tolerance=1.02)
    peak = max(shard_loads(new, loads).values())
    mean = sum(loads) / 8
    assert peak <= max(1.05 * mean, *loads) < max(shard_loads(old, loads).values())


def test_balance_load_moves_nothing_when_even() -> None:
    """Loads already within the tolerance leave the assignment as it is."""
    old = Assignment.balanced(4, groups=16)
    assert old.balance_load([5] * 16) is old


@pytest.mark.parametrize(
    ("loads", "tolerance", "field"),
    [
        ([1.0] * 3, 1.05, "loads"),
        ([1.0, -1.0, 1.0, 1.0], 1.05, "loads"),
        ([1.0] * 4, 0.5, "tolerance"),
    ],
)
def test_balance_load_rejects_bad_input(loads: list[float], tolerance: float, field: str) -> None:
    """Loads of the wrong length, negative loads and a tolerance below 1 are refused by name."""
    with pytest.raises(ValueError, match=field):
        Assignment.balanced(2, groups=4).balance_load(loads, tolerance=tolerance)
