"""
Tests for dcounter.store: identity, locking, lifecycle and group commit.

The store's transactions run on an injected worker: L{ManualWorker} queues
them until the test runs them (a writer thread that is busy, then done), so
no test here needs a thread or the global reactor.
"""

from __future__ import annotations

import sqlite3

import pytest
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from dcounter.counter import MAX_SLOT, order
from dcounter.idempotency import Entry, Record
from dcounter.store import Identity, MemoryStore, SQLiteStore, StoreError, new_incarnation
from tests.support import ManualWorker, failure_of, result_of

NODE = "10.0.0.1:8080"
OTHER = "10.0.0.9:8080"


def opened(directory, node_id: str = NODE) -> tuple[SQLiteStore, ManualWorker]:
    worker = ManualWorker()
    store = SQLiteStore(str(directory), node_id, worker)
    store.start()
    return store, worker


def close(store: SQLiteStore) -> None:
    """Close a store with nothing in flight: stop() fires at once."""
    assert result_of(store.stop()) is None


def reopen_and_load(directory, node_id: str = NODE) -> tuple[Identity, dict]:
    store, _ = opened(directory, node_id)
    try:
        return store.identity, store.load()
    finally:
        close(store)


def saved(store: SQLiteStore, worker: ManualWorker, state: dict) -> None:
    """Save C{state} and commit it."""
    d = store.save(state)
    worker.run_all()
    assert result_of(d) is None


def refuse_counter(directory, counter: str) -> None:
    """Make every commit that writes C{counter} in C{directory}'s database fail (a trigger)."""
    saboteur = sqlite3.connect(str(directory / "dcounter.sqlite3"), isolation_level=None)
    saboteur.execute(
        f"CREATE TRIGGER refuse BEFORE INSERT ON slots WHEN NEW.counter = '{counter}'"
        " BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    saboteur.close()


# MemoryStore.


def test_memory_store_is_a_new_incarnation_each_time():
    """Every MemoryStore is a fresh replica of the same node."""
    a, b = MemoryStore(NODE), MemoryStore(NODE)
    assert a.identity.node_id == b.identity.node_id == NODE
    assert a.identity.incarnation != b.identity.incarnation
    assert a.identity.replica == f"{NODE}/{a.identity.incarnation}"


def test_memory_store_keeps_nothing():
    """A MemoryStore loads nothing and acknowledges saves at once."""
    store = MemoryStore(NODE)
    store.start()
    assert result_of(store.save({"c": {"r": (1, 0)}})) is None
    assert store.load() == {}
    assert result_of(store.stop()) is None


# Identity.


def test_every_start_is_a_new_incarnation(tmp_path):
    """
    Reopening the same directory under the same node id gives a new replica
    every time (the directory may be an old copy); the old slots stay.
    """
    store, worker = opened(tmp_path)
    first = store.identity
    saved(store, worker, {"default": {first.replica: (5, 0)}})
    close(store)
    seen = {first.incarnation}
    for _ in range(3):
        identity, state = reopen_and_load(tmp_path)
        assert identity.node_id == NODE
        assert identity.incarnation not in seen
        seen.add(identity.incarnation)
        assert state == {"default": {first.replica: (5, 0)}}


def test_restored_old_copy_is_a_new_replica(tmp_path):
    """
    A directory put back from a copy taken earlier starts a replica that has
    never handed out a count: none of its slots is one its peers could hold
    more of.
    """
    import shutil

    store, worker = opened(tmp_path / "d")
    saved(store, worker, {"default": {store.identity.replica: (10, 0)}})
    close(store)
    shutil.copytree(tmp_path / "d", tmp_path / "copy")
    store, worker = opened(tmp_path / "d")
    later = store.identity
    saved(store, worker, {"default": {later.replica: (150, 0)}})
    close(store)
    shutil.rmtree(tmp_path / "d")
    shutil.copytree(tmp_path / "copy", tmp_path / "d")
    identity, state = reopen_and_load(tmp_path / "d")
    assert identity.replica not in state["default"]
    assert identity.replica != later.replica


def test_locked_directory_is_refused(tmp_path):
    """A second store on a directory in use raises StoreError at once, and the first is unharmed."""
    store, _ = opened(tmp_path)
    with pytest.raises(StoreError, match="locked"):
        SQLiteStore(str(tmp_path), NODE, ManualWorker())
    with pytest.raises(StoreError):
        SQLiteStore(str(tmp_path), OTHER, ManualWorker())
    assert store.load() == {}
    close(store)
    # Released on stop.
    reopen_and_load(tmp_path)


def test_unusable_directory_raises_store_error(tmp_path):
    """A data directory that is a file raises StoreError, not OSError."""
    path = tmp_path / "file"
    path.write_text("not a directory")
    with pytest.raises(StoreError):
        SQLiteStore(str(path), NODE, ManualWorker())


def test_corrupt_database_raises_store_error_at_once(tmp_path):
    """
    A database file that is not SQLite raises StoreError when the store is
    made (before twistd forks, so the node says why and exits), and frees
    the lock.
    """
    (tmp_path / "dcounter.sqlite3").write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(StoreError, match="cannot use data directory"):
        SQLiteStore(str(tmp_path), NODE, ManualWorker())
    (tmp_path / "dcounter.sqlite3").unlink()
    close(opened(tmp_path)[0])  # not locked any more


def test_database_that_goes_bad_before_start_raises_store_error(tmp_path):
    """A database made unusable between construction and start raises StoreError on start."""
    store = SQLiteStore(str(tmp_path), NODE, ManualWorker())
    (tmp_path / "dcounter.sqlite3").write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(StoreError, match="cannot use data directory"):
        store.start()
    (tmp_path / "dcounter.sqlite3").unlink()
    close(opened(tmp_path)[0])  # not locked any more


def test_database_is_opened_on_start_not_before(tmp_path):
    """
    Constructing the store (twistd does it before forking) keeps no
    database open; start() opens it.  A save before start fails at once.
    """
    store = SQLiteStore(str(tmp_path), NODE, ManualWorker())
    failure_of(store.save({"c": {"r": (1, 0)}})).trap(StoreError)
    store.start()
    assert store.load() == {}
    close(store)


# Commits.


def test_saved_slots_load_back(tmp_path):
    """Slots saved are there when the directory is reopened."""
    store, worker = opened(tmp_path)
    replica = store.identity.replica
    state = {"default": {replica: (5, 2), "peer/x": (1, 0)}, "b": {"peer/x": (0, MAX_SLOT)}}
    saved(store, worker, state)
    close(store)
    assert reopen_and_load(tmp_path)[1] == state


def test_slots_keep_the_maximum(tmp_path):
    """Each stored slot keeps the max of P and of N, within and across transactions."""
    store, worker = opened(tmp_path)
    saved(store, worker, {"c": {"r": (5, 1)}})
    saved(store, worker, {"c": {"r": (3, 4)}})  # a later, partly smaller slot
    both = [store.save({"c": {"s": (9, 0)}}), store.save({"c": {"s": (2, 6)}})]
    worker.run_all()
    assert [result_of(d) for d in both] == [None, None]
    saved(store, worker, {"c": {"r": (0, 0)}})
    assert store.load() == {"c": {"r": (5, 4), "s": (9, 6)}}
    close(store)


def test_saves_while_committing_become_one_transaction(tmp_path):
    """
    While one transaction commits, every save that arrives joins the next
    one: twenty saves are two transactions, the second holding each slot's
    maximum.
    """
    store, worker = opened(tmp_path)
    first = store.save({"c": {"r": (1, 0)}})
    rest = [store.save({"c": {"r": (i, i % 3)}, "d": {f"r{i % 2}": (i, 0)}}) for i in range(2, 21)]
    assert len(worker.jobs) == 1
    worker.run_next()
    assert result_of(first) is None
    assert not any(d.called for d in rest)
    worker.run_next()
    assert [result_of(d) for d in rest] == [None] * 19
    assert worker.transactions == [
        [("c", "r", 1, 0)],
        [("c", "r", 20, 2), ("d", "r0", 20, 0), ("d", "r1", 19, 0)],
    ]
    # A save after all that is its own transaction.
    saved(store, worker, {"c": {"r": (21, 0)}})
    assert len(worker.transactions) == 3
    close(store)


def test_save_fires_only_after_commit(tmp_path):
    """A save's Deferred fires once its transaction commits, and it is visible to others then."""
    store, worker = opened(tmp_path)
    d = store.save({"c": {"r": (1, 0)}})
    assert not d.called
    worker.run_next()
    assert result_of(d) is None
    other = sqlite3.connect(str(tmp_path / "dcounter.sqlite3"))
    try:
        assert other.execute("SELECT counter, replica, p, n FROM slots").fetchall() == [("c", "r", 1, 0)]
    finally:
        other.close()
    close(store)


def test_saves_made_from_save_callbacks_are_group_committed(tmp_path):
    """
    Saves made by the callbacks of one transaction's waiters (a client
    resuming after its write is durable) all wait for one next
    transaction, never start overlapping ones.
    """
    store, worker = opened(tmp_path)
    follow_ups = []

    def save_again(_, replica):
        follow_ups.append(store.save({"c": {replica: (1, 0)}}))

    store.save({"c": {"r": (1, 0)}})
    store.save({"c": {"r": (2, 0)}}).addCallback(save_again, "x")
    store.save({"c": {"r": (3, 0)}}).addCallback(save_again, "y")
    worker.run_next()
    worker.run_next()
    assert len(worker.jobs) == 1
    worker.run_next()
    assert [result_of(d) for d in follow_ups] == [None, None]
    assert worker.transactions == [
        [("c", "r", 1, 0)],
        [("c", "r", 3, 0)],
        [("c", "x", 1, 0), ("c", "y", 1, 0)],
    ]
    close(store)


def test_stop_waits_for_pending_commits(tmp_path):
    """stop() fires after every save made before it is committed and acknowledged."""
    store, worker = opened(tmp_path)
    events: list[object] = []
    for i in range(1, 6):
        store.save({"c": {"r": (i, 0)}}).addCallback(lambda _, i=i: events.append(i))
    stopped = store.stop().addCallback(lambda _: events.append("stopped"))
    assert not stopped.called
    worker.run_all()
    assert stopped.called
    assert events == [1, 2, 3, 4, 5, "stopped"]
    assert not worker.running
    assert reopen_and_load(tmp_path)[1] == {"c": {"r": (5, 0)}}


def test_stop_waits_for_saves_made_while_stopping(tmp_path):
    """A save made by a waiter's callback while stopping is committed before stop() fires."""
    store, worker = opened(tmp_path)
    events: list[object] = []

    def save_again(_):
        store.save({"c": {"late": (1, 0)}}).addCallback(lambda _: events.append("late"))

    store.save({"c": {"r": (1, 0)}})
    store.save({"c": {"r": (2, 0)}}).addCallback(save_again)
    store.stop().addCallback(lambda _: events.append("stopped"))
    worker.run_all()
    assert events == ["late", "stopped"]
    assert reopen_and_load(tmp_path)[1] == {"c": {"r": (2, 0), "late": (1, 0)}}


def test_save_after_stop_fails_instead_of_hanging(tmp_path):
    """Once stopped, a save fails at once with StoreError; nothing is queued."""
    store, worker = opened(tmp_path)
    close(store)
    failure = failure_of(store.save({"c": {"r": (1, 0)}}))
    failure.trap(StoreError)
    assert "stopped" in str(failure.value)
    assert worker.jobs == []


def test_failed_commit_fails_its_waiters_only(tmp_path):
    """A transaction that fails errbacks its saves with StoreError; later saves still commit."""
    store, worker = opened(tmp_path)
    refuse_counter(tmp_path, "bad")
    saved(store, worker, {"c": {"r": (1, 0)}})
    bad = store.save({"bad": {"r": (1, 0)}, "c": {"r": (2, 0)}})
    worker.run_all()
    failure_of(bad).trap(StoreError)
    saved(store, worker, {"c": {"s": (1, 0)}})
    # The failed transaction left nothing behind.
    assert store.load() == {"c": {"r": (1, 0), "s": (1, 0)}}
    close(store)


def test_save_then_tells_its_callable_after_the_commit_it_joined(tmp_path):
    """
    save_then joins the same group commit as save, and calls its callable
    (no Deferred) with None once that commit is done.
    """
    store, worker = opened(tmp_path)
    told: list[object] = []
    first = store.save({"c": {"r": (1, 0)}})
    store.save_then({"c": {"r": (2, 0)}}, told.append)
    store.save_then({"d": {"r": (1, 0)}}, told.append)
    worker.run_next()
    assert result_of(first) is None
    assert told == []
    worker.run_next()
    assert told == [None, None]
    assert worker.transactions[1] == [("c", "r", 2, 0), ("d", "r", 1, 0)]
    close(store)


def test_save_then_is_told_of_a_failed_commit_and_of_a_stopped_store(tmp_path):
    """A failed commit calls save_then's callable with the StoreError; a stopped store at once."""
    store, worker = opened(tmp_path)
    refuse_counter(tmp_path, "bad")
    told: list[Failure | None] = []
    store.save_then({"bad": {"r": (1, 0)}}, told.append)
    worker.run_all()
    (failure,) = told
    assert failure is not None
    failure.trap(StoreError)
    close(store)
    store.save_then({"c": {"r": (1, 0)}}, told.append)
    assert len(told) == 2 and told[1] is not None and "stopped" in str(told[1].value)
    assert worker.jobs == []


def test_save_then_on_a_store_not_started_is_told_at_once(tmp_path):
    """Before start(), save_then's callable hears a StoreError at once; nothing is queued."""
    worker = ManualWorker()
    store = SQLiteStore(str(tmp_path), NODE, worker)
    told: list[Failure | None] = []
    store.save_then({"c": {"r": (1, 0)}}, told.append)
    (failure,) = told
    assert failure is not None and failure.check(StoreError) and "not started" in str(failure.value)
    assert worker.jobs == []
    store.start()
    close(store)


def test_a_waiter_that_raises_leaves_the_others_told(tmp_path):
    """
    A callable that raises is logged; the other waiters of its commit are
    still told, and the next commit still starts.
    """
    store, worker = opened(tmp_path)
    told: list[object] = []

    def broken(_: object) -> None:
        raise RuntimeError("a bug in a waiter")

    with capturedLogs() as events:
        store.save_then({"c": {"r": (1, 0)}}, broken)
        store.save_then({"c": {"r": (2, 0)}}, told.append)
        later = store.save({"c": {"r": (3, 0)}})
        worker.run_all()
    assert told == [None]
    assert result_of(later) is None
    assert [e["log_failure"].value.args for e in events if "log_failure" in e] == [("a bug in a waiter",)]
    close(store)


def test_memory_store_save_then_is_told_at_once():
    """A MemoryStore keeps nothing: save_then's callable is called before it returns."""
    told: list[object] = []
    MemoryStore(NODE).save_then({"c": {"r": (1, 0)}}, told.append)
    assert told == [None]


# Idempotency keys.


def test_keys_commit_with_their_slots_and_are_forgotten(tmp_path):
    """A key and its write are in one transaction; a reopened store has both; forget deletes the key."""
    store, worker = opened(tmp_path)
    entry = Entry(12.5, "d" * 32, (("hits", 2, 2),))
    record = Record({"n/1": entry, "m/1": entry}, {"n/1": {"n/1"}})
    d = store.save({"hits": {"n/1": (2, 2)}}, {"k": record})
    worker.run_all()
    assert result_of(d) is None
    close(store)
    store, worker = opened(tmp_path)
    assert store.load() == {"hits": {"n/1": (2, 2)}}
    assert store.load_keys() == {"k": record}
    d = store.save({}, forget=["k"])
    worker.run_all()
    assert result_of(d) is None
    assert store.load_keys() == {}
    close(store)


def test_a_failed_commit_keeps_neither_key_nor_slot(tmp_path):
    """Nothing of a keyed write is durable if its transaction fails."""
    store, worker = opened(tmp_path)
    record = Record({"n/1": Entry(1.0, "d", (("x", 1, 1),))}, {})
    # A slot past SQLite's INTEGER makes the whole transaction fail.
    d = store.save({"x": {"n/1": (2**64, 0)}}, {"k": record})
    worker.run_all()
    failure_of(d)
    assert store.load_keys() == {}
    assert store.load() == {}
    close(store)


# Folds: incarnations in start order, dropped slots, remembered members.


def test_incarnations_sort_after_the_last_one_even_if_the_clock_went_back(tmp_path):
    store, _ = opened(tmp_path)
    first = store.identity.incarnation
    close(store)
    assert order(first) != ""
    assert order(new_incarnation(first, now=0.0)) > order(first)  # a clock at 1970
    identity, _ = reopen_and_load(tmp_path)
    assert order(identity.incarnation) > order(first)


def test_dropped_slots_and_members_are_stored_with_the_fold(tmp_path):
    store, worker = opened(tmp_path)
    saved(store, worker, {"a": {"x/1": (1, 0), "x/2": (2, 0), "y/1": (5, 0)}})
    d = store.save({"a": {"x/folded-2": (3, 0)}}, drop=[("a", "x/1"), ("a", "x/2")], members=["y:1", "z:1"])
    worker.run_all()
    assert result_of(d) is None
    close(store)
    store, _ = opened(tmp_path)
    try:
        assert store.load() == {"a": {"x/folded-2": (3, 0), "y/1": (5, 0)}}
        assert store.load_members() == ["y:1", "z:1"]
    finally:
        close(store)
