"""
Tests for dcounter.counter: the PN-counter map and its CRDT laws.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcounter.counter import (
    DEFAULT_COUNTER,
    MAX_SLOT,
    MAX_VALUE,
    MIN_VALUE,
    CounterOverflow,
    Counters,
    Slot,
    SlotKey,
    State,
    TooManyCounters,
    order,
)

NAMES = ["default", "a", "b"]
REPLICAS = ["n1/x", "n2/y", "n3/z"]

totals = st.one_of(st.integers(0, 50), st.integers(0, MAX_SLOT))
slots = st.tuples(totals, totals)
states = st.dictionaries(
    st.sampled_from(NAMES),
    st.dictionaries(st.sampled_from(REPLICAS), slots, max_size=len(REPLICAS)),
    max_size=len(NAMES),
)
#: (replica, counter, amount): one local write.
writes = st.tuples(
    st.sampled_from(REPLICAS),
    st.sampled_from(NAMES),
    st.integers(-1000, 1000).filter(bool),
)


def merged(*parts: State) -> dict:
    """The state of a fresh map after merging C{parts} in order."""
    counters = Counters()
    for part in parts:
        counters.merge(part)
    return counters.state()


def recomputed(counters: Counters) -> dict[str, int]:
    """Every counter's value, recomputed from scratch from its slots."""
    return {
        name: min(
            MAX_VALUE,
            max(MIN_VALUE, sum(p for p, _ in replicas.values()) - sum(n for _, n in replicas.values())),
        )
        for name, replicas in counters.state().items()
    }


def all_keys(state: State) -> list[SlotKey]:
    return [(name, replica) for name, replicas in state.items() for replica in replicas]


def assert_values_consistent(counters: Counters) -> None:
    """The cached values agree with a recomputation from the slots."""
    expected = recomputed(counters)
    assert counters.values() == expected
    for name, value in expected.items():
        assert counters.value(name) == value
        assert name in counters
    assert len(counters) == len(expected)


def apply_writes(replicas: dict[str, Counters], ops: Iterable[tuple[str, str, int]]) -> dict[str, int]:
    """Apply C{ops}, each on its own replica's map; return the expected totals."""
    expected: dict[str, int] = {}
    for replica, name, amount in ops:
        replicas[replica].add(name, replica, amount)
        expected[name] = expected.get(name, 0) + amount
    return expected


# The CRDT laws.


@given(states, states)
def test_merge_is_commutative(a, b):
    """Merging a then b gives the same state as b then a."""
    assert merged(a, b) == merged(b, a)


@given(states, states, states)
def test_merge_is_associative(a, b, c):
    """(a merge b) merge c equals a merge (b merge c)."""
    assert merged(merged(a, b), c) == merged(a, merged(b, c))


@given(states)
def test_merge_is_idempotent(a):
    """Merging a state a second time changes nothing and reports nothing grown."""
    counters = Counters(a)
    before = counters.state()
    values = counters.values()
    assert counters.merge(a) == []
    assert counters.state() == before
    assert counters.values() == values


@given(states, states)
def test_merge_takes_per_slot_maximum(a, b):
    """Every merged slot is the component-wise max of the slots merged."""
    result = Counters(a)
    result.merge(b)
    for name, replica in set(all_keys(a)) | set(all_keys(b)):
        pa, na = a.get(name, {}).get(replica, (0, 0))
        pb, nb = b.get(name, {}).get(replica, (0, 0))
        assert result.slot(name, replica) == (max(pa, pb), max(na, nb))


@given(states, states)
def test_merge_reports_exactly_the_grown_slots(a, b):
    """merge() returns the keys of the slots that changed, and only those."""
    counters = Counters(a)
    before = {key: counters.slot(*key) for key in all_keys(b)}
    grown = counters.merge(b)
    assert len(grown) == len(set(grown))
    changed = {key for key, slot in before.items() if counters.slot(*key) != slot}
    assert set(grown) == changed


@given(states, states)
def test_values_consistent_after_merges(a, b):
    """The cached value of every counter equals sum(P) - sum(N) after merges."""
    counters = Counters(a)
    assert_values_consistent(counters)
    counters.merge(b)
    assert_values_consistent(counters)


# Convergence.


@given(st.lists(writes, max_size=40), st.randoms(use_true_random=False))
def test_value_is_sum_of_writes_once_all_merged_in_any_order(ops, rnd):
    """
    After writes on several replicas, merging every replica's state in any
    order gives each counter the sum of its increments minus decrements.
    """
    replicas = {r: Counters() for r in REPLICAS}
    expected = apply_writes(replicas, ops)
    order = list(replicas.values())
    rnd.shuffle(order)
    total = Counters()
    for counters in order:
        total.merge(counters.state())
    for name in NAMES:
        assert total.value(name) == expected.get(name, 0)
    assert_values_consistent(total)


@given(st.lists(writes, max_size=40), st.randoms(use_true_random=False))
def test_every_replica_converges(ops, rnd):
    """Replicas exchanging whole states, in a random order, end identical and exact."""
    replicas = {r: Counters() for r in REPLICAS}
    expected = apply_writes(replicas, ops)
    snapshots = [c.state() for c in replicas.values()]
    for counters in replicas.values():
        order = list(snapshots)
        rnd.shuffle(order)
        for state in order:
            counters.merge(state)
    final = [c.state() for c in replicas.values()]
    assert all(state == final[0] for state in final)
    for counters in replicas.values():
        assert {n: counters.value(n) for n in expected} == expected
        assert_values_consistent(counters)


@given(
    st.lists(writes, min_size=1, max_size=30),
    st.lists(st.lists(st.integers(0, 200), max_size=6), max_size=8),
    st.randoms(use_true_random=False),
)
def test_partial_states_converge_to_the_whole(ops, picks, rnd):
    """
    Deltas (state(keys)) taken at any time, merged in any order, any number
    of times, together with one delta that covers every key, converge to the
    same state as merging the whole state.
    """
    source = Counters()
    deltas: list[dict] = []
    for i, (replica, name, amount) in enumerate(ops):
        source.add(name, replica, amount)
        # Now and then, snapshot a subset of the keys as they are now.
        if picks and i < len(picks):
            keys = all_keys(source.state())
            deltas.append(source.state([keys[j % len(keys)] for j in picks[i]]))
    keys = all_keys(source.state())
    for key in keys:  # every key at its final value, one slot per delta
        deltas.append(source.state([key]))
    deltas = deltas + deltas[: len(deltas) // 2]  # some arrive twice
    rnd.shuffle(deltas)

    target = Counters()
    for delta in deltas:
        target.merge(delta)
    assert target.state() == merged(source.state()) == source.state()
    assert target.values() == source.values()
    assert_values_consistent(target)


def test_partial_state_holds_only_the_named_slots():
    """state(keys) copies just those slots; a slot not held is left out."""
    counters = Counters()
    counters.add("a", "r1", 3)
    counters.add("a", "r2", -2)
    counters.add("b", "r1", 7)
    assert counters.state([("a", "r2")]) == {"a": {"r2": (0, 2)}}
    assert counters.state([("a", "r1"), ("b", "r1")]) == {"a": {"r1": (3, 0)}, "b": {"r1": (7, 0)}}
    assert counters.state([("c", "r9")]) == {}
    assert counters.state([]) == {}


def test_merging_empty_slots_creates_no_counter():
    """A state with only (0, 0) slots or no replicas adds no counter."""
    counters = Counters()
    assert counters.merge({"c": {"r9": (0, 0)}, "d": {}}) == []
    assert "c" not in counters
    assert "d" not in counters
    assert counters.state() == {}
    assert counters.values() == {}


def test_state_is_a_copy():
    """Changing the dict returned by state() does not change the counters."""
    counters = Counters()
    counters.add("a", "r1", 1)
    copy = counters.state()
    copy["a"]["r1"] = (100, 0)
    copy["z"] = {"r1": (1, 0)}
    assert counters.state() == {"a": {"r1": (1, 0)}}
    assert counters.value("a") == 1
    values = counters.values()
    values["a"] = 42
    assert counters.value("a") == 1


def test_constructor_merges_initial_state():
    """Counters(state) holds that state and its values."""
    counters = Counters({"a": {"r1": (5, 1), "r2": (2, 0)}})
    assert counters.value("a") == 6
    assert counters.slot("a", "r1") == (5, 1)
    assert "a" in counters and len(counters) == 1


def test_unknown_counter_reads_zero():
    """A counter never written has value 0, empty slots, and is not listed."""
    counters = Counters()
    assert counters.value("nope") == 0
    assert counters.slot("nope", "r1") == (0, 0)
    assert "nope" not in counters
    assert len(counters) == 0


# Local writes.


def test_add_counts_increments_and_decrements_in_own_slot():
    """add() adds positive amounts to P, negative ones to N, returning the slot."""
    counters = Counters()
    assert counters.add("a", "r1", 5) == (5, 0)
    assert counters.add("a", "r1", -3) == (5, 3)
    assert counters.add("a", "r2", 1) == (1, 0)
    assert counters.value("a") == 3
    assert counters.state() == {"a": {"r1": (5, 3), "r2": (1, 0)}}


def test_add_zero_raises_and_changes_nothing():
    """add(..., 0) is refused and creates no counter."""
    counters = Counters()
    with pytest.raises(ValueError):
        counters.add("a", "r1", 0)
    assert "a" not in counters
    assert counters.state() == {}


@pytest.mark.parametrize("sign", [1, -1])
def test_overflow_raises_and_changes_nothing(sign):
    """A write past MAX_SLOT raises CounterOverflow; slot and value are kept."""
    counters = Counters()
    counters.add("a", "r1", sign * (MAX_SLOT - 1))
    counters.add("a", "r2", -sign * 10)
    before, value = counters.state(), counters.value("a")
    with pytest.raises(CounterOverflow):
        counters.add("a", "r1", sign * 2)
    assert counters.state() == before
    assert counters.value("a") == value
    # Exactly MAX_SLOT still fits.
    slot = counters.add("a", "r1", sign)
    assert max(slot) == MAX_SLOT
    assert_values_consistent(counters)


def test_overflow_is_a_value_error():
    """Callers catching ValueError catch CounterOverflow too."""
    assert issubclass(CounterOverflow, ValueError)


def test_overflow_on_a_new_counter_creates_nothing():
    """A first write larger than MAX_SLOT leaves no counter behind."""
    counters = Counters()
    with pytest.raises(CounterOverflow):
        counters.add("a", "r1", MAX_SLOT + 1)
    assert counters.value("a") == 0
    assert counters.slot("a", "r1") == (0, 0)
    assert counters.values() == {}


@given(
    st.lists(
        st.one_of(
            writes.map(lambda w: ("add", w)),
            states.map(lambda s: ("merge", s)),
        ),
        max_size=30,
    )
)
def test_value_cache_matches_recomputation(steps):
    """After any mix of adds and merges, cached values equal a recomputation."""
    counters = Counters()
    for kind, arg in steps:
        if kind == "add":
            replica, name, amount = arg
            try:
                counters.add(name, replica, amount)
            except CounterOverflow:
                pass
        else:
            counters.merge(arg)
        assert_values_consistent(counters)


@pytest.mark.parametrize("sign", [1, -1])
def test_write_past_the_served_range_is_refused(sign):
    """
    A local write that would take a value past 2^63-1 (or below -2^63) is
    refused, though the slot itself has room: a client decoding int64 must
    read every value.
    """
    counters = Counters()
    counters.merge({"a": {"r2": (MAX_SLOT, 0) if sign > 0 else (0, MAX_SLOT)}})
    with pytest.raises(CounterOverflow):
        counters.add("a", "r1", sign * 2)
    assert counters.slot("a", "r1") == (0, 0)
    counters.add("a", "r1", -sign)  # away from the edge is fine


def test_merged_values_are_served_clamped():
    """Merged slots summing past 2^63-1 are served as 2^63-1, and never wrap."""
    counters = Counters(
        {"a": {"r1": (MAX_SLOT, 0), "r2": (MAX_SLOT, 0)}, "b": {"r1": (0, MAX_SLOT), "r2": (0, 5)}}
    )
    assert counters.value("a") == MAX_VALUE
    assert counters.values() == {"a": MAX_VALUE, "b": MIN_VALUE}
    with pytest.raises(CounterOverflow):
        counters.add("a", "r3", 1)


def test_max_counters_bounds_writes_and_merges():
    """
    Beyond max_counters (the default counter aside), a write to a new counter
    raises TooManyCounters and a merge leaves new counters out; known ones
    still take both.
    """
    counters = Counters({"x": {"r": (1, 0)}, "y": {"r": (1, 0)}}, max_counters=2)
    with pytest.raises(TooManyCounters):
        counters.add("z", "r", 1)
    assert "z" not in counters
    counters.add("x", "r", 1)
    counters.add(DEFAULT_COUNTER, "r", 1)  # not one of the named counters
    grown = counters.merge({"z": {"p": (5, 0)}, "x": {"p": (5, 0)}})
    assert grown == [("x", "p")]
    assert counters.refused == 1
    assert set(counters.values()) == {"x", "y", DEFAULT_COUNTER}


def test_max_counters_does_not_cut_loaded_state():
    """State a node starts from is kept whole, even past the bound."""
    counters = Counters({f"c{i}": {"r": (1, 0)} for i in range(5)}, max_counters=2)
    assert len(counters) == 5


def test_add_many_is_all_or_nothing():
    """add_many() applies every amount, or none when one would overflow."""
    counters = Counters()
    counters.add("full", "r1", MAX_SLOT - 1)
    assert counters.add_many("r1", {"a": 3, "b": -2}) == {"a": (3, 0), "b": (0, 2)}
    assert counters.values() == {"full": MAX_SLOT - 1, "a": 3, "b": -2}
    with pytest.raises(CounterOverflow):
        counters.add_many("r1", {"a": 1, "full": 2})
    with pytest.raises(ValueError):
        counters.add_many("r1", {"a": 1, "b": 0})
    assert counters.values() == {"full": MAX_SLOT - 1, "a": 3, "b": -2}
    assert counters.slot("a", "r1") == (3, 0)


def test_add_many_respects_max_counters():
    """A batch whose new counters do not all fit is refused whole."""
    counters = Counters({"x": {"r": (1, 0)}}, max_counters=2)
    with pytest.raises(TooManyCounters):
        counters.add_many("r", {"x": 1, "y": 1, "z": 1})
    assert counters.values() == {"x": 1}
    assert counters.add_many("r", {"x": 1, "y": 1, DEFAULT_COUNTER: 1}) == {
        "x": (2, 0),
        "y": (1, 0),
        DEFAULT_COUNTER: (1, 0),
    }


# Folding a node's retired incarnations.


def inc(started: int) -> str:
    """An incarnation id of the current format, started at C{started}."""
    return f"{started:011x}0a1b2c"


def replica(node: str, started: int) -> str:
    return f"{node}/{inc(started)}"


def test_incarnations_sort_in_start_order():
    assert order(inc(9)) < order(inc(10)) < order(inc(2**40))
    assert order("0123456789ab") == ""  # an older release's: before any
    assert order("folded-" + inc(3)) == order(inc(3))


def test_fold_sums_a_nodes_retired_slots_into_one():
    counters = Counters(
        {
            "a": {replica("x", 1): (5, 1), replica("x", 2): (3, 0), replica("x", 3): (1, 0), "y/1": (7, 0)},
            "b": {replica("x", 1): (2, 0)},
        }
    )
    dropped: list[SlotKey] = []
    folds = counters.fold(replica("x", 3), dropped)
    fold_a = f"x/folded-{inc(2)}"
    assert folds == {"a": {fold_a: (8, 1)}, "b": {f"x/folded-{inc(1)}": (2, 0)}}
    assert counters.state() == {
        "a": {fold_a: (8, 1), replica("x", 3): (1, 0), "y/1": (7, 0)},
        "b": {f"x/folded-{inc(1)}": (2, 0)},
    }
    assert sorted(dropped) == sorted([("a", replica("x", 1)), ("a", replica("x", 2)), ("b", replica("x", 1))])
    assert counters.values() == {"a": 15, "b": 2}
    assert counters.foldable(replica("x", 3)) == []
    assert_values_consistent(counters)


def test_a_fold_is_folded_again_after_the_next_restart():
    counters = Counters({"a": {f"x/folded-{inc(2)}": (8, 1), replica("x", 3): (4, 0)}})
    assert counters.foldable(replica("x", 4)) == ["a"]
    dropped: list[SlotKey] = []
    counters.fold(replica("x", 4), dropped)
    assert counters.state() == {"a": {f"x/folded-{inc(3)}": (12, 1)}}
    assert counters.value("a") == 11


def test_the_live_incarnation_and_later_ones_are_not_folded():
    counters = Counters({"a": {replica("x", 1): (1, 0), replica("x", 5): (2, 0), replica("x", 9): (4, 0)}})
    counters.fold(replica("x", 5), [])
    assert counters.state() == {
        "a": {f"x/folded-{inc(1)}": (1, 0), replica("x", 5): (2, 0), replica("x", 9): (4, 0)}
    }


def test_a_fold_supersedes_the_slots_it_absorbs_wherever_it_arrives():
    peer = Counters({"a": {replica("x", 1): (5, 0), replica("x", 2): (3, 0), "y/1": (1, 0)}})
    dropped: list[SlotKey] = []
    grown = peer.merge({"a": {f"x/folded-{inc(2)}": (8, 0), replica("x", 3): (1, 0)}}, dropped)
    assert peer.state() == {"a": {f"x/folded-{inc(2)}": (8, 0), replica("x", 3): (1, 0), "y/1": (1, 0)}}
    assert sorted(dropped) == [("a", replica("x", 1)), ("a", replica("x", 2))]
    assert sorted(grown) == sorted([("a", f"x/folded-{inc(2)}"), ("a", replica("x", 3))])
    assert peer.value("a") == 10
    assert_values_consistent(peer)
    # What the fold absorbed, arriving late by another path, counts for nothing.
    assert peer.merge({"a": {replica("x", 1): (6, 0), f"x/folded-{inc(1)}": (5, 0)}}) == []
    assert peer.value("a") == 10
    # An incarnation the fold does not cover still counts.
    assert peer.merge({"a": {replica("x", 4): (2, 0)}}) == [("a", replica("x", 4))]
    assert peer.value("a") == 12


def test_a_fold_that_arrives_before_the_slots_it_absorbs():
    peer = Counters({"a": {"y/1": (1, 0)}})
    peer.merge({"a": {f"x/folded-{inc(2)}": (8, 0)}})
    peer.merge({"a": {replica("x", 2): (3, 0)}})
    assert peer.state() == {"a": {f"x/folded-{inc(2)}": (8, 0), "y/1": (1, 0)}}
    assert_values_consistent(peer)


#: One node's history: incarnations 1..4 each count into their own slot;
#: the owner folds after incarnations 2 and 4 started.
def _history() -> list[dict[str, dict[str, Slot]]]:
    owner = Counters()
    snapshots = []
    for started in range(1, 5):
        live = replica("x", started)
        if started in (2, 4):
            owner.fold(live, [])
        for name in ("a", "b")[: started % 2 + 1]:
            owner.add(name, live, started)
            snapshots.append(owner.state())
    return snapshots


@given(st.permutations(range(len(_history()))), st.integers(0, 2**32))
def test_folds_converge_whatever_the_order_of_arrival(permutation, seed):
    """
    Snapshots of a node that folds, merged in any order with repeats:
    every replica ends with the owner's state and value, and the value read
    never goes down (each snapshot holds all of the slots folded before it).
    """
    snapshots = _history()
    owner = Counters()
    for snapshot in snapshots:
        owner.merge(snapshot)
    rng = random.Random(seed)
    peer = Counters()
    seen = {"a": 0, "b": 0}
    for i in list(permutation) + rng.sample(range(len(snapshots)), 3):
        peer.merge(snapshots[i])
        values = peer.values()
        for name in seen:
            assert values.get(name, 0) >= seen[name]
            seen[name] = values.get(name, 0)
        assert_values_consistent(peer)
    assert peer.state() == snapshots[-1]
    assert peer.values() == {"a": 1 + 2 + 3 + 4, "b": 1 + 3}


def test_state_of_named_slots_leaves_out_those_a_fold_superseded():
    """A fold slot named before a later fold superseded it is not sent as (0, 0), which would drop slots."""
    counters = Counters({"a": {f"x/folded-{inc(1)}": (4, 0), "y/1": (1, 0)}})
    counters.merge({"a": {f"x/folded-{inc(2)}": (6, 0)}})
    assert counters.state([("a", f"x/folded-{inc(1)}"), ("a", "y/1")]) == {"a": {"y/1": (1, 0)}}


def test_two_copies_of_one_fold_converge_on_the_larger():
    """An owner that crashed before its fold was durable may fold again, counting more: take the max."""
    peer = Counters({"a": {f"x/folded-{inc(1)}": (5, 1)}})
    assert peer.merge({"a": {f"x/folded-{inc(1)}": (7, 0)}}) == [("a", f"x/folded-{inc(1)}")]
    assert peer.state() == {"a": {f"x/folded-{inc(1)}": (7, 1)}}
    assert_values_consistent(peer)


def test_folds_of_older_release_incarnations_supersede_in_id_order():
    """Incarnations of an older release have no time order: folds of them still form a chain."""
    peer = Counters({"a": {"x/folded-aaaaaaaaaaaa": (3, 0)}})
    peer.merge({"a": {"x/folded-bbbbbbbbbbbb": (5, 0)}})  # a fold of both
    assert peer.state() == {"a": {"x/folded-bbbbbbbbbbbb": (5, 0)}}
    peer.merge({"a": {"x/folded-aaaaaaaaaaaa": (3, 0)}})
    assert peer.value("a") == 5


def test_a_fold_that_would_supersede_the_live_slot_is_refused():
    """A fold of incarnations up to one later than the live one (a clock gone back) takes nothing away."""
    counters = Counters()
    counters.live = replica("x", 5)
    counters.add("a", replica("x", 5), 4)
    assert counters.merge({"a": {f"x/folded-{inc(9)}": (1, 0)}}) == []
    assert counters.state() == {"a": {replica("x", 5): (4, 0)}}
    assert counters.refused_folds == 1
