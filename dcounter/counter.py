# -*- test-case-name: tests.test_counter -*-
"""
Named PN-counters: the replicated state of a node.

Pure Python, no I/O and no Twisted.  Each counter holds, per replica, a
grow-only total of increments (P) and of decrements (N); its value is
sum(P) - sum(N).  Merging takes the per-replica maximum of each total, so it
is commutative, associative and idempotent: state may arrive any number of
times, in any order, by any path, and every replica converges.

A replica only ever adds to its own slot.  Everything it learns from others
arrives through `merge`.

A replica id is C{NODE/INCARNATION}: every start of a node is a new
incarnation, whose id sorts after its earlier ones (see
L{dcounter.store.new_incarnation}).  The slots of a node's retired
incarnations are frozen; the node folds them, once every member has shown it
what it holds of them, into one *fold slot* C{NODE/folded-J} per counter: the
sum of every slot of NODE whose incarnation is J or earlier, J the latest it
absorbs.  A fold slot supersedes, wherever it arrives, the slots it absorbs
(and any earlier fold slot), in the same merge: a counter's value never
counts a slot twice, and state stops growing with restarts (see L{absorbs}).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from dcounter.idempotency import Entry, KeyBook, KeyState, node_of

#: The largest total one slot may hold: SQLite's INTEGER is a signed 64-bit
#: number, and every store must be able to keep every slot.
MAX_SLOT = 2**63 - 1
#: No counter's value, as served, passes these: clients that decode int64 (as
#: the original's Go clients do) read every value.  A local write that would
#: take a value past them is refused; merged state past them (many replicas,
#: each within its slot) is served clamped.
MAX_VALUE = 2**63 - 1
MIN_VALUE = -(2**63)

#: (P, N): the increments and decrements one replica made to one counter.
Slot = tuple[int, int]
#: counter name -> replica id -> slot.  The shape of state on the wire and in
#: the store.
State = Mapping[str, Mapping[str, Slot]]
#: (counter name, replica id): the address of one slot.
SlotKey = tuple[str, str]


def slot_keys(state: State) -> list[SlotKey]:
    """The address of each slot in C{state}."""
    return [(name, replica) for name, slots in state.items() for replica in slots]


#: The counter that the original single-counter endpoints serve.
DEFAULT_COUNTER = "default"

#: What a fold slot's incarnation starts with.
FOLDED = "folded-"


def _unfolded(incarnation: str) -> str:
    """The incarnation a fold slot's incarnation names (any other: itself)."""
    return incarnation[len(FOLDED) :] if incarnation.startswith(FOLDED) else incarnation


def order(incarnation: str) -> str:
    """
    A key that sorts a node's incarnations in the order they started: the
    incarnation itself (a fixed-width hex time, then random digits); an
    incarnation of an older release (12 random hex digits) sorts first.
    """
    incarnation = _unfolded(incarnation)
    return incarnation if len(incarnation) == 17 else ""


def fold_replica(node: str, latest: str) -> str:
    """The replica id of a fold slot absorbing NODE's incarnations up to C{latest}."""
    return f"{node}/{FOLDED}{_unfolded(latest)}"


def is_fold(replica: str) -> bool:
    return replica.rpartition("/")[2].startswith(FOLDED)


def _sort_key(incarnation: str) -> tuple[str, str]:
    """
    Incarnations in start order; those of an older release (all of order
    "") among themselves by id, as L{Counters.fold} picks the latest.
    """
    incarnation = _unfolded(incarnation)
    return order(incarnation), incarnation


def absorbs(fold: str, replica: str) -> bool:
    """
    Whether fold slot C{fold} supersedes C{replica}'s slot: one of the same
    node, of an incarnation no later than the fold's (or an earlier fold).
    """
    node, _, inc = replica.rpartition("/")
    fnode, _, finc = fold.rpartition("/")
    if node != fnode or replica == fold:
        return False
    latest = _sort_key(finc)
    if inc.startswith(FOLDED):
        return _sort_key(inc) < latest
    return _sort_key(inc) <= latest


class CounterOverflow(ValueError):
    """
    Adding this amount would take a slot past L{MAX_SLOT}, or the counter's
    value past L{MAX_VALUE} or L{MIN_VALUE}.
    """


class TooManyCounters(ValueError):
    """
    A write would create a counter beyond the most this node keeps.
    """


def _served(value: int) -> int:
    return min(MAX_VALUE, max(MIN_VALUE, value))


class Counters:
    """
    A map of counter name to PN-counter.
    """

    def __init__(self, state: State | None = None, *, max_counters: int | None = None) -> None:
        """
        @param state: state to start from (kept whole, whatever its size).
        @param max_counters: the most counters, besides L{DEFAULT_COUNTER},
            that a write or a merge may bring to this map; None for no bound.
        """
        self._slots: dict[str, dict[str, Slot]] = {}
        self._values: dict[str, int] = {}
        #: counter -> node -> its fold slot there: the counters with one.
        self._folded: dict[str, dict[str, str]] = {}
        #: This node's live replica, which no fold slot may supersede (set by
        #: the node), and the fold slots refused for superseding it.
        self.live: str | None = None
        self.refused_folds = 0
        self.max_counters: int | None = None
        #: counters in merged state left out for want of room, since start.
        self.refused = 0
        #: Idempotency keys: what they take back from values is part of them.
        self.keys = KeyBook()
        if state:
            self.merge(state)
        self.max_counters = max_counters

    def _room_for(self, name: str) -> bool:
        if self.max_counters is None or name in self._slots or name == DEFAULT_COUNTER:
            return True
        return len(self._slots) - (DEFAULT_COUNTER in self._slots) < self.max_counters

    def __contains__(self, name: object) -> bool:
        return name in self._slots

    def __len__(self) -> int:
        return len(self._slots)

    def value(self, name: str) -> int:
        """
        The value of counter C{name}: 0 for a counter never written.
        """
        return _served(self._values.get(name, 0) + self.keys.adjustment(name))

    def values(self) -> dict[str, int]:
        """
        Every counter's value, by name.
        """
        adjust = self.keys.adjustments()
        return {name: _served(v + adjust.get(name, 0)) for name, v in self._values.items()}

    def slot(self, name: str, replica: str) -> Slot:
        return self._slots.get(name, {}).get(replica, (0, 0))

    def add(self, name: str, replica: str, amount: int) -> Slot:
        """
        Count C{amount} (positive: an increment, negative: a decrement) in
        C{replica}'s own slot of counter C{name}; return the new slot.

        @raise CounterOverflow: if the slot's total would exceed L{MAX_SLOT},
            or the value would pass L{MAX_VALUE} or L{MIN_VALUE}.
        @raise TooManyCounters: if C{name} is new and there is no room.
        @raise ValueError: for an amount of 0.
        """
        if amount == 0:
            raise ValueError("amount must not be 0")
        if not self._room_for(name):
            raise TooManyCounters(
                f"this node keeps at most {self.max_counters} counters besides {DEFAULT_COUNTER!r}"
            )
        slot = self._grown(name, replica, amount)
        self._slots.setdefault(name, {})[replica] = slot
        self._values[name] = self._values.get(name, 0) + amount
        return slot

    def _grown(self, name: str, replica: str, amount: int) -> Slot:
        """
        C{replica}'s slot of C{name} once C{amount} is counted in it; nothing
        changes yet.  Raises as L{add} does for the amount and the bounds.
        """
        if amount == 0:
            raise ValueError("amount must not be 0")
        if not MIN_VALUE <= self._values.get(name, 0) + amount <= MAX_VALUE:
            raise CounterOverflow(f"counter {name!r} would pass {MAX_VALUE if amount > 0 else MIN_VALUE}")
        p, n = self.slot(name, replica)
        if amount > 0:
            p += amount
        else:
            n -= amount
        if p > MAX_SLOT or n > MAX_SLOT:
            raise CounterOverflow(f"counter {name!r} would overflow")
        return (p, n)

    def add_many(self, replica: str, amounts: Mapping[str, int]) -> dict[str, Slot]:
        """
        Count several amounts at once, in C{replica}'s own slots: all of them,
        or (on an error) none.

        @return: the new slot of each counter named.
        @raise CounterOverflow: as L{add}, for any of them.
        @raise TooManyCounters: if the new counters named do not all fit.
        @raise ValueError: for an amount of 0.
        """
        slots: dict[str, Slot] = {}
        new = [name for name in amounts if name not in self._slots and name != DEFAULT_COUNTER]
        if new and self.max_counters is not None:
            named = len(self._slots) - (DEFAULT_COUNTER in self._slots)
            if named + len(new) > self.max_counters:
                raise TooManyCounters(
                    f"this node keeps at most {self.max_counters} counters besides {DEFAULT_COUNTER!r}"
                )
        for name, amount in amounts.items():
            slots[name] = self._grown(name, replica, amount)
        for name, slot in slots.items():
            self._slots.setdefault(name, {})[replica] = slot
            self._values[name] = self._values.get(name, 0) + amounts[name]
        return slots

    def merge(self, state: State, dropped: list[SlotKey] | None = None) -> list[SlotKey]:
        """
        Merge another replica's state (whole or partial) into this one.

        @param dropped: if given, the keys of the slots that a fold slot in
            C{state} superseded (and that are gone) are appended to it.
        @return: the keys of the slots that grew (or arrived).
        """
        grown: list[SlotKey] = []
        for name, replicas in state.items():
            if not self._room_for(name):
                self.refused += 1
                continue
            mine = self._slots.setdefault(name, {})
            delta = 0
            folds = [r for r in replicas if FOLDED in r and is_fold(r)]
            if folds or name in self._folded:
                delta += self._take_folds(name, mine, replicas, folds, grown, dropped)
            for replica, (p, n) in replicas.items():
                if replica in folds:
                    continue
                old = mine.get(replica)
                if old is None:
                    if name in self._folded and self._superseded(name, replica):
                        continue
                    old = (0, 0)
                old_p, old_n = old
                new_p, new_n = max(old_p, p), max(old_n, n)
                if (new_p, new_n) != (old_p, old_n):
                    mine[replica] = (new_p, new_n)
                    delta += (new_p - old_p) - (new_n - old_n)
                    grown.append((name, replica))
            if not mine:
                del self._slots[name]
            else:
                self._values[name] = self._values.get(name, 0) + delta
        return grown

    def _superseded(self, name: str, replica: str) -> bool:
        fold = self._folded[name].get(node_of(replica))
        return fold is not None and absorbs(fold, replica)

    def _take_folds(
        self,
        name: str,
        mine: dict[str, Slot],
        replicas: Mapping[str, Slot],
        folds: list[str],
        grown: list[SlotKey],
        dropped: list[SlotKey] | None,
    ) -> int:
        """
        Take up the fold slots among C{replicas} that supersede ours: drop
        what each absorbs.  Returns the change in the counter's value.
        """
        delta = 0
        known = self._folded.setdefault(name, {})
        for fold in folds:
            node = node_of(fold)
            current = known.get(node)
            if current == fold:
                # Two copies of one fold (its owner folded again after a crash
                # lost the first): each is a lower bound of the same sum.
                old_p, old_n = mine[fold]
                p, n = replicas[fold]
                new_p, new_n = max(old_p, p), max(old_n, n)
                if (new_p, new_n) != (old_p, old_n):
                    mine[fold] = (new_p, new_n)
                    delta += (new_p - old_p) - (new_n - old_n)
                    grown.append((name, fold))
                continue
            if current is not None and absorbs(current, fold):
                continue  # one ours supersedes
            if self.live is not None and absorbs(fold, self.live):
                self.refused_folds += 1  # it would swallow the live slot: a clock gone back
                continue
            for replica in [r for r in mine if absorbs(fold, r)]:
                p, n = mine.pop(replica)
                delta -= p - n
                if dropped is not None:
                    dropped.append((name, replica))
            p, n = replicas[fold]
            mine[fold] = (p, n)
            delta += p - n
            known[node] = fold
            grown.append((name, fold))
        if not known:
            del self._folded[name]
        return delta

    def foldable(self, replica: str) -> list[str]:
        """
        The counters where C{replica}'s node has slots of earlier
        incarnations that L{fold} would fold: two or more, or one that is
        not a fold slot.
        """
        return [name for name, _ in self._foldable(replica)]

    def _foldable(self, replica: str) -> Iterator[tuple[str, list[str]]]:
        """Each counter L{foldable} names, with the slots L{fold} would fold."""
        for name, slots in self._slots.items():
            retired = self._retired(slots, replica)
            if len(retired) > 1 or (retired and not is_fold(retired[0])):
                yield name, retired

    def holds_others(self, node: str) -> bool:
        """Whether any slot here is of another node than C{node}."""
        prefix = node + "/"
        return any(not r.startswith(prefix) for slots in self._slots.values() for r in slots)

    @staticmethod
    def _retired(slots: Mapping[str, Slot], replica: str) -> list[str]:
        node, _, live = replica.rpartition("/")
        prefix, latest = node + "/", order(live)
        return [
            r for r in slots if r.startswith(prefix) and r != replica and order(r.rpartition("/")[2]) < latest
        ]

    def fold(self, replica: str, dropped: list[SlotKey]) -> dict[str, dict[str, Slot]]:
        """
        Fold, in every counter, the slots of C{replica}'s node's earlier
        incarnations (frozen: only merges grow them) into one fold slot,
        their sum.  Values do not change.

        Only sound once this map holds at least what any replica holds of
        those slots: a copy larger than what was folded is superseded too.

        @param dropped: the keys of the slots folded are appended to it.
        @return: the fold slots made, as state.
        """
        folds: dict[str, dict[str, Slot]] = {}
        for name, retired in list(self._foldable(replica)):
            slots = self._slots[name]
            latest = max(retired, key=lambda r: _sort_key(r.rpartition("/")[2]))
            p = sum(slots[r][0] for r in retired)
            n = sum(slots[r][1] for r in retired)
            if p > MAX_SLOT or n > MAX_SLOT:
                continue  # left as they are: folding is only an economy
            folds[name] = {fold_replica(node_of(replica), latest.rpartition("/")[2]): (p, n)}
        self.merge(folds, dropped)
        return folds

    def add_keyed(
        self, key: str, replica: str, digest: str, amounts: list[tuple[str, int]], now: float
    ) -> Entry:
        """
        Count a keyed request: each (counter, amount) in C{replica}'s own
        slots, and the key with them.  All or nothing.

        @raise CounterOverflow: if any slot would overflow; nothing changes.
        """
        self.check(replica, amounts)
        writes = []
        if len({name for name, _ in amounts}) == len(amounts) > 1:
            # A batch (POST /counters): all or nothing, whatever fails.
            self.add_many(replica, dict(amounts))
            writes = [(name, amount, self.value(name)) for name, amount in amounts]
        else:
            for name, amount in amounts:
                self.add(name, replica, amount)
                writes.append((name, amount, self.value(name)))
        entry = Entry(now, digest, tuple(writes))
        self.keys.record(key, replica, entry)
        return entry

    def check(self, replica: str, amounts: list[tuple[str, int]]) -> None:
        """
        @raise CounterOverflow: if adding C{amounts} to C{replica}'s slots
            would overflow one.
        """
        totals: dict[str, tuple[int, int]] = {}
        for name, amount in amounts:
            p, n = totals.get(name, self.slot(name, replica))
            p, n = (p + amount, n) if amount > 0 else (p, n - amount)
            if p > MAX_SLOT or n > MAX_SLOT:
                raise CounterOverflow(f"counter {name!r} would overflow")
            totals[name] = (p, n)

    def merge_keys(self, keys: KeyState, now: float, window: float) -> list[str]:
        """Merge another replica's idempotency keys; return those that changed."""
        return self.keys.merge(keys, now, window)

    def settle(self, replica: str) -> tuple[list[SlotKey], list[str]]:
        """
        Take back, in C{replica}'s own slots, each keyed write that this
        replica (or an earlier incarnation of its node) counted but another
        replica won, once.  Values do not change.

        @return: the slots and the keys changed.
        """
        slots: set[SlotKey] = set()
        keys = []
        for key, loser, entry in self.keys.unsettled(replica):
            amounts = [(name, -amount) for name, amount in entry.amounts().items() if amount]
            try:
                self.check(replica, amounts)
            except CounterOverflow:
                continue  # the value stays right; only the key cannot be forgotten
            for name, amount in amounts:
                self.add(name, replica, amount)
                slots.add((name, replica))
            self.keys.settle(key, loser, replica)
            keys.append(key)
        return sorted(slots), keys

    def state(self, keys: Iterable[SlotKey] | None = None) -> dict[str, dict[str, Slot]]:
        """
        A copy of the state: all of it, or only the slots named by C{keys}.
        """
        if keys is None:
            return {name: dict(replicas) for name, replicas in self._slots.items()}
        out: dict[str, dict[str, Slot]] = {}
        for name, replica in keys:
            slot = self._slots.get(name, {}).get(replica)
            if slot is not None:  # not one a fold has superseded since it was named
                out.setdefault(name, {})[replica] = slot
        return out
