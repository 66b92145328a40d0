"""
Tests for dcounter.store: identity, locking and group commit.

Tests that commit run the store's real thread pool, so they run on the global
reactor (pytest-twisted); the others never start it.
"""

from __future__ import annotations

import sqlite3

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock

from dcounter.counter import MAX_SLOT
from dcounter.store import Identity, MemoryStore, SQLiteStore, StoreError, StoreService

NODE = "10.0.0.1:8080"
OTHER = "10.0.0.9:8080"


def opened(directory, node_id: str = NODE, clock=None) -> SQLiteStore:
    """A store that will not commit: its reactor is a Clock nobody runs."""
    return SQLiteStore(str(directory), node_id, clock or Clock())


def close(store: SQLiteStore) -> None:
    """Close a store with nothing in flight: stop() fires at once."""
    done = []
    store.stop().addCallback(done.append)
    assert done == [None]


def record_transactions(store: SQLiteStore) -> list[list[tuple[str, str, int, int]]]:
    """Record the rows of every transaction the store commits, in order."""
    batches: list[list[tuple[str, str, int, int]]] = []
    write = store._write

    def recording(rows):
        batches.append(sorted(rows))
        return write(rows)

    store._write = recording
    return batches


@pytest.fixture
def start_store(tmp_path):
    """
    Opens SQLiteStores on the real reactor with their writers started, and
    ends the writer threads of any a failed test left running: a live
    non-daemon thread would keep pytest from exiting.
    """
    made: list[SQLiteStore] = []

    def start(node_id: str = NODE, *, writer: bool = True) -> SQLiteStore:
        store = SQLiteStore(str(tmp_path), node_id, reactor)
        if writer:
            store.start()
        made.append(store)
        return store

    yield start
    for store in made:
        if store._pool.started:
            store._pool.stop()


def reopen_and_load(directory, node_id: str = NODE) -> tuple[Identity, dict]:
    store = opened(directory, node_id)
    try:
        return store.identity, store.load()
    finally:
        close(store)


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
    fired = []
    store.save({"c": {"r": (1, 0)}}).addCallback(fired.append)
    assert fired == [None]
    assert store.load() == {}
    store.stop().addCallback(fired.append)
    assert fired == [None, None]


# Identity.


def test_fresh_directory_gets_a_new_incarnation(tmp_path):
    """Two empty directories give two different replicas of the same node."""
    a, b = opened(tmp_path / "a"), opened(tmp_path / "b")
    try:
        assert a.identity.node_id == b.identity.node_id == NODE
        assert a.identity.incarnation != b.identity.incarnation
        assert a.identity.incarnation
        assert a.load() == {}
    finally:
        close(a)
        close(b)


def test_same_node_keeps_its_incarnation_across_reopen(tmp_path):
    """Reopening a directory under the same node id keeps the replica id."""
    store = opened(tmp_path)
    first = store.identity
    close(store)
    for _ in range(2):
        identity, _state = reopen_and_load(tmp_path)
        assert identity == first


def test_other_node_id_gets_a_new_incarnation(tmp_path):
    """A directory reopened under another node id is a new replica."""
    store = opened(tmp_path)
    first = store.identity
    close(store)
    identity, _ = reopen_and_load(tmp_path, OTHER)
    assert identity.node_id == OTHER
    assert identity.incarnation != first.incarnation
    # ... and it keeps that new identity from then on.
    assert reopen_and_load(tmp_path, OTHER)[0] == identity


def test_locked_directory_is_refused(tmp_path):
    """A second store on a directory in use raises StoreError, and the first is unharmed."""
    store = opened(tmp_path)
    with pytest.raises(StoreError, match="locked"):
        opened(tmp_path)
    with pytest.raises(StoreError):
        opened(tmp_path, OTHER)
    assert store.load() == {}
    identity = store.identity
    close(store)
    # Released on stop.
    assert reopen_and_load(tmp_path)[0] == identity


def test_unusable_directory_raises_store_error(tmp_path):
    """A data directory that is a file raises StoreError, not OSError."""
    path = tmp_path / "file"
    path.write_text("not a directory")
    with pytest.raises(StoreError):
        opened(path)


def test_corrupt_database_raises_store_error(tmp_path):
    """A database file that is not SQLite raises StoreError."""
    (tmp_path / "dcounter.sqlite3").write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(StoreError):
        opened(tmp_path)


# Commits (real thread pool, global reactor).


@pytest_twisted.ensureDeferred
async def test_saved_slots_load_back(tmp_path, start_store):
    """Slots saved are there when the directory is reopened, with the same identity."""
    store = start_store()
    identity = store.identity
    state = {"default": {identity.replica: (5, 2), "peer/x": (1, 0)}, "b": {"peer/x": (0, MAX_SLOT)}}
    assert await store.save(state) is None
    await store.stop()
    assert reopen_and_load(tmp_path) == (identity, state)


@pytest_twisted.ensureDeferred
async def test_other_node_id_keeps_old_slots(tmp_path, start_store):
    """Under a new node id the old replica's slots stay, as state like any other."""
    store = start_store()
    old = store.identity.replica
    await store.save({"default": {old: (7, 1)}})
    await store.stop()
    identity, state = reopen_and_load(tmp_path, OTHER)
    assert identity.replica != old
    assert state == {"default": {old: (7, 1)}}


@pytest_twisted.ensureDeferred
async def test_slots_keep_the_maximum(tmp_path, start_store):
    """Each stored slot keeps the max of P and of N, within and across transactions."""
    store = start_store()
    await store.save({"c": {"r": (5, 1)}})
    await store.save({"c": {"r": (3, 4)}})  # a later, partly smaller slot
    # Several saves in one transaction.
    await gatherResults([store.save({"c": {"s": (9, 0)}}), store.save({"c": {"s": (2, 6)}})])
    await store.save({"c": {"r": (0, 0)}})
    assert store.load() == {"c": {"r": (5, 4), "s": (9, 6)}}
    await store.stop()


@pytest_twisted.ensureDeferred
async def test_saves_while_committing_become_one_transaction(tmp_path, start_store):
    """
    While one transaction commits, every save that arrives joins the next
    one: twenty saves are two transactions, the second holding each slot's
    maximum.
    """
    store = start_store()
    batches = record_transactions(store)
    first = store.save({"c": {"r": (1, 0)}})
    rest = [store.save({"c": {"r": (i, i % 3)}, "d": {f"r{i % 2}": (i, 0)}}) for i in range(2, 21)]
    assert await gatherResults([first, *rest]) == [None] * 20
    assert batches == [
        [("c", "r", 1, 0)],
        [("c", "r", 20, 2), ("d", "r0", 20, 0), ("d", "r1", 19, 0)],
    ]
    # A save after all that is its own transaction.
    await store.save({"c": {"r": (21, 0)}})
    assert len(batches) == 3
    await store.stop()


@pytest_twisted.ensureDeferred
async def test_save_fires_only_after_commit(tmp_path, start_store):
    """A save's Deferred has not fired when save() returns: the commit is on another thread."""
    store = start_store()
    saved = store.save({"c": {"r": (1, 0)}})
    assert not saved.called
    await saved
    # Visible to another connection once acknowledged.
    other = sqlite3.connect(str(tmp_path / "dcounter.sqlite3"))
    try:
        assert other.execute("SELECT counter, replica, p, n FROM slots").fetchall() == [("c", "r", 1, 0)]
    finally:
        other.close()
    await store.stop()


@pytest_twisted.ensureDeferred
async def test_saves_made_from_save_callbacks_are_group_committed(tmp_path, start_store):
    """
    Saves made by the callbacks of one transaction's waiters (a client
    resuming after its write is durable) all wait for one next
    transaction, never start overlapping ones.
    """
    store = start_store()
    batches = record_transactions(store)
    follow_ups = []

    def save_again(_, replica):
        follow_ups.append(store.save({"c": {replica: (1, 0)}}))

    first = store.save({"c": {"r": (1, 0)}})
    second = store.save({"c": {"r": (2, 0)}}).addCallback(save_again, "x")
    third = store.save({"c": {"r": (3, 0)}}).addCallback(save_again, "y")
    await gatherResults([first, second, third])
    await gatherResults(follow_ups)
    assert batches == [
        [("c", "r", 1, 0)],
        [("c", "r", 3, 0)],
        [("c", "x", 1, 0), ("c", "y", 1, 0)],
    ]
    await store.stop()


@pytest_twisted.ensureDeferred
async def test_stop_waits_for_pending_commits(tmp_path, start_store):
    """stop() fires after every save made before it is committed and acknowledged."""
    store = start_store()
    events: list[object] = []
    saves = [
        store.save({"c": {"r": (i, 0)}}).addCallback(lambda _, i=i: events.append(i)) for i in range(1, 6)
    ]
    stopped = store.stop().addCallback(lambda _: events.append("stopped"))
    assert not stopped.called
    await stopped
    assert all(d.called for d in saves)
    assert events == [1, 2, 3, 4, 5, "stopped"]
    assert reopen_and_load(tmp_path)[1] == {"c": {"r": (5, 0)}}


@pytest_twisted.ensureDeferred
async def test_stop_waits_for_saves_made_while_stopping(tmp_path, start_store):
    """A save made by a waiter's callback while stopping is committed before stop() fires."""
    store = start_store()
    events: list[object] = []

    def save_again(_):
        store.save({"c": {"late": (1, 0)}}).addCallback(lambda _: events.append("late"))

    store.save({"c": {"r": (1, 0)}})
    store.save({"c": {"r": (2, 0)}}).addCallback(save_again)
    await store.stop().addCallback(lambda _: events.append("stopped"))
    assert events == ["late", "stopped"]
    assert reopen_and_load(tmp_path)[1] == {"c": {"r": (2, 0), "late": (1, 0)}}


@pytest_twisted.ensureDeferred
async def test_failed_commit_fails_its_waiters_only(tmp_path, start_store):
    """A transaction that fails errbacks its saves with StoreError; later saves still commit."""
    store = start_store()
    saboteur = sqlite3.connect(str(tmp_path / "dcounter.sqlite3"), isolation_level=None)
    saboteur.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON slots WHEN NEW.counter = 'bad'"
        " BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    saboteur.close()
    await store.save({"c": {"r": (1, 0)}})
    with pytest.raises(StoreError, match="refused"):
        await store.save({"bad": {"r": (1, 0)}, "c": {"r": (2, 0)}})
    await store.save({"c": {"s": (1, 0)}})
    # The failed transaction left nothing behind.
    assert store.load() == {"c": {"r": (1, 0), "s": (1, 0)}}
    await store.stop()


@pytest_twisted.ensureDeferred
async def test_store_service_runs_the_writer(tmp_path, start_store):
    """StoreService starts the writer with the service and waits for commits on stop."""
    store = start_store(writer=False)
    service = StoreService(store)
    service.startService()
    assert service.running
    saved = store.save({"c": {"r": (4, 0)}})
    await service.stopService()
    assert saved.called
    assert not service.running
    assert reopen_and_load(tmp_path)[1] == {"c": {"r": (4, 0)}}
