# -*- test-case-name: tests.test_idempotency -*-
"""
Idempotency keys as replicated state: which replica counted which keyed
write, so that a write retried on any node counts once.

Pure Python, no I/O and no Twisted; time is passed in.

The book maps each key to the writes it stands for, per replica that
accepted it (an L{Entry}: when, a digest of the request, and its writes).
Usually one replica holds a key.  A client that retries on node B a write
that node A accepted but had not yet replicated makes two: then the lowest
replica id wins, and every other (a loser) is taken back.  Two parts do it:

 - the value: each loser's writes are subtracted from every counter's
   value by whoever holds both entries, as a pure function of the book, so
   reads are right as soon as a replica has seen both, in any order, any
   number of times (a grow-only map, merged by union);
 - a settlement: the loser's own node (its replica, or the node's current
   incarnation if the loser was an earlier one) adds the opposite of its
   writes to its own slot and records (key, loser, itself) in the book, in
   one commit.  The value adds each settlement back, so a settlement leaves
   values as they were; what it buys is that the key can later be forgotten
   (the window, the count bound) without any value changing.

A key is forgotten once its first entry is older than the window and each
loser was settled exactly once; entries that arrive already older than the
window are ignored, so a forgotten key does not come back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: One write a key stands for: (counter, signed amount, the counter's value
#: the first answer gave).
Write = tuple[str, int, int]


@dataclass(frozen=True)
class Entry:
    """
    A keyed request as one replica accepted it.
    """

    at: float
    digest: str
    writes: tuple[Write, ...]

    def amounts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, amount, _ in self.writes:
            out[name] = out.get(name, 0) + amount
        return out


@dataclass
class Record:
    """
    Everything known of one key: replica -> entry, loser -> its settlers.
    """

    entries: dict[str, Entry]
    settled: dict[str, set[str]]

    def winner(self) -> str:
        return min(self.entries)

    def losers(self) -> list[str]:
        win = self.winner()
        return sorted(r for r in self.entries if r != win)

    def first(self) -> float:
        return min(e.at for e in self.entries.values())

    def last(self) -> float:
        return max(e.at for e in self.entries.values())

    def adjustment(self) -> dict[str, int]:
        """
        What this key changes in each counter's value beyond its slots:
        minus each loser's writes, plus each settlement's.
        """
        out: dict[str, int] = {}
        if len(self.entries) < 2:
            return out
        for loser in self.losers():
            times = 1 - len(self.settled.get(loser, ()))
            for name, amount in self.entries[loser].amounts().items():
                out[name] = out.get(name, 0) - times * amount
        return {name: v for name, v in out.items() if v}

    def copy(self) -> Record:
        return Record(dict(self.entries), {k: set(v) for k, v in self.settled.items()})


#: key -> record: the shape of keys on the wire and in the store.
KeyState = Mapping[str, Record]


class KeyMismatch(ValueError):
    """
    The key was used before for a different request.
    """


def node_of(replica: str) -> str:
    """The node id of a replica id C{NODE/INCARNATION}."""
    return replica.rpartition("/")[0]


class KeyBook:
    """
    The idempotency keys a replica knows, and what they change in values.
    """

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        self._adjust: dict[str, int] = {}
        #: keys with a loser nobody settled yet: the only ones to settle
        self._conflicts: set[str] = set()
        #: The time of the newest entry ever recorded or merged (forgetting
        #: keys leaves it), 0 for none: no record has an entry newer.
        self.newest = 0.0

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def adjustment(self, name: str) -> int:
        """How much counter C{name}'s value differs from its slots' sum."""
        return self._adjust.get(name, 0)

    def adjustments(self) -> dict[str, int]:
        return dict(self._adjust)

    def lookup(self, key: str, digest: str) -> Entry | None:
        """
        The entry a request with this key should answer as (the winner's),
        or None for a key never seen.

        @raise KeyMismatch: if the key was used for another request.
        """
        record = self._records.get(key)
        if record is None:
            return None
        entry = record.entries[record.winner()]
        if entry.digest != digest:
            raise KeyMismatch("this Idempotency-Key was used for a different request")
        return entry

    def _update(self, key: str, record: Record | None) -> None:
        old = self._records.get(key)
        if old is not None:
            for name, v in old.adjustment().items():
                self._bump(name, -v)
        if record is None:
            self._records.pop(key, None)
            self._conflicts.discard(key)
            return
        self._records[key] = record
        self.newest = max(self.newest, record.last())
        if len(record.entries) > 1 and any(not record.settled.get(loser) for loser in record.losers()):
            self._conflicts.add(key)
        else:
            self._conflicts.discard(key)
        for name, v in record.adjustment().items():
            self._bump(name, v)

    def _bump(self, name: str, v: int) -> None:
        total = self._adjust.get(name, 0) + v
        if total:
            self._adjust[name] = total
        else:
            self._adjust.pop(name, None)

    def record(self, key: str, replica: str, entry: Entry) -> None:
        """C{replica} (this one) accepted a request with C{key}."""
        current = self._records.get(key)
        record = current.copy() if current else Record({}, {})
        record.entries.setdefault(replica, entry)
        self._update(key, record)

    def merge(self, keys: KeyState, now: float, window: float) -> list[str]:
        """
        Merge another replica's keys; ignore entries older than C{window}.

        @return: the keys that changed.
        """
        changed = []
        horizon = now - window
        for key, theirs in keys.items():
            current = self._records.get(key)
            record = current.copy() if current else Record({}, {})
            grew = False
            for replica, entry in theirs.entries.items():
                if replica not in record.entries and entry.at >= horizon:
                    record.entries[replica] = entry
                    grew = True
            for loser, settlers in theirs.settled.items():
                if loser not in record.entries:
                    continue
                mine = record.settled.setdefault(loser, set())
                if not settlers <= mine:
                    mine |= settlers
                    grew = True
            if grew:
                self._update(key, record)
                changed.append(key)
        return changed

    def unsettled(self, replica: str) -> list[tuple[str, str, Entry]]:
        """
        The losers C{replica} must settle: (key, loser, loser's entry) for
        each loser that is C{replica} or an earlier incarnation of its node,
        and that nobody settled yet.
        """
        node = node_of(replica)
        out = []
        for key in sorted(self._conflicts):
            record = self._records[key]
            for loser in record.losers():
                if record.settled.get(loser):
                    continue
                if loser == replica or node_of(loser) == node:
                    out.append((key, loser, record.entries[loser]))
        return out

    def settle(self, key: str, loser: str, settler: str) -> None:
        record = self._records[key].copy()
        record.settled.setdefault(loser, set()).add(settler)
        self._update(key, record)

    def forgettable(self, key: str) -> bool:
        record = self._records[key]
        return all(len(record.settled.get(loser, ())) == 1 for loser in record.losers())

    def expire(self, now: float, window: float, limit: int) -> list[str]:
        """
        Forget keys older than C{window}, then the oldest beyond C{limit},
        never changing a value: a key whose losers are not each settled
        exactly once is kept.

        @return: the keys forgotten.
        """
        horizon = now - window
        gone = [k for k, r in self._records.items() if r.first() < horizon and self.forgettable(k)]
        for key in gone:
            self._update(key, None)
        excess = len(self._records) - limit
        if excess > 0:
            oldest = sorted(self._records, key=lambda k: self._records[k].first())
            extra = [k for k in oldest if self.forgettable(k)][:excess]
            for key in extra:
                self._update(key, None)
            gone += extra
        return gone

    def touching(self, counters: Iterable[str], after: float) -> list[str]:
        """
        The keys with an entry newer than C{after} that write one of
        C{counters}.
        """
        wanted = set(counters)
        if not wanted or self.newest <= after:
            return []
        return [
            key
            for key, record in self._records.items()
            if record.last() > after
            and any(name in wanted for e in record.entries.values() for name, _, _ in e.writes)
        ]

    def state(self, keys: Iterable[str] | None = None) -> dict[str, Record]:
        """A copy of the records: all, or those of C{keys} still known."""
        if keys is None:
            return {k: r.copy() for k, r in self._records.items()}
        return {k: self._records[k].copy() for k in keys if k in self._records}
