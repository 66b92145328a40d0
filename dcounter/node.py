# -*- test-case-name: tests.test_node -*-
"""
The counters of one node: local writes made durable, peers' state merged.

No networking here.  A local write is acknowledged once the store has made it
durable; only then is it offered to the replicator, and the state a node
sends to its peers never shows its own slot beyond what is durable.  A node
that crashes and restarts with its data therefore never finds a peer holding
more of its own slot than it does, and cannot count the same number twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from dcounter.counter import Counters, Slot, SlotKey, State, is_fold, slot_keys
from dcounter.idempotency import Entry, KeyState, Record
from dcounter.store import Store

T = TypeVar("T")

#: Told of local writes once they are durable, with the slots and the
#: idempotency keys they changed.
WriteListener = Callable[[list[SlotKey], list[str]], None]

#: How long an idempotency key is remembered by default: a day, as payment
#: APIs do.
KEY_WINDOW = 24 * 3600.0
#: The most idempotency keys remembered by default.
MAX_KEYS = 50_000


def digest(amounts: list[tuple[str, int]]) -> str:
    """What identifies a keyed request's body: its writes, in order."""
    return hashlib.sha256(json.dumps(amounts, separators=(",", ":")).encode()).hexdigest()[:32]


class Replay:
    """
    A keyed request seen before: the first one's answer, once durable.
    """

    def __init__(self, entry: Entry, durable: Deferred[None]) -> None:
        self.entry = entry
        self.durable = durable


class Node:
    log = Logger()

    def __init__(
        self,
        store: Store,
        cluster: str,
        clock: Any,
        *,
        key_window: float = KEY_WINDOW,
        max_keys: int = MAX_KEYS,
        max_counters: int | None = None,
    ) -> None:
        self.key_window = key_window
        self.max_keys = max_keys
        #: keys with an own part (entry or settlement) not durable yet -> waiters
        self._undurable: dict[str, list[Deferred[None]]] = {}
        #: keys -> their saves under way: a key stays undurable until the
        #: last is done (its entry's commit may end before its settlement's)
        self._saving: dict[str, int] = {}
        #: keys whose own entry is not durable yet
        self._new_entries: set[str] = set()
        self.store = store
        self.identity = store.identity
        self.cluster = cluster
        self.clock = clock
        self.started = clock.seconds()
        self.counters = Counters(max_counters=max_counters)
        self.counters.live = self.replica
        self._durable: dict[str, Slot] = {}
        self._listeners: list[WriteListener] = []
        #: Whether the state holds slots of this node's earlier incarnations
        #: that L{fold} would fold.
        self.fold_pending = False
        #: The members this node has had (kept in the store): one that is
        #: down when this node starts may hold more of its slots than it does.
        self.remembered: set[str] = set()
        #: Grows whenever what L{outgoing} or L{outgoing_keys} returns may
        #: have changed.
        self.version = 0

    def load(self) -> None:
        """
        Take up the state the store holds (once it is started).  A store
        gives a new replica at every start, so none of it is normally this
        node's own slot; if some is, it is durable.
        """
        state = self.store.load()
        counters = Counters()
        counters.live = self.replica
        counters.merge(state)  # kept whole, whatever its size: the bound is for what arrives
        counters.max_counters = self.counters.max_counters
        self.counters = counters
        for name, slots in state.items():
            if self.replica in slots:
                self._mark_durable(name, slots[self.replica])
        self.counters.merge_keys(self.store.load_keys(), self.clock.seconds(), self.key_window)
        self.version += 1
        self.fold_pending = bool(self.counters.foldable(self.replica))
        self.remembered = set(self.store.load_members())
        self._settle()

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    @property
    def replica(self) -> str:
        return self.identity.replica

    def subscribe(self, listener: WriteListener) -> None:
        self._listeners.append(listener)

    def uptime(self) -> float:
        return self.clock.seconds() - self.started

    def value(self, name: str) -> int:
        return self.counters.value(name)

    def add(self, name: str, amount: int) -> Deferred[int]:
        """
        Count C{amount} (negative for a decrement) on counter C{name}.

        @return: a Deferred that fires with the counter's value just after
            this write, once the write is durable.  Cancelling it (a client
            that went away) does not cancel the write, nor what follows it
            once durable: replication.
        @raise dcounter.counter.CounterOverflow: at once, changing nothing.
        """
        answer: Deferred[int] = Deferred()
        self.add_then(name, amount, partial(self._deliver, answer, name))
        return answer

    def add_then(self, name: str, amount: int, answer: Callable[[int | Failure], None]) -> None:
        """
        L{add} without a Deferred, for the hot path of a write that waits
        for its commit: C{answer} is called with the counter's value once
        the write is durable, or with the failure.

        @raise dcounter.counter.CounterOverflow: as L{add}, changing
            nothing; C{answer} is not called.
        """
        slot = self.counters.add(name, self.replica, amount)
        value = self.counters.value(name)

        def durable(failure: Failure | None) -> None:
            if failure is None:
                try:
                    result: int | Failure = self._durable_one(None, name, slot, value)
                except Exception:  # a listener's bug: the write is durable, its answer fails
                    result = Failure()
            else:
                result = failure
            answer(result)  # once: if it raises, the store logs it

        self.store.save_then({name: {self.replica: slot}}, durable)

    def add_now(self, name: str, amount: int) -> int:
        """
        L{add} on a node whose store keeps nothing (in memory): the value
        at once, without a Deferred made and fired for each write (the hot
        path of a node in memory spent about 10 us a request on them).

        @raise dcounter.counter.CounterOverflow: as L{add}, changing nothing.
        @raise TypeError: the store keeps something: the write would be
            answered before it is durable.  Use L{add}.
        """
        if not self.store.keeps_nothing:
            raise TypeError("add_now is for a store that keeps nothing: use add")
        slot = self.counters.add(name, self.replica, amount)
        return self._durable_one(None, name, slot, self.counters.value(name))

    def _durable_one(self, _: None, name: str, slot: Slot, value: int) -> int:
        self._mark_durable(name, slot)
        key = (name, self.replica)
        for listener in self._listeners:
            listener([key], [])
        return value

    def _answer(self, saved: Deferred[T], name: str) -> Deferred[T]:
        """
        A Deferred for the caller of a write, apart from the write itself:
        cancelling it (a client that went away) leaves the write going.
        """
        if saved.called:  # durable already (a store in memory): nothing to cancel
            return saved
        answer: Deferred[T] = Deferred()
        saved.addBoth(partial(self._deliver, answer, name))
        return answer

    def _deliver(self, answer: Deferred[T], name: str, result: T | Failure) -> None:
        """
        Fire C{answer} with C{result}, unless its caller cancelled it (and
        left): then only a failure is worth saying, in the log.
        """
        if not answer.called:
            answer.callback(result) if not isinstance(result, Failure) else answer.errback(result)
        elif isinstance(result, Failure):
            self.failed_unheard(name, result)

    def failed_unheard(self, name: str, failure: Failure) -> None:
        """A write to C{name} failed after its caller left: nobody else will say it."""
        self.log.failure("write to {name} failed after its caller left", failure, name=name)

    def add_many(self, amounts: Mapping[str, int]) -> Deferred[dict[str, int]]:
        """
        Count several amounts at once (a batch), all or nothing, made durable
        by one commit.

        @return: a Deferred that fires with each named counter's value just
            after this write, once it is durable; as L{add} otherwise.
        @raise dcounter.counter.CounterOverflow: at once, changing nothing.
        """
        slots = self.counters.add_many(self.replica, amounts)
        values = {name: self.counters.value(name) for name in slots}

        def durable(_: None) -> dict[str, int]:
            for name, slot in slots.items():
                self._mark_durable(name, slot)
            keys = [(name, self.replica) for name in slots]
            for listener in self._listeners:
                listener(keys, [])
            return values

        saved = self.store.save({name: {self.replica: slot} for name, slot in slots.items()})
        return self._answer(saved.addCallback(durable), ", ".join(sorted(slots)))

    def replay(self, key: str, amounts: list[tuple[str, int]]) -> Replay | None:
        """
        The answer to give a request with C{key} seen before, or None.

        @raise dcounter.idempotency.KeyMismatch: the key was used for a
            different request.
        """
        entry = self.counters.keys.lookup(key, digest(amounts))
        if entry is None:
            return None
        waiter: Deferred[None] = Deferred()
        if key in self._undurable:
            self._undurable[key].append(waiter)
        else:
            waiter.callback(None)
        return Replay(entry, waiter)

    def add_keyed(self, key: str, amounts: list[tuple[str, int]]) -> Deferred[Entry]:
        """
        Count C{amounts} ((counter, signed amount) pairs) under idempotency
        key C{key}, never seen before (see L{replay}): the writes and the
        key become durable in one commit.

        @return: a Deferred firing with the key's entry once durable.
        @raise dcounter.counter.CounterOverflow: at once, changing nothing.
        """
        entry = self.counters.add_keyed(key, self.replica, digest(amounts), amounts, self.clock.seconds())
        names = sorted({name for name, _ in amounts})
        slots = {name: {self.replica: self.counters.slot(name, self.replica)} for name in names}
        self._new_entries.add(key)
        return self._save(slots, [key]).addCallback(lambda _: entry)

    def _save(self, slots: dict[str, dict[str, Slot]], keys: list[str]) -> Deferred[None]:
        """
        Make own C{slots} and own C{keys} durable together; then tell the
        listeners.  The result is not cancelled by a caller that leaves.
        """
        for key in keys:
            self._undurable.setdefault(key, [])
            self._saving[key] = self._saving.get(key, 0) + 1

        def done(key: str) -> list[Deferred[None]]:
            """One save of C{key} is done: its waiters, if it was the last."""
            self._saving[key] -= 1
            if self._saving[key]:
                return []
            del self._saving[key]
            return self._undurable.pop(key, [])

        def durable(_: None) -> None:
            self.version += 1  # keys, as well as slots, go out now
            for name, replicas in slots.items():
                self._mark_durable(name, replicas[self.replica])
            for key in keys:
                self._new_entries.discard(key)
                for waiter in done(key):
                    waiter.callback(None)
            slot_keys = [(name, self.replica) for name in slots]
            for listener in self._listeners:
                listener(slot_keys, keys)

        def failed(f: Failure) -> Failure:
            for key in keys:
                for waiter in done(key):
                    waiter.errback(f)
            return f

        saved = self.store.save(slots, self.counters.keys.state(keys)).addCallbacks(durable, failed)
        answer: Deferred[None] = Deferred()

        def deliver(result: None | Failure) -> None:
            if not answer.called:
                answer.callback(result) if not isinstance(result, Failure) else answer.errback(result)
            elif isinstance(result, Failure):
                self.log.failure("a keyed write failed after its caller left", result)

        saved.addBoth(deliver)
        return answer

    def _settle(self) -> None:
        """Take back, once, the keyed writes this node counted but lost."""
        slot_keys, keys = self.counters.settle(self.replica)
        if keys:
            self.log.info("took back {n} keyed writes counted elsewhere first", n=len(keys))
            self._save(self.counters.state(slot_keys), keys).addErrback(
                lambda f: self.log.failure("could not store settled keys", f)
            )

    def expire_keys(self) -> list[str]:
        """Forget the keys past the window or beyond the count bound."""
        gone = self.counters.keys.expire(self.clock.seconds(), self.key_window, self.max_keys)
        if gone:
            self.version += 1
            self.store.save({}, forget=gone).addErrback(
                lambda f: self.log.failure("could not forget keys", f)
            )
        return gone

    def raise_to(self, name: str, target: int) -> Deferred[int]:
        """
        The original's /sync: raise counter C{name} to at least C{target}, by
        counting the difference in this node's own slot.
        """
        current = self.counters.value(name)
        if target <= current:
            return succeed(current)
        return self.add(name, target - current)

    def merge(self, state: State, keys: KeyState | None = None) -> list[SlotKey]:
        """
        Merge a peer's state and keys; store what grew; take back what this
        node counted of a key another replica won.

        @return: the slots that grew.
        """
        dropped: list[SlotKey] = []
        refused = self.counters.refused_folds
        grown = self.counters.merge(state, dropped)
        if self.counters.refused_folds != refused:
            self.log.error(
                "refused a fold of this node's incarnations that would take in its live one "
                "({replica}): this host's clock is behind the one that started an earlier "
                "incarnation; restart this node once the clock is right",
                replica=self.replica,
            )
        new_keys = self.counters.merge_keys(keys, self.clock.seconds(), self.key_window) if keys else []
        if new_keys:
            self.version += 1
            self.store.save({}, self.counters.keys.state(new_keys)).addErrback(
                lambda f: self.log.failure("could not store merged keys", f)
            )
            self._settle()
        if grown:
            self.version += 1
            changed = self.counters.state(grown)
            own = {name: slots[self.replica] for name, slots in state.items() if self.replica in slots}
            for name, slot in own.items():
                # Peers hold this much of our own slot already (we lost it,
                # or a backup was restored): it is as safe as durable.  Only
                # what they sent: the merged slot may hold pending writes.
                self._mark_durable(name, slot)
            prefix = self.node_id + "/"
            if any(r.startswith(prefix) and r != self.replica and not is_fold(r) for _, r in grown):
                self.fold_pending = True  # a slot of an earlier incarnation we did not know
            self.store.save(changed, drop=dropped).addErrback(
                lambda f: self.log.failure("could not store merged state", f)
            )
        return grown

    def remember(self, member: str, known: bool = True) -> None:
        """Remember C{member} as a member (or, with C{known=False}, forget it), durably."""
        if (member in self.remembered) == known:
            return
        if known:
            self.remembered.add(member)
        else:
            self.remembered.discard(member)
        self.store.save({}, members=sorted(self.remembered)).addErrback(
            lambda f: self.log.failure("could not store the members", f)
        )

    def has_others(self) -> bool:
        """Whether the state holds slots of other nodes: this node has had peers."""
        return self.counters.holds_others(self.node_id)

    def fold(self) -> int:
        """
        Fold the slots of this node's earlier incarnations, in every
        counter, into one fold slot (see L{dcounter.counter}); store it,
        forget them, and offer the fold slots to peers.  The caller knows
        that every member has shown this node what it holds of them.

        @return: the number of slots folded away.
        """
        dropped: list[SlotKey] = []
        folds = self.counters.fold(self.replica, dropped)
        self.fold_pending = False
        if not folds:
            return 0
        self.version += 1
        keys = slot_keys(folds)
        self.log.info(
            "folded {slots} slots of earlier incarnations of this node into {folds}",
            slots=len(dropped),
            folds=len(keys),
        )
        self.store.save(folds, drop=dropped).addErrback(
            lambda f: self.log.failure("could not store folds", f)
        )
        for listener in self._listeners:
            listener(keys, [])
        return len(dropped)

    def durable(self) -> Deferred[None]:
        """
        Fires once everything merged or written so far is durable (the
        store commits in order), or fails with the store's error.
        """
        return self.store.save({})

    def outgoing(self, keys: Iterable[SlotKey] | None = None) -> State:
        """
        State to send to peers: all of it, or the slots named by C{keys},
        with this node's own slots as far as they are durable.
        """
        state = self.counters.state(keys)
        for name, slots in state.items():
            if self.replica in slots:
                durable = self._durable.get(name)
                if durable is None:
                    del slots[self.replica]
                else:
                    slots[self.replica] = durable
        return {name: slots for name, slots in state.items() if slots}

    def outgoing_keys(self, keys: Iterable[str] | None = None) -> dict[str, Record]:
        """
        Idempotency keys to send to peers: all, or C{keys}; not those with
        a part of this node's not durable yet (they go with their slots).
        """
        state = self.counters.keys.state(keys)
        for key in self._undurable:
            record = state.get(key)
            if record is None:
                continue
            # Only our own part waits, as our slot does: other replicas'
            # entries go with the slots of theirs that we send too.
            if key in self._new_entries:
                record.entries.pop(self.replica, None)
            for settlers in record.settled.values():
                settlers.discard(self.replica)
            record.settled = {
                loser: s for loser, s in record.settled.items() if s and loser in record.entries
            }
            if not record.entries:
                del state[key]
        return state

    def own_slots(self) -> dict[str, Slot]:
        """This node's own slot in each counter, as far as it is durable."""
        return dict(self._durable)

    def own_slot(self, name: str) -> Slot:
        """This node's own slot in counter C{name}, durable or not (yet)."""
        return self.counters.slot(name, self.replica)

    def _mark_durable(self, name: str, slot: Slot) -> None:
        self.version += 1
        p, n = self._durable.get(name, (0, 0))
        self._durable[name] = (max(p, slot[0]), max(n, slot[1]))


class NodeStateService(Service):
    """
    The node's lifetime: open its store and take up its state on start; on
    stop, finish the last commit.  (twistd calls startService after it forks
    into a daemon, where the store may open its database.)
    """

    def __init__(self, node: Node) -> None:
        self.node = node

    def startService(self) -> None:
        self.node.store.start()
        self.node.load()
        super().startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.node.store.stop()
