"""
Tests for dcounter.idempotency and the keyed writes of dcounter.counter: a
keyed write counts once, whatever replicas accepted it and however their
messages travel.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dcounter.counter import Counters
from dcounter.idempotency import Entry, KeyBook, KeyMismatch, Record

#: key -> (counter, amount): a retried request always has the same body.
KEYS = {"k1": ("a", 3), "k2": ("a", -2), "k3": ("b", 5), "k4": ("a", 7)}


def snapshot(c: Counters) -> tuple[dict, dict]:
    return c.state(), c.keys.state()


def deliver(to: Counters, replica: str, message: tuple[dict, dict], settle: bool = True) -> None:
    state, keys = message
    to.merge(state)
    to.merge_keys(keys, now=0.0, window=float("inf"))
    if settle:
        to.settle(replica)


def assert_counted_once(nodes: list[Counters], expected: dict[str, int]) -> None:
    for node in nodes:
        values = node.values()
        assert {n: values.get(n, 0) for n in expected} == expected


# An operation: ("write", replica index, key or None) | ("send", from, to) |
# ("deliver", message index) | ("restart", replica index).
ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 2), st.sampled_from([*KEYS, None])),
        st.tuples(st.just("send"), st.integers(0, 2), st.integers(0, 2)),
        st.tuples(st.just("deliver"), st.integers(0, 200), st.integers(0, 200)),
        st.tuples(st.just("restart"), st.integers(0, 2), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(ops)
def test_any_order_and_duplication_counts_each_key_once(ops: list[tuple]) -> None:
    """
    Three nodes accept keyed and unkeyed writes, restart as new incarnations
    (keeping their state), and exchange state snapshots that arrive in any
    order, any number of times, or not at all until the end.  Once everyone
    has heard from everyone, every replica shows each key counted once.
    """
    replicas = ["n0/0", "n1/0", "n2/0"]
    nodes = [Counters() for _ in replicas]
    pool: list[tuple[int, tuple[dict, dict]]] = []
    expected: dict[str, int] = {}
    counted: set[str] = set()
    for op, x, y in ops:
        if op == "write":
            if y is None:
                nodes[x].add("a", replicas[x], 1)
                expected["a"] = expected.get("a", 0) + 1
                continue
            name, amount = KEYS[y]
            if nodes[x].keys.lookup(y, y) is not None:
                continue  # a replay: answered from the book, nothing counted
            nodes[x].add_keyed(y, replicas[x], y, [(name, amount)], now=0.0)
            if y not in counted:
                counted.add(y)
                expected[name] = expected.get(name, 0) + amount
        elif op == "send":
            pool.append((y, snapshot(nodes[x])))
        elif op == "deliver" and pool:
            to, message = pool[x % len(pool)]
            deliver(nodes[to], replicas[to], message)
        elif op == "restart":
            node, _, inc = replicas[x].partition("/")
            replicas[x] = f"{node}/{int(inc) + 1}"
            nodes[x].settle(replicas[x])
    # Reads are right as soon as everyone has met, before any settles.
    snapshots = [snapshot(node) for node in nodes]
    for j in range(3):
        for message in snapshots:
            deliver(nodes[j], replicas[j], message, settle=False)
    assert_counted_once(nodes, expected)
    for _ in range(3):  # settlements made while meeting travel in the next round
        for i in range(3):
            for j in range(3):
                deliver(nodes[j], replicas[j], snapshot(nodes[i]))
    assert_counted_once(nodes, expected)
    for i, node in enumerate(nodes):
        assert node.keys.unsettled(replicas[i]) == []
    # Settled, every key can be forgotten without any value changing.
    for node in nodes:
        before = node.values()
        node.keys.expire(now=10.0, window=1.0, limit=100)
        assert len(node.keys) == 0
        assert node.values() == before


def test_replay_same_digest_and_mismatch() -> None:
    c = Counters()
    entry = c.add_keyed("k", "n/1", "d1", [("a", 2)], now=5.0)
    assert entry.writes == (("a", 2, 2),)
    assert c.keys.lookup("k", "d1") == entry
    try:
        c.keys.lookup("k", "d2")
    except KeyMismatch:
        pass
    else:
        raise AssertionError("a different request with the same key must be refused")
    assert c.keys.lookup("other", "d1") is None


def test_two_replicas_counting_one_key_read_once_before_settling() -> None:
    a, b = Counters(), Counters()
    a.add_keyed("k", "a/1", "d", [("x", 4)], now=0.0)
    b.add_keyed("k", "b/1", "d", [("x", 4)], now=0.0)
    b.merge(a.state())
    b.merge_keys(a.keys.state(), now=0.0, window=60.0)
    assert b.value("x") == 4  # b lost to a ('a/1' < 'b/1') and takes its write back in the value
    slots, keys = b.settle("b/1")
    assert (slots, keys) == ([("x", "b/1")], ["k"])
    assert b.slot("x", "b/1") == (4, 4)
    assert b.value("x") == 4
    assert b.settle("b/1") == ([], [])  # once


def test_expiry_keeps_unsettled_losers_and_ignores_old_entries() -> None:
    book = KeyBook()
    book.record("k", "b/1", Entry(0.0, "d", (("x", 1, 1),)))
    book.merge({"k": Record({"a/1": Entry(0.0, "d", (("x", 1, 1),))}, {})}, now=0.0, window=60.0)
    assert book.adjustment("x") == -1
    assert book.expire(now=100.0, window=60.0, limit=10) == []  # b/1 has not settled yet
    book.settle("k", "b/1", "b/1")
    assert book.expire(now=100.0, window=60.0, limit=10) == ["k"]
    assert book.adjustment("x") == 0
    # An entry older than the window does not bring a forgotten key back.
    assert book.merge({"k": Record({"a/1": Entry(0.0, "d", ())}, {})}, now=100.0, window=60.0) == []
    assert "k" not in book


def test_count_bound_forgets_the_oldest() -> None:
    book = KeyBook()
    for i in range(5):
        book.record(f"k{i}", "a/1", Entry(float(i), "d", (("x", 1, i),)))
    assert book.expire(now=5.0, window=3600.0, limit=3) == ["k0", "k1"]
    assert len(book) == 3


def test_touching_names_the_recent_keys_that_write_given_counters() -> None:
    """touching() finds keys with an entry after a time that write one of the counters."""
    book = KeyBook()
    assert book.newest == 0.0
    book.record("old", "a/1", Entry(10.0, "d", (("x", 1, 1),)))
    book.record("new-x", "a/1", Entry(20.0, "d", (("x", 1, 2),)))
    book.record("new-y", "a/1", Entry(30.0, "d", (("y", 1, 1), ("z", 2, 2))))
    book.merge({"old": Record({"b/1": Entry(25.0, "d", (("x", 1, 1),))}, {})}, now=30.0, window=60.0)
    assert book.newest == 30.0
    assert sorted(book.touching(["x"], 15.0)) == ["new-x", "old"]  # old has a newer entry now
    assert book.touching(["z"], 15.0) == ["new-y"]
    assert book.touching(["x", "y"], 30.0) == []
    assert book.touching([], 0.0) == []
