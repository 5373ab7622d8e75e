"""Routing invariants: one shard per key, stable hashes, minimal balanced moves, spread."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rayworker.routing import Assignment, key_group, key_groups, route

shard_sets = st.sets(st.integers(0, 40), min_size=1, max_size=12)


def test_key_group_is_pinned() -> None:
    """Hard-coded hashes guard against a silent change (state would land on the wrong shard)."""
    assert key_group("org-1", ["alice"], groups=1_000_003) == 841_540
    assert [
        key_group("org-1", ["alice"]),
        key_group("org-1", []),
        key_group("org-2", ["10.0.0.1", None]),
    ] == [196, 134, 73]


def test_types_and_tenants_are_part_of_the_key() -> None:
    """'1', 1 and true differ; the same values in two tenants are different keys."""
    big = 1 << 30
    assert len({key_group("t", [v], groups=big) for v in ("1", 1, True)}) == 3
    assert key_group("a", ["x"], groups=big) != key_group("b", ["x"], groups=big)


@given(st.text(), st.lists(st.one_of(st.none(), st.text(), st.integers())), st.integers(1, 4096))
def test_key_group_in_range_and_vectorised_agrees(
    tenant: str, values: list[object], groups: int
) -> None:
    """Each key maps to one key group in [0, groups); the vectorised form agrees."""
    g = key_group(tenant, values, groups=groups)
    assert 0 <= g < groups
    columns = [[v] for v in values]
    assert key_groups([tenant], columns, groups=groups).tolist() == [g]


@given(shard_sets, st.integers(1, 512))
def test_every_key_group_has_exactly_one_shard(shards: set[int], groups: int) -> None:
    """After any rebalance every key group is owned by exactly one of the given shards."""
    assignment = Assignment.balanced(1, groups).rebalance(sorted(shards))
    assert len(assignment.owner) == groups
    assert set(assignment.owner) <= shards


@settings(max_examples=200)
@given(shard_sets, shard_sets, st.integers(1, 512))
def test_rebalance_is_balanced_and_moves_the_minimum(
    before: set[int], after: set[int], groups: int
) -> None:
    """Rebalancing balances within one and moves only what it must."""
    old = Assignment.balanced(1, groups).rebalance(sorted(before))
    new = old.rebalance(sorted(after))
    sizes = [len(new.groups_of(s)) for s in sorted(after)]
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == groups
    base, extra = divmod(groups, len(after))
    held = sorted((len(old.groups_of(s)) for s in after), reverse=True)
    kept = sum(min(h, base + (1 if i < extra else 0)) for i, h in enumerate(held))
    assert len(old.moves(new)) == groups - kept
    assert new.version == old.version + 1


def test_adding_a_shard_moves_groups_only_to_it() -> None:
    """A new shard takes its share from the others; no group moves between old shards."""
    old = Assignment.balanced(4)
    new = old.rebalance([0, 1, 2, 3, 4])
    assert {to for _, to in old.moves(new).values()} == {4}
    assert len(new.groups_of(4)) in (51, 52)


def test_removing_a_shard_moves_exactly_its_groups() -> None:
    """Removing a shard moves its key groups and nothing else."""
    old = Assignment.balanced(4)
    new = old.rebalance([0, 1, 3])
    assert set(old.moves(new)) == set(old.groups_of(2))


def test_route_sends_each_event_to_its_owners_in_order() -> None:
    """An event reaches the owner of each of its signatures' key groups, and no other shard."""
    assignment = Assignment.balanced(8)
    tenants = [f"org-{i % 3}" for i in range(200)]
    principals = [f"u{i % 37}" for i in range(200)]
    routed = route(assignment, tenants, [[principals], []])
    for shard, index in routed.items():
        assert index.tolist() == sorted(index.tolist())
        for i in index.tolist():
            owners = {
                assignment.shard_of(key_group(tenants[i], [principals[i]])),
                assignment.shard_of(key_group(tenants[i], [])),
            }
            assert shard in owners
    for i in range(200):
        reached = {s for s, index in routed.items() if i in index.tolist()}
        assert reached == {
            assignment.shard_of(key_group(tenants[i], [principals[i]])),
            assignment.shard_of(key_group(tenants[i], [])),
        }


def test_a_hot_tenant_spreads_over_all_shards() -> None:
    """A tenant with 1,000 principals touches all 8 shards (256 key groups)."""
    assignment = Assignment.balanced(8)
    principals = [f"user-{i}" for i in range(1000)]
    routed = route(assignment, ["org-hot"] * 1000, [[principals]])
    assert sorted(routed) == list(range(8))


def test_json_round_trip_and_errors() -> None:
    """The assignment survives JSON; invalid data names the field."""
    assignment = Assignment.balanced(3).rebalance([0, 1, 2, 5])
    assert Assignment.from_json(assignment.to_json()) == assignment
    with pytest.raises(ValueError, match="owner"):
        Assignment(4, (0, 1))
    with pytest.raises(ValueError, match="groups"):
        Assignment(0, ())
    with pytest.raises(ValueError, match="shards"):
        Assignment.balanced(0)
    with pytest.raises(ValueError, match="expected groups"):
        Assignment.from_json({"owner": []})
