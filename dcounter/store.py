# -*- test-case-name: tests.test_store -*-
"""
Where a node's identity and counter state become durable.

L{SQLiteStore} keeps both in C{DIR/dcounter.sqlite3}.  Writes are
group-committed on a thread of their own: while one transaction commits,
every write that arrives meanwhile waits for the next, so one fsync serves
many increments and the reactor never blocks on the disk.  L{MemoryStore}
keeps nothing, for tests and throwaway nodes.

A store that finds its identity keeps its replica id; a store started empty
makes a new incarnation, so a node that lost its data can never overwrite its
own old slot with a smaller number.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import sqlite3
from dataclasses import dataclass
from typing import IO, Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from dcounter.counter import Slot, State
from dcounter.metrics import Metrics


@dataclass(frozen=True)
class Identity:
    node_id: str
    incarnation: str

    @property
    def replica(self) -> str:
        """
        This node's own slot in every counter.
        """
        return f"{self.node_id}/{self.incarnation}"


class Store(Protocol):
    """
    What a node needs of a store.
    """

    identity: Identity

    def load(self) -> State:
        """The state stored so far."""

    def save(self, state: State) -> Deferred[None]:
        """Make these slots durable; fires once they are."""

    def start(self) -> None: ...

    def stop(self) -> Deferred[None]:
        """Finish pending writes and release the storage."""


def new_incarnation() -> str:
    return secrets.token_hex(6)


class StoreError(Exception):
    """
    The data directory cannot be used (locked by another node, unreadable).
    """


class MemoryStore:
    """
    Keeps nothing: every start is a new incarnation with no counters.
    """

    def __init__(self, node_id: str) -> None:
        self.identity = Identity(node_id, new_incarnation())

    def load(self) -> State:
        return {}

    def save(self, state: State) -> Deferred[None]:
        return succeed(None)

    def start(self) -> None:
        pass

    def stop(self) -> Deferred[None]:
        return succeed(None)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS slots (
    counter TEXT NOT NULL,
    replica TEXT NOT NULL,
    p INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (counter, replica)
) WITHOUT ROWID;
"""

_UPSERT = """
INSERT INTO slots (counter, replica, p, n) VALUES (?, ?, ?, ?)
ON CONFLICT (counter, replica) DO UPDATE SET p = max(p, excluded.p), n = max(n, excluded.n)
"""


class SQLiteStore:
    log = Logger()

    def __init__(self, directory: str, node_id: str, reactor: Any, metrics: Metrics | None = None) -> None:
        self._reactor = reactor
        self.metrics = metrics if metrics is not None else Metrics()
        try:
            os.makedirs(directory, exist_ok=True)
            self._lock = self._take_lock(os.path.join(directory, "lock"))
            self._db = sqlite3.connect(
                os.path.join(directory, "dcounter.sqlite3"),
                check_same_thread=False,
                isolation_level=None,
            )
            self._db.executescript(_SCHEMA)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self.identity = self._load_identity(node_id)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot use data directory {directory!r}: {e}") from e
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="dcounter-store")
        self._pending: dict[tuple[str, str], Slot] = {}
        self._waiting: list[Deferred[None]] = []
        self._committing: Deferred[None] | None = None
        self._idle: list[Deferred[None]] = []

    @staticmethod
    def _take_lock(path: str) -> IO[str]:
        lock = open(path, "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise StoreError(f"{path} is locked: another dcounter node uses this data directory") from None
        return lock

    def _load_identity(self, node_id: str) -> Identity:
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        if meta.get("node_id") == node_id and meta.get("incarnation"):
            return Identity(node_id, meta["incarnation"])
        # New directory, or a node now known by another address: a new
        # replica.  Slots of the old one stay, as state like any other.
        identity = Identity(node_id, new_incarnation())
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [("node_id", node_id), ("incarnation", identity.incarnation)],
            )
        return identity

    def load(self) -> State:
        state: dict[str, dict[str, Slot]] = {}
        for counter, replica, p, n in self._db.execute("SELECT counter, replica, p, n FROM slots"):
            state.setdefault(counter, {})[replica] = (p, n)
        return state

    def start(self) -> None:
        self._pool.start()

    def stop(self) -> Deferred[None]:
        """
        Commit what is pending, then release the directory.
        """
        idle: Deferred[None] = Deferred()
        if self._committing is None:
            idle.callback(None)
        else:
            self._idle.append(idle)

        def close(_: object) -> None:
            self._pool.stop()
            self._db.close()
            self._lock.close()

        return idle.addCallback(close)

    def save(self, state: State) -> Deferred[None]:
        """
        Make these slots durable.  The result fires once they are committed,
        or fails with the database's error.
        """
        pending = self._pending
        for counter, replicas in state.items():
            for replica, (p, n) in replicas.items():
                old_p, old_n = pending.get((counter, replica), (0, 0))
                pending[(counter, replica)] = (max(p, old_p), max(n, old_n))
        waiter: Deferred[None] = Deferred()
        self._waiting.append(waiter)
        if self._committing is None:
            self._commit_next()
        return waiter

    def _commit_next(self) -> None:
        batch, waiting = self._pending, self._waiting
        self._pending, self._waiting = {}, []
        rows = [(c, r, p, n) for (c, r), (p, n) in batch.items()]
        started = self._reactor.seconds()
        self._committing = deferToThreadPool(self._reactor, self._pool, self._write, rows)

        def done(result: object) -> None:
            if not isinstance(result, Failure):
                self.metrics.commit(self._reactor.seconds() - started, len(rows))
            # Waiters' callbacks may save again: until they have all run, those
            # saves must wait for the next transaction, not start one each.
            for waiter in waiting:
                waiter.errback(result) if isinstance(result, Failure) else waiter.callback(None)
            self._committing = None
            if self._waiting:
                self._commit_next()
            else:
                idle, self._idle = self._idle, []
                for d in idle:
                    d.callback(None)

        self._committing.addBoth(done)

    def _write(self, rows: list[tuple[str, str, int, int]]) -> None:
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(_UPSERT, rows)
        except sqlite3.Error as e:
            raise StoreError(f"could not commit to the data directory: {e}") from e


class StoreService(Service):
    """
    Runs a store's writer for as long as the node runs; on stop, waits for
    the last commit.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def startService(self) -> None:
        super().startService()
        self.store.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.store.stop()
