"""
Tests for dcounter.node: local writes acknowledged after durability, and the
crash-safety rule that peers never see more of our own slot than is durable.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger, capturedLogs

from dcounter.counter import MAX_SLOT, CounterOverflow, Slot
from dcounter.idempotency import Entry, Record
from dcounter.node import Node, NodeStateService, digest
from dcounter.store import Durable, Identity, MemoryStore, SQLiteStore, StoreError
from tests.support import ManualWorker, failure_of, result_of, told

NODE = "10.0.0.1:8080"
ME = f"{NODE}/inc1"
PEER = "10.0.0.2:8080/inc9"


class ManualStore:
    """A store whose saves stay pending until the test fires them."""

    keeps_nothing = False

    def __init__(self, state: dict | None = None) -> None:
        self.identity = Identity(NODE, "inc1")
        self.state = state or {}
        self.saves: list[tuple[dict, Deferred[None]]] = []
        #: the slots each save was asked to forget, in order
        self.dropped: list[tuple[str, str]] = []

    def load(self) -> dict:
        return {name: dict(slots) for name, slots in self.state.items()}

    def load_keys(self) -> dict:
        return {}

    def load_members(self) -> list[str]:
        return []

    def save(self, state, keys=None, forget=None, drop=None, members=None) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.saves.append((state, d))
        self.dropped.extend(drop or ())
        return d

    def save_then(self, state: dict, done: Durable) -> None:
        told(self.save(state), done)

    def saved(self) -> list[dict]:
        return [state for state, _ in self.saves]

    def fire(self, index: int = 0) -> dict:
        """Make save number C{index} (of those still pending) durable."""
        state, d = self.saves.pop(index)
        d.callback(None)
        return state

    def fail(self, index: int = 0) -> None:
        _, d = self.saves.pop(index)
        d.errback(StoreError("disk full"))


def make_node(state: dict | None = None) -> tuple[Node, ManualStore, Clock]:
    store = ManualStore(state)
    clock = Clock()
    clock.advance(1000)
    node = Node(store, "dcounter", clock)
    node.load()
    return node, store, clock


def results(d: Deferred) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


def own(node: Node, name: str) -> Slot | None:
    """Our own slot of counter C{name} as peers would be sent it."""
    return node.outgoing().get(name, {}).get(ME)


# Identity and time.


def test_identity_and_uptime():
    """A node takes its identity from the store and measures uptime on its clock."""
    node, _, clock = make_node()
    assert node.node_id == NODE
    assert node.replica == ME
    assert node.cluster == "dcounter"
    assert node.uptime() == 0
    clock.advance(12.5)
    assert node.uptime() == 12.5


def test_loads_state_from_store():
    """A node starts with the store's state, its own slot counted as durable."""
    node, _, _ = make_node({"c": {ME: (4, 1), PEER: (10, 0)}})
    assert node.value("c") == 13
    assert node.outgoing() == {"c": {ME: (4, 1), PEER: (10, 0)}}


# Local writes.


def test_add_fires_with_value_once_durable():
    """add() applies the write at once, but acknowledges it only when the store has it."""
    node, store, _ = make_node()
    result = results(node.add("c", 5))
    assert result == []
    assert node.value("c") == 5  # read-your-writes before the ack
    assert store.saved() == [{"c": {ME: (5, 0)}}]
    store.fire()
    assert result == [5]


def test_add_reports_the_value_just_after_its_write():
    """Each add() fires with the value right after its own write, in whatever order saves land."""
    node, store, _ = make_node()
    first = results(node.add("c", 5))
    second = results(node.add("c", -2))
    assert store.saved() == [{"c": {ME: (5, 0)}}, {"c": {ME: (5, 2)}}]
    store.fire(1)
    store.fire(0)
    assert (first, second) == ([5], [3])
    assert node.value("c") == 3


def test_listeners_are_told_only_after_durable():
    """Write listeners hear of a write when it is durable, with its slot key."""
    node, store, _ = make_node()
    heard: list = []
    node.subscribe(lambda keys, idem: heard.append(keys))
    node.add("c", 1)
    node.add("d", -1)
    assert heard == []
    store.fire(1)
    assert heard == [[("d", ME)]]
    store.fire(0)
    assert heard == [[("d", ME)], [("c", ME)]]


def test_cancelled_add_still_replicates_once_durable():
    """
    A caller that gives up (a client that disconnected: Klein cancels the
    route's Deferred) does not cut the write off from what follows it: once
    durable it is marked so, peers are told, and outgoing state shows it.
    """
    node, store, _ = make_node()
    heard: list = []
    node.subscribe(lambda keys, idem: heard.append(keys))
    answer = node.add("c", 1)
    answer.cancel()
    assert results(answer)[0].check(CancelledError)
    store.fire()
    assert heard == [[("c", ME)]]
    assert own(node, "c") == (1, 0)
    assert node.value("c") == 1


def test_cancelled_add_that_fails_is_logged():
    """A write that fails after its caller left is logged, not dropped silently."""
    node, store, _ = make_node()
    logged: list = []
    node.log = Logger(observer=logged.append)
    answer = node.add("c", 1)
    answer.cancel()
    store.fail()
    assert [e["log_failure"].check(StoreError) for e in logged] == [StoreError]
    assert own(node, "c") is None


def test_failed_save_fails_the_add_and_tells_nobody():
    """If the store fails, add() fails, listeners hear nothing and peers see nothing."""
    node, store, _ = make_node()
    heard: list = []
    node.subscribe(lambda keys, idem: heard.append(keys))
    result = results(node.add("c", 1))
    store.fail()
    assert len(result) == 1 and result[0].check(StoreError)
    assert heard == []
    assert own(node, "c") is None


def test_add_zero_and_overflow_raise_at_once():
    """Bad amounts raise synchronously and neither change nor save anything."""
    node, store, _ = make_node({"c": {ME: (MAX_SLOT - 1, 0)}})
    with pytest.raises(ValueError):
        node.add("c", 0)
    with pytest.raises(CounterOverflow):
        node.add("c", 2)
    assert store.saves == []
    assert node.value("c") == MAX_SLOT - 1


def test_memory_store_acknowledges_at_once():
    """With a MemoryStore a write is durable, and visible to peers, immediately."""
    store = MemoryStore(NODE)
    node = Node(store, "dcounter", Clock())
    assert results(node.add("c", 3)) == [3]
    assert node.outgoing() == {"c": {node.replica: (3, 0)}}


def test_add_now_on_a_store_that_keeps_nothing_is_add_without_the_deferred():
    """add_now counts, tells the listeners and answers the value, as add does in memory."""
    node = Node(MemoryStore(NODE), "dcounter", Clock())
    told: list[tuple[list, list]] = []
    node.subscribe(lambda keys, idem: told.append((keys, idem)))
    assert node.add_now("c", 3) == 3
    assert node.add_now("c", -1) == 2
    assert told == [([("c", node.replica)], [])] * 2
    assert node.outgoing() == {"c": {node.replica: (3, 1)}}
    with pytest.raises(CounterOverflow):
        node.add_now("c", MAX_SLOT)
    assert node.value("c") == 2 and len(told) == 2


def test_add_now_refuses_a_store_that_keeps_something():
    """Answering at once on a store that must first save would answer before durable."""
    node, store, _ = make_node()
    with pytest.raises(TypeError, match="keeps nothing"):
        node.add_now("c", 1)
    assert store.saves == [] and node.value("c") == 0


def test_add_then_answers_a_callable_once_durable():
    """add_then is add without a Deferred: the callable hears the value once durable, the failure if not."""
    node, store, _ = make_node()
    heard: list = []
    node.subscribe(lambda keys, idem: heard.append(keys))
    answers: list = []
    node.add_then("c", 3, answers.append)
    node.add_then("c", 2, answers.append)
    assert answers == [] and heard == []
    store.fire()
    assert answers == [3] and heard == [[("c", node.replica)]]
    store.fail()
    assert answers[0] == 3 and answers[1].check(StoreError)
    assert len(heard) == 1
    with pytest.raises(CounterOverflow):
        node.add_then("c", MAX_SLOT, answers.append)
    assert len(answers) == 2 and store.saves == []


def test_add_then_answers_a_listener_error_as_a_failure():
    """A listener that raises once the write is durable fails the answer; it is not lost."""
    node, store, _ = make_node()

    def broken(keys: list, idem: list) -> None:
        raise RuntimeError("listener bug")

    node.subscribe(broken)
    answers: list = []
    node.add_then("c", 1, answers.append)
    store.fire()
    (failure,) = answers
    assert failure.check(RuntimeError)
    assert node.value("c") == 1


def test_add_then_answers_once_even_if_the_answer_raises(tmp_path):
    """An answer that raises is called once, not again with its own error; the store logs it."""
    worker = ManualWorker()
    store = SQLiteStore(str(tmp_path), NODE, worker)
    store.start()
    node = Node(store, "dcounter", Clock())
    calls: list = []

    def answer(result: object) -> None:
        calls.append(result)
        raise RuntimeError("answer bug")

    with capturedLogs() as events:
        node.add_then("c", 1, answer)
        worker.run_all()
    assert calls == [1]
    assert [e["log_failure"].value.args for e in events if "log_failure" in e] == [("answer bug",)]
    assert result_of(store.stop()) is None


# The crash-safety rule.


def test_outgoing_hides_own_slot_until_durable():
    """Before its first durable write, our own slot is left out of outgoing state."""
    node, store, _ = make_node({"c": {PEER: (2, 0)}})
    node.add("c", 5)
    assert node.outgoing() == {"c": {PEER: (2, 0)}}
    node.add("new", 1)
    assert "new" not in node.outgoing()
    assert node.outgoing([("new", ME)]) == {}
    store.fire()
    assert node.outgoing() == {"c": {PEER: (2, 0), ME: (5, 0)}}


def test_outgoing_shows_own_slot_only_as_far_as_durable():
    """With writes pending, peers get the last durable own slot, not the newest."""
    node, store, _ = make_node({"c": {ME: (1, 0)}})
    node.add("c", 2)
    node.add("c", -4)
    assert own(node, "c") == (1, 0)
    assert node.value("c") == -1  # local reads see everything
    store.fire(0)
    assert own(node, "c") == (3, 0)
    store.fire(0)
    assert own(node, "c") == (3, 4)


def test_outgoing_with_keys():
    """outgoing(keys) sends just those slots, own slot still capped at durable."""
    node, store, _ = make_node({"c": {ME: (1, 0), PEER: (2, 0)}, "d": {PEER: (7, 0)}})
    node.add("c", 1)
    assert node.outgoing([("c", ME)]) == {"c": {ME: (1, 0)}}
    assert node.outgoing([("d", PEER)]) == {"d": {PEER: (7, 0)}}
    store.fire()
    assert node.outgoing([("c", ME), ("d", PEER)]) == {"c": {ME: (2, 0)}, "d": {PEER: (7, 0)}}


operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from("ab"), st.integers(-5, 5).filter(bool)),
        st.tuples(st.just("fire"), st.integers(0, 20)),
        st.tuples(st.just("fail"), st.integers(0, 20)),
        st.tuples(
            st.just("merge"),
            st.sampled_from("ab"),
            st.sampled_from([ME, PEER]),
            st.tuples(st.integers(0, 8), st.integers(0, 8)),
        ),
    ),
    max_size=40,
)


@given(operations)
def test_outgoing_never_exceeds_what_is_durable_or_held_by_peers(ops):
    """
    Whatever mix of writes, completed or failed saves and merges: our own
    slot in outgoing state is exactly the max of the local writes the store
    has made durable and what peers sent us of it; other slots are sent in
    full.
    """
    node, store, _ = make_node()
    kinds: list[str] = []  # what made each pending save: "add" or "merge"
    safe: dict[str, Slot] = {}

    def raise_safe(name: str, slot: Slot) -> None:
        p, n = safe.get(name, (0, 0))
        safe[name] = (max(p, slot[0]), max(n, slot[1]))

    for op in ops:
        if op[0] == "add":
            node.add(op[1], op[2])
            kinds.append("add")
        elif op[0] in ("fire", "fail") and store.saves:
            index = op[1] % len(store.saves)
            kind = kinds.pop(index)
            if op[0] == "fail":
                store.fail(index)
                continue
            saved = store.fire(index)
            if kind == "add":
                for name, slots in saved.items():
                    raise_safe(name, slots[ME])
        elif op[0] == "merge":
            _, name, replica, slot = op
            if node.merge({name: {replica: slot}}):
                kinds.append("merge")
                if replica == ME:
                    raise_safe(name, slot)
        assert len(kinds) == len(store.saves)
        out = node.outgoing()
        everything = node.counters.state()
        for name in everything:
            expected = {r: s for r, s in everything[name].items() if r != ME}
            if name in safe:
                expected[ME] = safe[name]
            assert out.get(name, {}) == expected


# raise_to: the original's /sync.


def test_raise_to_below_current_changes_nothing():
    """raise_to a target at or below the value fires at once with the value, saving nothing."""
    node, store, _ = make_node({"c": {PEER: (10, 0)}})
    assert results(node.raise_to("c", 3)) == [10]
    assert results(node.raise_to("c", 10)) == [10]
    assert store.saves == []
    assert node.counters.state() == {"c": {PEER: (10, 0)}}


def test_raise_to_counts_the_difference_in_own_slot():
    """raise_to a higher target adds the difference to our own P, acked once durable."""
    node, store, _ = make_node({"c": {PEER: (10, 4)}})
    result = results(node.raise_to("c", 15))
    assert result == []
    assert node.value("c") == 15
    assert store.saved() == [{"c": {ME: (9, 0)}}]
    store.fire()
    assert result == [15]
    assert own(node, "c") == (9, 0)


def test_raise_to_on_a_new_counter():
    """raise_to on a counter never written counts from 0."""
    node, store, _ = make_node()
    result = results(node.raise_to("fresh", 7))
    store.fire()
    assert result == [7]
    assert node.counters.slot("fresh", ME) == (7, 0)


# Merging peers' state.


def test_merge_stores_what_grew_and_returns_it():
    """merge() returns the grown slots and saves exactly those."""
    node, store, _ = make_node({"c": {PEER: (5, 0)}})
    other = "10.0.0.3:8080/inc3"
    grown = node.merge({"c": {PEER: (3, 2), other: (1, 0)}, "d": {PEER: (4, 0)}})
    assert sorted(grown) == [("c", PEER), ("c", other), ("d", PEER)]
    assert store.saved() == [{"c": {PEER: (5, 2), other: (1, 0)}, "d": {PEER: (4, 0)}}]
    assert node.value("c") == 4
    assert node.value("d") == 4


def test_merge_of_nothing_new_saves_nothing():
    """Merging state we already have returns no keys and does not touch the store."""
    node, store, _ = make_node({"c": {PEER: (5, 1)}})
    assert node.merge({"c": {PEER: (5, 1)}}) == []
    assert node.merge({"c": {PEER: (2, 0)}}) == []
    assert node.merge({}) == []
    assert store.saves == []


def test_merge_does_not_notify_write_listeners():
    """Write listeners hear of local writes only, not of merged state."""
    node, _, _ = make_node()
    heard: list = []
    node.subscribe(lambda keys, idem: heard.append(keys))
    node.merge({"c": {PEER: (1, 0)}})
    assert heard == []


def test_merge_of_own_slot_raises_the_durable_mark():
    """Our own slot held by a peer (data lost or restored) is sent on as safe."""
    node, store, _ = make_node()
    node.add("c", 2)  # pending
    assert own(node, "c") is None
    assert node.merge({"c": {ME: (6, 1)}}) == [("c", ME)]
    assert own(node, "c") == (6, 1)
    assert node.value("c") == 5
    assert store.saved()[-1] == {"c": {ME: (6, 1)}}


def test_merge_of_own_slot_does_not_vouch_for_pending_writes():
    """
    A peer's copy of our own slot makes safe only what the peer holds: a
    pending local write in another component of the slot stays hidden.
    """
    node, store, _ = make_node()
    node.add("c", 5)  # P = 5, pending
    assert node.merge({"c": {ME: (0, 3)}}) == [("c", ME)]
    assert node.counters.slot("c", ME) == (5, 3)
    assert own(node, "c") == (0, 3)
    store.fire(0)
    assert own(node, "c") == (5, 3)


def test_merged_state_failing_to_save_is_logged():
    """A merge whose save fails logs the failure and leaves no unhandled error."""
    node, store, _ = make_node()
    with capturedLogs() as events:
        node.merge({"c": {PEER: (1, 0)}})
        store.fail()
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(StoreError)
    assert node.value("c") == 1


def test_node_state_service_opens_store_loads_state_and_stops_it(tmp_path):
    """
    Starting the service opens the store and takes up its state (a new
    replica); stopping it finishes the last commit, after which a write
    fails instead of hanging.
    """
    worker = ManualWorker()
    store = SQLiteStore(str(tmp_path), NODE, worker)
    store.start()
    store.save({"c": {PEER: (7, 0)}})
    worker.run_all()
    result_of(store.stop())

    store = SQLiteStore(str(tmp_path), NODE, worker)
    node = Node(store, "dcounter", Clock())
    service = NodeStateService(node)
    service.startService()
    assert node.value("c") == 7
    written = node.add("c", 1)
    stopped = service.stopService()
    assert not stopped.called  # the last commit is still running
    worker.run_all()
    assert result_of(written) == 8
    assert result_of(stopped) is None
    failure_of(node.add("c", 1)).trap(StoreError)


# Folding this node's earlier incarnations.

EARLIER = f"{NODE}/{1:011x}aaaaaa"
EARLIEST = f"{NODE}/{0:011x}aaaaaa"


def make_later_node(state: dict) -> tuple[Node, ManualStore]:
    store = ManualStore(state)
    store.identity = Identity(NODE, f"{2:011x}bbbbbb")
    node = Node(store, "dcounter", Clock())
    node.load()
    return node, store


def test_fold_makes_one_slot_of_earlier_incarnations_and_offers_it():
    node, store = make_later_node({"c": {EARLIEST: (4, 1), EARLIER: (2, 0), PEER: (10, 0)}})
    assert node.fold_pending
    offered: list = []
    node.subscribe(lambda slots, keys: offered.append(slots))
    assert node.fold() == 2
    fold = f"{NODE}/folded-{1:011x}aaaaaa"
    assert node.outgoing() == {"c": {fold: (6, 1), PEER: (10, 0)}}
    assert node.value("c") == 15
    assert store.saved() == [{"c": {fold: (6, 1)}}]
    assert sorted(store.dropped) == [("c", EARLIEST), ("c", EARLIER)]
    assert offered == [[("c", fold)]]
    assert not node.fold_pending
    assert node.fold() == 0


def test_a_slot_of_an_earlier_incarnation_arriving_later_makes_a_fold_pending():
    node, _ = make_later_node({"c": {PEER: (1, 0)}})
    assert not node.fold_pending
    node.merge({"c": {PEER: (2, 0)}})
    assert not node.fold_pending
    node.merge({"c": {EARLIER: (3, 0)}})
    assert node.fold_pending


def test_merging_a_fold_forgets_what_it_absorbs_in_the_store():
    node, store = make_later_node({"c": {PEER + "x": (1, 0)}})
    other = "10.0.0.9:8080"
    node.merge({"c": {f"{other}/{0:011x}aaaaaa": (5, 0)}})
    node.merge({"c": {f"{other}/folded-{0:011x}aaaaaa": (5, 0)}})
    assert store.dropped == [("c", f"{other}/{0:011x}aaaaaa")]
    assert node.value("c") == 6


def test_a_settlement_is_not_sent_before_it_is_durable() -> None:
    """
    A key's entry commits first, its settlement later: until the second
    commit, peers get the entry and not the settlement.  The first commit
    had ended the key's whole wait, so a push sent the settlement ahead of
    the settled slot, and a peer read the write twice.
    """
    node, store, clock = make_node()
    winner = "10.0.0.0:8080/inc0"  # sorts first: this node's copy loses
    amounts = [("default", 1)]
    node.add_keyed("k", amounts)
    entry = Entry(clock.seconds(), digest(amounts), (("default", 1, 1),))
    node.merge({"default": {winner: (1, 0)}}, {"k": Record({winner: entry}, {})})
    assert len(store.saves) == 4  # the keyed write, the merged key, the settlement, the merged slot
    store.fire(0)
    record = node.outgoing_keys(["k"])["k"]
    assert (sorted(record.entries), record.settled) == (sorted([winner, ME]), {})
    assert node.outgoing()["default"][ME] == (1, 0)
    while store.saves:
        store.fire()
    assert node.outgoing_keys(["k"])["k"].settled == {ME: {ME}}
    assert node.outgoing()["default"][ME] == (1, 1)
    assert node.value("default") == 1
