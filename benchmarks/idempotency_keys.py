"""
What one remembered Idempotency-Key costs: memory in a node, bytes in a
sync message, bytes on disk.

    python benchmarks/idempotency_keys.py [--keys 50000]

Keys are 36-character UUIDs, each standing for one increment of one counter
accepted by one replica (the usual case); then the same with every key
counted by two replicas and settled (a retry on another node before the
first was replicated, the worst case kept for a key).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sqlite3
import sys
import tempfile
import tracemalloc
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dcounter import wire  # noqa: E402
from dcounter.counter import Counters  # noqa: E402
from dcounter.store import _SCHEMA  # noqa: E402

A, B = "10.0.0.1:8088/a1b2c3d4e5f6", "10.0.0.2:8088/0a1b2c3d4e5f"


def build(n: int, both: bool) -> Counters:
    counters = Counters()
    for i in range(n):
        key = str(uuid.UUID(int=i))
        counters.add_keyed(key, A, "d" * 32, [("default", 1)], now=1_700_000_000.0 + i)
        if both:
            other = Counters()
            other.add_keyed(key, B, "d" * 32, [("default", 1)], now=1_700_000_000.0 + i)
            counters.merge_keys(other.keys.state([key]), now=1_700_000_000.0 + i, window=86400)
            counters.settle(B)  # as B would: the book then holds B's settlement
    return counters


def memory_per_key(n: int, both: bool) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    counters = build(n, both)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(counters.keys) == n
    return (after - before) / n


def sync_bytes_per_key(counters: Counters) -> float:
    keys = counters.keys.state()
    encoded = json.dumps(wire.encode_keys(keys), separators=(",", ":")).encode()
    assert wire.decode_keys(json.loads(encoded)).keys() == keys.keys()
    return len(encoded) / len(keys)


def disk_bytes_per_key(counters: Counters) -> float:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.sqlite3")
        db = sqlite3.connect(path)
        db.executescript(_SCHEMA)
        empty = os.path.getsize(path)
        with db:
            for key, record in counters.keys.state().items():
                for r, e in record.entries.items():
                    db.execute(
                        "INSERT INTO idem_entries VALUES (?, ?, ?, ?, ?)",
                        (key, r, e.at, e.digest, json.dumps(e.writes, separators=(",", ":"))),
                    )
                for loser, settlers in record.settled.items():
                    for s in settlers:
                        db.execute("INSERT INTO idem_settled VALUES (?, ?, ?)", (key, loser, s))
        db.execute("VACUUM")
        db.close()
        return (os.path.getsize(path) - empty) / len(counters.keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=50_000)
    n = parser.parse_args().keys
    for both, what in ((False, "one replica"), (True, "two replicas, settled")):
        mem = memory_per_key(n, both)
        counters = build(n, both)
        print(
            f"{n} keys, each counted by {what}: memory {mem:.0f} B/key ({mem * n / 2**20:.1f} MiB), "
            f"sync {sync_bytes_per_key(counters):.0f} B/key, disk {disk_bytes_per_key(counters):.0f} B/key"
        )


if __name__ == "__main__":
    main()
