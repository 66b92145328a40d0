# -*- test-case-name: tests.test_digest -*-
"""
Summaries of counter state, for anti-entropy that ships only what differs.

Pure Python, no I/O and no Twisted.  Counters fall into L{BUCKETS} buckets by
a stable hash of their name; a bucket's digest is the XOR of a 64-bit hash of
each of its slots (counter, replica, P, N), so it does not depend on order.
Two nodes with equal state have equal digests; a bucket whose digests differ
holds at least one slot that differs.  With 256 buckets of 8 bytes a whole
digest is 2 KiB, whatever the number of counters.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from hashlib import blake2b

from dcounter.counter import Slot, State

BUCKETS = 256
#: Bytes of one bucket's digest.
WIDTH = 8


def bucket_of(name: str) -> int:
    """
    The bucket of counter C{name}: the same on every node and every run.
    """
    return zlib.crc32(name.encode()) % BUCKETS


def _slot_hash(name: str, replica: str, p: int, n: int) -> int:
    data = f"{name}\0{replica}\0{p}\0{n}".encode()
    return int.from_bytes(blake2b(data, digest_size=WIDTH).digest(), "big")


def summarize(state: State) -> bytes:
    """
    The digest of C{state}: L{BUCKETS} digests of L{WIDTH} bytes, in order.
    """
    buckets = [0] * BUCKETS
    for name, replicas in state.items():
        b = bucket_of(name)
        acc = buckets[b]
        for replica, (p, n) in replicas.items():
            acc ^= _slot_hash(name, replica, p, n)
        buckets[b] = acc
    return b"".join(x.to_bytes(WIDTH, "big") for x in buckets)


def differing(mine: bytes, theirs: bytes) -> list[int]:
    """
    The buckets whose digests differ.
    """
    return [
        b for b in range(BUCKETS) if mine[b * WIDTH : (b + 1) * WIDTH] != theirs[b * WIDTH : (b + 1) * WIDTH]
    ]


def in_buckets(state: State, buckets: Iterable[int]) -> dict[str, dict[str, Slot]]:
    """
    The part of C{state} whose counters fall in C{buckets}.
    """
    wanted = set(buckets)
    return {name: dict(replicas) for name, replicas in state.items() if bucket_of(name) in wanted}


def ahead(mine: State, theirs: State) -> dict[str, dict[str, Slot]]:
    """
    The slots of C{mine} that C{theirs} lacks or holds smaller: what the
    other side would gain by merging them.
    """
    out: dict[str, dict[str, Slot]] = {}
    for name, replicas in mine.items():
        other = theirs.get(name, {})
        for replica, (p, n) in replicas.items():
            op, on = other.get(replica, (0, 0))
            if p > op or n > on:
                out.setdefault(name, {})[replica] = (p, n)
    return out
