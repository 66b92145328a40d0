# -*- test-case-name: tests.test_store -*-
"""
Where a node's counter state becomes durable.

L{SQLiteStore} keeps it in C{DIR/dcounter.sqlite3}.  Writes are
group-committed on a worker (a thread of their own in the daemon): while one
transaction commits, every write that arrives meanwhile waits for the next,
so one fsync serves many increments and the reactor never blocks on the disk.
L{MemoryStore} keeps nothing, for tests and throwaway nodes.

Every start is a new incarnation, a new replica id, whatever the directory
holds: a directory may be older than what the node handed out before (a
restored backup, a rolled-back VM snapshot, a C{.sqlite3} copied without its
C{-wal}), and a replica that resumed an old slot would have its new counts
masked by the larger copy its peers hold.  An incarnation id sorts after
every earlier one of the node (the time it started, and never below the last
one this directory saw), so that a fold slot (L{dcounter.counter}) can name
the incarnations it absorbs.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import IO, Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from dcounter.counter import Slot, SlotKey, State, order
from dcounter.idempotency import Entry, KeyState, Record
from dcounter.metrics import Metrics


@dataclass(frozen=True)
class Identity:
    node_id: str
    incarnation: str

    @cached_property  # read on every write
    def replica(self) -> str:
        """
        This node's own slot in every counter.
        """
        return f"{self.node_id}/{self.incarnation}"


#: Told that what it waits for is durable (None), or why it is not.
Durable = Callable[[Failure | None], None]


class Store(Protocol):
    """
    What a node needs of a store.
    """

    identity: Identity
    #: True for a store that keeps nothing (in memory): what it is given is
    #: as durable at once as it will ever be, and its save() is a no-op.
    keeps_nothing: bool

    def load(self) -> State:
        """The state stored so far."""

    def load_keys(self) -> dict[str, Record]:
        """The idempotency keys stored so far."""

    def load_members(self) -> list[str]:
        """The members the node last remembered (see L{save})."""

    def save(
        self,
        state: State,
        keys: KeyState | None = None,
        forget: list[str] | None = None,
        drop: list[SlotKey] | None = None,
        members: list[str] | None = None,
    ) -> Deferred[None]:
        """
        Make these slots and idempotency keys durable, forget the keys of
        C{forget} and the slots of C{drop} (folded), and remember
        C{members} (if given: the whole list), in one commit; fires once
        they are.
        """

    def save_then(self, state: State, done: Durable) -> None:
        """
        L{save} of slots alone, without a Deferred: C{done} is called with
        None once they are durable, or with the failure (at once, if the
        store is not running).  For a write's hot path, where the Deferreds
        chained on L{save} cost about 30 us a write (10 to 15% of a node's
        CPU under wrk).
        """

    def start(self) -> None: ...

    def stop(self) -> Deferred[None]:
        """Finish pending writes and release the storage."""


def new_incarnation(after: str = "", now: float | None = None) -> str:
    """
    A new incarnation id: the start time in milliseconds (11 hex digits, so
    that ids sort in time order), then 6 random hex digits.  It sorts after
    C{after} (the last one this data directory saw) even if the clock went
    back.
    """
    ms = int((time.time() if now is None else now) * 1000)
    if order(after):
        ms = max(ms, int(after[:11], 16) + 1)
    return f"{ms:011x}{secrets.token_hex(3)}"


class StoreError(Exception):
    """
    The data directory cannot be used (locked by another node, unreadable).
    """


class MemoryStore:
    """
    Keeps nothing: every start is a new incarnation with no counters.
    """

    keeps_nothing = True

    def __init__(self, node_id: str) -> None:
        self.identity = Identity(node_id, new_incarnation())

    def load(self) -> State:
        return {}

    def load_keys(self) -> dict[str, Record]:
        return {}

    def load_members(self) -> list[str]:
        return []

    def save(
        self,
        state: State,
        keys: KeyState | None = None,
        forget: list[str] | None = None,
        drop: list[SlotKey] | None = None,
        members: list[str] | None = None,
    ) -> Deferred[None]:
        return succeed(None)

    def save_then(self, state: State, done: Durable) -> None:
        done(None)

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
CREATE TABLE IF NOT EXISTS idem_entries (
    key TEXT NOT NULL,
    replica TEXT NOT NULL,
    at REAL NOT NULL,
    digest TEXT NOT NULL,
    writes TEXT NOT NULL,
    PRIMARY KEY (key, replica)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idem_settled (
    key TEXT NOT NULL,
    loser TEXT NOT NULL,
    settler TEXT NOT NULL,
    PRIMARY KEY (key, loser, settler)
) WITHOUT ROWID;
"""

_UPSERT = """
INSERT INTO slots (counter, replica, p, n) VALUES (?, ?, ?, ?)
ON CONFLICT (counter, replica) DO UPDATE SET p = max(p, excluded.p), n = max(n, excluded.n)
"""


class Worker(Protocol):
    """
    Where the store's transactions run: a thread in the daemon; in unit
    tests, the test itself (L{tests.test_store}).
    """

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def run(self, f: Callable[..., None], *args: Any) -> Deferred[None]:
        """Run C{f(*args)} off the reactor; fire with its result or its error."""


class ThreadWorker:
    """
    One thread of its own: SQLite connections may be used from one thread at
    a time, and one writer is all group commit needs.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="dcounter-store")

    def start(self) -> None:
        self._pool.start()

    def stop(self) -> None:
        self._pool.stop()

    def run(self, f: Callable[..., None], *args: Any) -> Deferred[None]:
        return deferToThreadPool(self._reactor, self._pool, f, *args)


class SQLiteStore:
    """
    The constructor takes the directory's lock (so that a second node on the
    same directory fails at once); L{start} opens the database.  twistd
    builds services before it forks into a daemon, and an SQLite connection
    must not cross a fork.
    """

    log = Logger()
    keeps_nothing = False

    def __init__(
        self,
        directory: str,
        node_id: str,
        worker: Worker,
        *,
        clock: IReactorTime | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.directory = directory
        self.path = os.path.join(directory, "dcounter.sqlite3")
        self._clock: IReactorTime = clock if clock is not None else Clock()
        self.metrics = metrics if metrics is not None else Metrics()
        try:
            os.makedirs(directory, exist_ok=True)
            self._lock: IO[str] | None = self._take_lock(os.path.join(directory, "lock"))
        except OSError as e:
            raise StoreError(f"cannot use data directory {directory!r}: {e}") from e
        last = self._check()
        self.identity = Identity(node_id, new_incarnation(last))
        self._worker = worker
        self._db: sqlite3.Connection | None = None
        self._stopped = False
        self._pending: dict[tuple[str, str], Slot] = {}
        self._pending_keys: dict[str, Record] = {}
        self._pending_forget: set[str] = set()
        self._pending_drop: set[SlotKey] = set()
        self._pending_members: list[str] | None = None
        self._waiting: list[Durable] = []
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

    def _check(self) -> str:
        """
        Fail now, before twistd forks, if the database cannot be read: a
        connection opened and closed here never crosses the fork.

        @return: the last incarnation this directory saw, or "".
        """
        try:
            db = sqlite3.connect(self.path)
            try:
                db.execute("PRAGMA schema_version").fetchone()
                has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone()
                row = has_meta and db.execute("SELECT value FROM meta WHERE key = 'incarnation'").fetchone()
                return str(row[0]) if row else ""
            finally:
                db.close()
        except sqlite3.Error as e:
            self._release()
            raise StoreError(f"cannot use data directory {self.directory!r}: {e}") from e

    def start(self) -> None:
        """
        Open the database and start the writer.

        @raise StoreError: if the directory does not hold a usable database.
        """
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                db.executescript(_SCHEMA)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('incarnation', ?)", (self.identity.incarnation,)
                )
            except sqlite3.Error:
                db.close()
                raise
        except sqlite3.Error as e:
            self._release()
            raise StoreError(f"cannot use data directory {self.directory!r}: {e}") from e
        self._db = db
        self._worker.start()

    def load(self) -> State:
        assert self._db is not None, "load() before start()"
        state: dict[str, dict[str, Slot]] = {}
        for counter, replica, p, n in self._db.execute("SELECT counter, replica, p, n FROM slots"):
            state.setdefault(counter, {})[replica] = (p, n)
        return state

    def load_keys(self) -> dict[str, Record]:
        assert self._db is not None, "load_keys() before start()"
        keys: dict[str, Record] = {}
        for key, replica, at, digest, writes in self._db.execute(
            "SELECT key, replica, at, digest, writes FROM idem_entries"
        ):
            entry = Entry(at, digest, tuple((n, a, c) for n, a, c in json.loads(writes)))
            keys.setdefault(key, Record({}, {})).entries[replica] = entry
        for key, loser, settler in self._db.execute("SELECT key, loser, settler FROM idem_settled"):
            if key in keys:
                keys[key].settled.setdefault(loser, set()).add(settler)
        return keys

    def load_members(self) -> list[str]:
        assert self._db is not None, "load_members() before start()"
        row = self._db.execute("SELECT value FROM meta WHERE key = 'members'").fetchone()
        return [str(m) for m in json.loads(row[0])] if row else []

    def stop(self) -> Deferred[None]:
        """
        Commit what is pending (saves made meanwhile included), then release
        the directory.  Saves after that fail with L{StoreError}.
        """
        idle: Deferred[None] = Deferred()
        if self._committing is None:
            idle.callback(None)
        else:
            self._idle.append(idle)

        def close(_: object) -> None:
            if self._db is not None:
                self._worker.stop()
                self._db.close()
                self._db = None
            self._release()

        return idle.addCallback(close)

    def _release(self) -> None:
        self._stopped = True
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def save(
        self,
        state: State,
        keys: KeyState | None = None,
        forget: list[str] | None = None,
        drop: list[SlotKey] | None = None,
        members: list[str] | None = None,
    ) -> Deferred[None]:
        """
        Make these slots and keys durable, forget C{forget} and the slots
        of C{drop}, and remember C{members}, in one transaction.  The result fires once they are committed,
        or fails with L{StoreError}: the database's error, or the store is
        not running.
        """
        if self._db is None:
            return fail(self._not_running())
        waiter: Deferred[None] = Deferred()
        self._pend(state)
        for key, record in (keys or {}).items():
            self._pending_forget.discard(key)
            old = self._pending_keys.get(key)
            if old is not None:
                record = Record(
                    {**old.entries, **record.entries},
                    {
                        loser: old.settled.get(loser, set()) | record.settled.get(loser, set())
                        for loser in {*old.settled, *record.settled}
                    },
                )
            self._pending_keys[key] = record
        for key in forget or ():
            self._pending_keys.pop(key, None)
            self._pending_forget.add(key)
        for slot in drop or ():
            self._pending.pop(slot, None)
            self._pending_drop.add(slot)
        if members is not None:
            self._pending_members = list(members)
        self._wait(lambda failure: waiter.callback(None) if failure is None else waiter.errback(failure))
        return waiter

    def save_then(self, state: State, done: Durable) -> None:
        if self._db is None:
            done(Failure(self._not_running()))
            return
        self._pend(state)
        self._wait(done)

    def _not_running(self) -> StoreError:
        why = "stopped" if self._stopped else "not started"
        return StoreError(f"the store is {why}: nothing more can be made durable")

    def _pend(self, state: State) -> None:
        """Put C{state}'s slots in the next commit."""
        pending = self._pending
        for counter, replicas in state.items():
            for replica, (p, n) in replicas.items():
                old_p, old_n = pending.get((counter, replica), (0, 0))
                pending[(counter, replica)] = (max(p, old_p), max(n, old_n))

    def _wait(self, done: Durable) -> None:
        """Tell C{done} of the next commit, and start it if none is under way."""
        self._waiting.append(done)
        if self._committing is None:
            self._commit_next()

    def _commit_next(self) -> None:
        batch, waiting = self._pending, self._waiting
        keys, forget, drop = self._pending_keys, self._pending_forget, self._pending_drop
        members, self._pending_members = self._pending_members, None
        self._pending, self._waiting = {}, []
        self._pending_keys, self._pending_forget, self._pending_drop = {}, set(), set()
        rows = [(c, r, p, n) for (c, r), (p, n) in batch.items()]
        entries = [
            (key, r, e.at, e.digest, json.dumps(e.writes, separators=(",", ":")))
            for key, record in keys.items()
            for r, e in record.entries.items()
        ]
        settled = [
            (key, loser, s)
            for key, record in keys.items()
            for loser, ss in record.settled.items()
            for s in ss
        ]
        started = self._clock.seconds()
        self._committing = self._worker.run(
            self._write, rows, entries, settled, sorted(forget), sorted(drop), members
        )

        def done(result: object) -> None:
            if not isinstance(result, Failure):
                self.metrics.commit(self._clock.seconds() - started, len(rows))
            # Waiters may save again: until they have all been told, those
            # saves must wait for the next transaction, not start one each.
            failure = result if isinstance(result, Failure) else None
            for waiter in waiting:
                try:
                    waiter(failure)
                except Exception:  # one waiter's bug must not leave the others waiting
                    self.log.failure("a waiter of a commit failed")
            self._committing = None
            if self._waiting:
                self._commit_next()
            else:
                idle, self._idle = self._idle, []
                for d in idle:
                    d.callback(None)

        self._committing.addBoth(done)

    def _write(
        self,
        rows: list[tuple[str, str, int, int]],
        entries: Sequence[tuple[str, str, float, str, str]] = (),
        settled: Sequence[tuple[str, str, str]] = (),
        forget: Sequence[str] = (),
        drop: Sequence[SlotKey] = (),
        members: list[str] | None = None,
    ) -> None:
        db = self._db
        assert db is not None
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                # Each statement gives up the GIL and takes it back: skip the
                # empty ones (a plain increment's commit needs one).
                if rows:
                    db.executemany(_UPSERT, rows)
                if entries:
                    db.executemany("INSERT OR IGNORE INTO idem_entries VALUES (?, ?, ?, ?, ?)", entries)
                if settled:
                    db.executemany("INSERT OR IGNORE INTO idem_settled VALUES (?, ?, ?)", settled)
                if forget:
                    db.executemany("DELETE FROM idem_entries WHERE key = ?", [(k,) for k in forget])
                    db.executemany("DELETE FROM idem_settled WHERE key = ?", [(k,) for k in forget])
                if drop:
                    db.executemany("DELETE FROM slots WHERE counter = ? AND replica = ?", drop)
                if members is not None:
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('members', ?)", (json.dumps(members),))
        except sqlite3.Error as e:
            raise StoreError(f"could not commit to the data directory: {e}") from e
