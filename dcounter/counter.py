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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dcounter.idempotency import Entry, KeyBook, KeyState

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

#: The counter that the original single-counter endpoints serve.
DEFAULT_COUNTER = "default"


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

    def merge(self, state: State) -> list[SlotKey]:
        """
        Merge another replica's state (whole or partial) into this one.

        @return: the keys of the slots that grew.
        """
        grown: list[SlotKey] = []
        for name, replicas in state.items():
            if not self._room_for(name):
                self.refused += 1
                continue
            mine = self._slots.setdefault(name, {})
            delta = 0
            for replica, (p, n) in replicas.items():
                old_p, old_n = mine.get(replica, (0, 0))
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
            out.setdefault(name, {})[replica] = self.slot(name, replica)
        return out
